"""Tuning search spaces (AlgoPerf JSON format) and seeded scrambled-Halton trial generation.

A search space is a JSON object mapping a hyperparameter name to either
  * `{"feasible_points": [v1, v2, ...]}` (a discrete choice; one point fixes the value), or
  * `{"min": a, "max": b, "scaling": "log" | "linear"}` (a continuous range),
or a JSON list of fully specified points (each trial takes the next point, as AlgoPerf allows).

Trial i of a study is the i-th point of a scrambled Halton sequence (Halton 1964; random digit
permutations per dimension, Braaten & Weller 1979), one dimension per searched hyperparameter,
mapped to the range by its scaling. The same (space, seed) gives the same trials on every machine.
"""

from __future__ import annotations

import collections
import json
import keyword
import math
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple, Union

import numpy as np

from contract.errors import BenchmarkError

SCALINGS = ('log', 'linear')


class RangeSpec(NamedTuple):
  """A continuous range of one hyperparameter."""
  min: float
  max: float
  scaling: str


class ChoiceSpec(NamedTuple):
  """A discrete set of feasible points of one hyperparameter."""
  feasible_points: Tuple[Any, ...]


ParamSpec = Union[RangeSpec, ChoiceSpec]
SearchSpace = Union[Dict[str, ParamSpec], List[Dict[str, Any]]]


# -- Parsing --------------------------------------------------------------------------------


def parse_search_space(raw: Any, source: str = 'search space') -> SearchSpace:
  """Validates a decoded JSON search space and returns it as typed specs.

  Raises:
    BenchmarkError: naming the offending hyperparameter and what is wrong with it.
  """
  if isinstance(raw, list):
    if not raw:
      raise BenchmarkError(f'{source}: the list of points is empty')
    for i, point in enumerate(raw):
      if not isinstance(point, dict) or not point:
        raise BenchmarkError(f'{source}: point {i} must be a non-empty JSON object')
      for name in point:
        _check_name(name, source)
    return [dict(p) for p in raw]
  if not isinstance(raw, dict):
    raise BenchmarkError(f'{source}: must be a JSON object of hyperparameters or a list of points, '
                         f'got {type(raw).__name__}')
  if not raw:
    raise BenchmarkError(f'{source}: has no hyperparameters')
  return {name: _parse_param(name, spec, source) for name, spec in raw.items()}


def _check_name(name: str, source: str) -> None:
  """A hyperparameter name must be usable as an attribute (`make_hyperparameters`)."""
  if not name.isidentifier() or keyword.iskeyword(name) or name.startswith('_'):
    raise BenchmarkError(f'{source}: hyperparameter name {name!r} must be a Python identifier '
                         'not starting with "_"')


