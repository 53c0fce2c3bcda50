"""Fuzzing the search-space parser (benchmark/tuning.py) with hypothesis: any decoded JSON value
either parses into specs the trial generator can use, or raises `BenchmarkError`; no other
exception reaches the user. Derandomized (the same examples on every run) and small."""

import json
import math
import os
import tempfile

from hypothesis import given, settings, strategies as st

from benchmark import tuning
from contract.errors import BenchmarkError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)

# Any value `json.loads` can return (integers unbounded: JSON has no integer limit; floats with
# NaN and infinities: Python's json reads `NaN` and `Infinity`).
JSON_SCALARS = (st.none() | st.booleans() | st.integers() |
                st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                       children, max_size=4),
    max_leaves=12)

# Near-valid hyperparameter specs: the keys of a real spec, values that are often right.
NUMBERS = (st.sampled_from([0, 1, -1, 1e-300, 5e-324, 1.7e308, -1.7e308, 10 ** 400, -10 ** 400]) |
           st.integers() | st.floats(allow_nan=True, allow_infinity=True))
SPEC_VALUES = {
    'min': NUMBERS | JSON_SCALARS,
    'max': NUMBERS | JSON_SCALARS,
    'scaling': st.sampled_from(['log', 'linear', 'Log', '']) | JSON_SCALARS,
    'feasible_points': st.lists(JSON_SCALARS, max_size=4) | JSON_SCALARS,
    'extra': JSON_SCALARS,
}
FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # often the extremes: overflows
SPECS = (st.fixed_dictionaries({'min': NUMBERS, 'max': NUMBERS,
                                 'scaling': st.sampled_from(tuning.SCALINGS)}) |
         st.fixed_dictionaries({'min': FLOATS, 'max': FLOATS,
                                 'scaling': st.sampled_from(tuning.SCALINGS)}) |
         st.fixed_dictionaries({'feasible_points': st.lists(JSON_VALUES, min_size=1, max_size=4)}) |
         st.fixed_dictionaries({}, optional=SPEC_VALUES) | JSON_VALUES)
NAMES = st.sampled_from(['learning_rate', 'damping', 'beta2', 'if', '_x']) | st.text(max_size=6)
SPACES = (st.dictionaries(NAMES, SPECS, max_size=4) |
          st.lists(st.dictionaries(NAMES, JSON_SCALARS, max_size=3), max_size=3) |
          JSON_VALUES)


def _parse_or_error(raw):
  """The parsed space, or None when the parser raised `BenchmarkError` (any other exception
  propagates and fails the test)."""
  try:
    return tuning.parse_search_space(raw)
  except BenchmarkError:
    return None


def _check_trials(space, num_trials: int, seed: int) -> None:
  """Trials are deterministic and every value lies in its spec: a finite number in
  `[min, max]` for a range, one of the feasible points for a choice."""
  try:
    trials = tuning.generate_trials(space, num_trials, seed)
  except BenchmarkError:
    assert isinstance(space, list) and num_trials > len(space)
    return
  assert trials == tuning.generate_trials(space, num_trials, seed)
  assert len(trials) == num_trials
  if isinstance(space, list):
    assert trials == space[:num_trials]
    return
  for trial in trials:
    assert set(trial) == set(space)
    for name, value in trial.items():
      spec = space[name]
      if isinstance(spec, tuning.ChoiceSpec):
        assert any(value is point or value == point for point in spec.feasible_points)
      else:
        assert math.isfinite(value) and spec.min <= value <= spec.max, (spec, value)


@FUZZ
@given(raw=SPACES, num_trials=st.integers(1, 6), seed=st.integers(0, 2 ** 31 - 1))
def test_search_space_parses_or_raises_benchmark_error(raw, num_trials, seed):
  space = _parse_or_error(raw)
  if space is None:
    return
  if isinstance(space, dict):
    for spec in space.values():
      if isinstance(spec, tuning.RangeSpec):
        assert math.isfinite(spec.min) and math.isfinite(spec.max) and spec.min <= spec.max
        assert spec.scaling in tuning.SCALINGS and (spec.scaling == 'linear' or spec.min > 0)
      else:
        assert isinstance(spec, tuning.ChoiceSpec) and spec.feasible_points
  _check_trials(space, num_trials, seed)
  tuning.make_hyperparameters(space[0] if isinstance(space, list) else
                              tuning.generate_trials(space, 1, seed)[0])


@FUZZ
@given(content=st.binary(max_size=40) | SPACES.map(json.dumps).map(str.encode) |
       st.text(alphabet='[]{}",:0123456789.-eEnulaNIfity ', max_size=40).map(str.encode))
def test_search_space_file_loads_or_raises_benchmark_error(content):
  """Arbitrary bytes in a search-space file (invalid UTF-8, truncated JSON, JSON of any type)."""
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'space.json')
    with open(path, 'wb') as f:
      f.write(content)
    try:
      tuning.load_search_space(path)
    except BenchmarkError:
      pass


@FUZZ
@given(bounds=st.tuples(NUMBERS | FLOATS, NUMBERS | FLOATS).map(sorted),
       scaling=st.sampled_from(tuning.SCALINGS), num_trials=st.integers(1, 6),
       seed=st.integers(0, 2 ** 31 - 1))
def test_range_trials_lie_in_the_range(bounds, scaling, num_trials, seed):
  """Any finite range (the extremes of float64 and beyond included) parses or is refused, and
  its trials are finite values inside it."""
  space = _parse_or_error({'x': {'min': bounds[0], 'max': bounds[1], 'scaling': scaling}})
  if space is not None:
    _check_trials(space, num_trials, seed)
