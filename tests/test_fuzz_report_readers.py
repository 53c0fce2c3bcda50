"""Fuzzing the report's readers (benchmark/load_results.py, benchmark/results.py) with hypothesis:
an experiment folder whose `eval_measurements.csv`, `meta_data_0.json`, `hparams.json` and
`trial_summary.json` hold arbitrary content (upstream-written and ours, truncated, wrong types,
NaN, invalid UTF-8) is either read into trial summaries or refused with `BenchmarkError`; no
other exception reaches the user. Derandomized and small."""

import csv
import io
import json
import os
import tempfile

from hypothesis import given, settings, strategies as st

from benchmark import load_results, results
from contract.errors import BenchmarkError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None)

SCALARS = (st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) |
           st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=3) |
    st.dictionaries(st.text(max_size=6), children, max_size=3), max_leaves=8)
METRIC = 'mean_average_precision'
COLUMNS = st.lists(st.sampled_from([
    'global_step', f'validation/{METRIC}', 'train/loss', 'accumulated_submission_time',
    'accumulated_eval_time', 'total_duration', 'preemption_count', 'score']), min_size=1,
    max_size=5, unique=True)
CELLS = (st.sampled_from(['', 'nan', 'inf', '-inf', '1e400', '0.5', '12', '-3', 'x', '"']) |
         st.floats(allow_nan=True, allow_infinity=True).map(repr))
META = st.fixed_dictionaries({}, optional={
    'workload.target_metric_name': st.sampled_from([METRIC, 'loss']) | SCALARS,
    'workload.validation_target_value': st.floats(0, 1) | SCALARS,
    'workload.target_metric_higher_is_better': st.booleans() | SCALARS,
    'workload.workload_name': st.just('ogbg') | SCALARS,
    'workload.max_allowed_runtime_sec': SCALARS, 'rng_seed': SCALARS}) | JSON_VALUES


@st.composite
def measurements_csv(draw):
  """A CSV with a header of measurement columns and rows of random length and cells."""
  columns = draw(COLUMNS)
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(columns)
  for row in draw(st.lists(st.lists(CELLS, max_size=len(columns) + 1), max_size=4)):
    writer.writerow(row)
  return out.getvalue().encode()


def _json_bytes(value) -> bytes:
  return json.dumps(value).encode()


CONTENT = {
    results.MEASUREMENTS_FILE: measurements_csv() | st.binary(max_size=30),
    results.meta_data_file(0): META.map(_json_bytes) | st.binary(max_size=20),
    results.HPARAMS_FILE: JSON_VALUES.map(_json_bytes) | st.binary(max_size=20),
    results.SUMMARY_FILE: JSON_VALUES.map(_json_bytes) | st.binary(max_size=20),
}


@FUZZ
@given(files=st.fixed_dictionaries({}, optional=CONTENT))
def test_experiment_folders_load_or_raise_benchmark_error(files):
  with tempfile.TemporaryDirectory() as experiment:
    trial = os.path.join(experiment, 'study_0', 'ogbg_small_jax', 'trial_1')
    os.makedirs(trial)
    for name, content in files.items():
      with open(os.path.join(trial, name), 'wb') as f:
        f.write(content)
    for reader in (load_results.load_trial_summaries, load_results.load_environments):
      try:
        reader(experiment)
      except BenchmarkError:
        pass
