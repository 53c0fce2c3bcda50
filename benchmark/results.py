"""The on-disk layout of an experiment: folder and file names, trial statuses, JSON and CSV I/O.

Layout (upstream AlgoPerf's, so that its scoring reads ours and our report reads its runs):
  <experiment_dir>/<experiment_name>/study_<k>/<workload variant>_jax/trial_<n>/
      eval_measurements.csv   one row per evaluation, upstream's columns
      hparams.json            the trial's hyperparameters (absent under self-tuning)
      meta_data_<p>.json      environment and workload properties, p = preemption count
      flags_<p>.json          the settings the run was started with
      trial_summary.json      ours: status, steps/seconds to target, the time split
      checkpoints/            ours: the trial's last checkpoints (`benchmark.checkpoint`)
      curvature_report.txt    ours: the submission's curvature report, when it has one
One experiment folder holds one submission (upstream: one folder per submission); our jobs put
several side by side under `<experiment_dir>/<job>/<submission>`.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Optional

from benchmark import hosts
from contract.errors import BenchmarkError

MEASUREMENTS_FILE = 'eval_measurements.csv'
SUMMARY_FILE = 'trial_summary.json'
HPARAMS_FILE = 'hparams.json'
CHECKPOINTS_DIR = 'checkpoints'
CURVATURE_REPORT_FILE = 'curvature_report.txt'
FRAMEWORK = 'jax'

# Trial outcomes recorded in trial_summary.json['status'].
STATUS_TARGET_REACHED = 'target_reached'  # The validation target was met within the budget.
STATUS_BUDGET_EXHAUSTED = 'budget_exhausted'
STATUS_COMPLETE = 'complete'  # The submission raised TrainingCompleteError.
STATUS_DIVERGED = 'diverged'
STATUS_FAILED = 'failed'
STATUS_INTERRUPTED = 'interrupted'

# Upstream's per-evaluation bookkeeping columns (the metric columns come from `eval_model`).
TIME_COLUMNS = ('accumulated_submission_time', 'accumulated_eval_time',
                'accumulated_logging_time', 'total_duration', 'score')


def meta_data_file(preemption_count: int = 0) -> str:
  return f'meta_data_{preemption_count}.json'


def flags_file(preemption_count: int = 0) -> str:
  return f'flags_{preemption_count}.json'


def workload_dir_name(workload_variant: str) -> str:
  """`ogbg_small` -> `ogbg_small_jax` (upstream appends the framework)."""
  return f'{workload_variant}_{FRAMEWORK}'


def workload_of_dir(dir_name: str) -> str:
  """`ogbg_small_jax` -> `ogbg_small` (the inverse of `workload_dir_name`; also `_pytorch`)."""
  for suffix in ('_jax', '_pytorch'):
    if dir_name.endswith(suffix):
      return dir_name[:-len(suffix)]
  return dir_name


def trial_dir(experiment_root: str, study: int, workload_variant: str, trial: int) -> str:
  """`<experiment_root>/study_<study>/<variant>_jax/trial_<trial>` (trials count from 1)."""
  return os.path.join(experiment_root, f'study_{study}', workload_dir_name(workload_variant),
                      f'trial_{trial}')


def index_of(folder_name: str, prefix: str) -> Optional[int]:
  """`study_3`, 'study' -> 3; None when the name is not `<prefix>_<int>`."""
  head, _, tail = folder_name.partition('_')
  return int(tail) if head == prefix and tail.isdigit() else None


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON atomically (a temporary file, then a rename); on process 0
  only when several processes run (`hosts.is_writer`)."""
  if not hosts.is_writer():
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=json_default)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """The decoded JSON file; BenchmarkError when it is not UTF-8 JSON (or nests too deeply)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
    raise BenchmarkError(f'{path} is not valid JSON: {e}') from e


def json_default(x: Any) -> Any:
  """JSON for what `json` cannot write: numpy/jax scalars and arrays as numbers and lists."""
  if hasattr(x, 'item'):
    return x.item()
  if hasattr(x, 'tolist'):
    return x.tolist()
  return str(x)


def read_measurements(path: str) -> List[Dict[str, float]]:
  """The rows of an `eval_measurements.csv`, numbers as floats (empty cells and cells beyond
  the header left out); BenchmarkError when the file is not UTF-8 CSV."""
  try:
    with open(path, newline='') as f:
      rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise BenchmarkError(f'{path} is not a readable CSV file: {e}') from e
  return [{k: _number(v) for k, v in row.items() if k is not None and v not in (None, '')}
          for row in rows]


def _number(text: str) -> Any:
  try:
    return float(text)
  except ValueError:
    return text