def _is_finite_number(value: Any) -> bool:
  """An int or float (not a bool) that a float holds finitely (JSON integers are unbounded)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  try:
    return math.isfinite(value)
  except OverflowError:
    return False


def _parse_param(name: str, spec: Any, source: str) -> ParamSpec:
  _check_name(name, source)
  where = f'{source}: hyperparameter {name!r}'
  if not isinstance(spec, dict):
    raise BenchmarkError(f'{where} must be an object with "feasible_points" or "min"/"max"/"scaling"')
  if 'feasible_points' in spec:
    extra = set(spec) - {'feasible_points'}
    if extra:
      raise BenchmarkError(f'{where}: unexpected key(s) {sorted(extra)} beside "feasible_points"')
    points = spec['feasible_points']
    if not isinstance(points, list) or not points:
      raise BenchmarkError(f'{where}: "feasible_points" must be a non-empty list')
    return ChoiceSpec(tuple(points))
  missing = {'min', 'max', 'scaling'} - set(spec)
  if missing:
    raise BenchmarkError(f'{where}: missing key(s) {sorted(missing)} (or give "feasible_points")')
  extra = set(spec) - {'min', 'max', 'scaling'}
  if extra:
    raise BenchmarkError(f'{where}: unexpected key(s) {sorted(extra)}')
  lo, hi, scaling = spec['min'], spec['max'], spec['scaling']
  for key, value in (('min', lo), ('max', hi)):
    if not _is_finite_number(value):
      raise BenchmarkError(f'{where}: "{key}" must be a finite number, got {value!r}')
  if scaling not in SCALINGS:
    raise BenchmarkError(f'{where}: unknown scaling {scaling!r}; use one of {", ".join(SCALINGS)}')
  if lo > hi:
    raise BenchmarkError(f'{where}: min {lo} is greater than max {hi}')
  if scaling == 'log' and lo <= 0:
    raise BenchmarkError(f'{where}: log scaling needs min > 0, got {lo}')
  return RangeSpec(float(lo), float(hi), scaling)


def load_search_space(path: str) -> SearchSpace:
  """Reads and validates a JSON search-space file."""
  if not os.path.isfile(path):
    raise BenchmarkError(f'tuning search space {path!r} does not exist')
  with open(path) as f:
    try:
      raw = json.load(f)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, too deeply nested
      raise BenchmarkError(f'tuning search space {path!r} is not valid JSON: {e}') from e
  return parse_search_space(raw, source=path)


# -- Scrambled Halton -----------------------------------------------------------------------


def _first_primes(n: int) -> List[int]:
  primes: List[int] = []
  candidate = 2
  while len(primes) < n:
    if all(candidate % p for p in primes if p * p <= candidate):
      primes.append(candidate)
    candidate += 1
  return primes


HALTON_SKIP = 100  # Upstream's `halton.generate_sequence` default.


def scrambled_halton(num_points: int, num_dims: int, seed: int, skip: int = HALTON_SKIP,
                     shift: bool = True) -> np.ndarray:
  """`num_points` points of a `num_dims`-dimensional scrambled, shifted Halton sequence, as
  upstream AlgoPerf's `halton.generate_sequence` draws them (skip and per-dimension shift).

  Dimension d uses the d-th prime base b and a seeded random permutation `perm_d` of the digits
  {0..b-1} with `perm_d[0] = 0` (so the expansion stays finite); point i (counted from 1) is
  `(sum_k perm_d(digit_k(i)) b^-(k+1) + shift_d) mod 1`, for `i = skip + 1, skip + 2, ...`, with
  `shift_d` uniform in [0, 1) (Cranley-Patterson rotation). Without skip and shift the first
  point of a study could take only `b - 1` values per dimension (always 1/2 in base 2): a study
  of one trial drew the middle of its first hyperparameter's range whatever the seed.

  Returns:
    `[num_points, num_dims]` float64 in [0, 1).
  """
  rng = np.random.RandomState(seed)
  points = np.zeros((num_points, num_dims))
  for d, base in enumerate(_first_primes(num_dims)):
    perm = np.concatenate([[0], 1 + rng.permutation(base - 1)])
    offset = rng.random_sample() if shift else 0.0
    for i in range(num_points):
      index, scale, value = skip + i + 1, 1.0 / base, 0.0
      while index > 0:
        index, digit = divmod(index, base)
        value += perm[digit] * scale
        scale /= base
      points[i, d] = math.fmod(value + offset, 1.0)
  return points


def _map_unit(spec: ParamSpec, u: float) -> Any:
  if isinstance(spec, ChoiceSpec):
    return spec.feasible_points[min(int(u * len(spec.feasible_points)),
                                    len(spec.feasible_points) - 1)]
  if spec.scaling == 'log':
    value = math.exp(math.log(spec.min) + u * (math.log(spec.max) - math.log(spec.min)))
  elif math.isfinite(spec.max - spec.min):
    value = spec.min + u * (spec.max - spec.min)
  else:  # a range wider than the largest float
    value = (1.0 - u) * spec.min + u * spec.max
  return float(min(max(value, spec.min), spec.max))  # rounding stays inside the range


def generate_trials(space: SearchSpace, num_trials: int, seed: int) -> List[Dict[str, Any]]:
  """The hyperparameter points of `num_trials` trials, deterministic in `seed`.

  For a list space, trial i takes point i (and it is an error to ask for more trials than
  points). For a dict space, hyperparameters with one feasible point are fixed and the others
  follow a scrambled Halton sequence in sorted-name order.
  """
  if num_trials < 1:
    raise BenchmarkError(f'--num_tuning_trials must be at least 1, got {num_trials}')
  if isinstance(space, list):
    if num_trials > len(space):
      raise BenchmarkError(f'asked for {num_trials} trials but the search space lists only '
                           f'{len(space)} points')
    return [dict(p) for p in space[:num_trials]]
  names = sorted(space)
  searched = [n for n in names
              if not (isinstance(space[n], ChoiceSpec) and len(space[n].feasible_points) == 1)
              and not (isinstance(space[n], RangeSpec) and space[n].min == space[n].max)]
  unit = scrambled_halton(num_trials, len(searched), seed) if searched else None
  trials = []
  for i in range(num_trials):
    point = {}
    for n in names:
      if n in searched:
        point[n] = _map_unit(space[n], float(unit[i, searched.index(n)]))
      else:
        point[n] = _map_unit(space[n], 0.0)
    trials.append(point)
  return trials


def make_hyperparameters(point: Mapping[str, Any]):
  """A namedtuple `Hyperparameters` with the point's names as attributes (AlgoPerf's convention)."""
  names = sorted(point)
  cls = collections.namedtuple('Hyperparameters', names)
  return cls(**{n: point[n] for n in names})
