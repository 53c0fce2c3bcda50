"""Reads an experiment folder into trial summaries, whoever wrote it.

A trial folder (`trial_<n>`) written by this project has a `trial_summary.json`. One written by
upstream AlgoPerf's runner has only `eval_measurements.csv` (and `meta_data_0.json`,
`hparams.json`): its summary is derived from them. The submission is then the name of the folder
above `study_<k>` (upstream keeps one experiment folder per submission), the workload the
`<workload>_jax` folder, and the targets come from `meta_data_0.json`'s `workload.*` values.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

from benchmark import results
from contract.errors import BenchmarkError

Summary = Dict[str, Any]
# Upstream scoring's metrics where lower is better (scoring/performance_profile.py); every other
# target metric (accuracy, mean_average_precision, ssim, bleu) is higher-is-better.
LOWER_IS_BETTER_METRICS = ('ce_loss', 'error_rate', 'ctc_loss', 'wer', 'l1_loss', 'loss')


def _study_and_experiment(trial_dir: str) -> tuple:
  """(study index, experiment folder name) from `.../<experiment>/study_<k>/<w>_jax/trial_<n>`;
  (0, None) when no `study_<k>` folder is above the trial."""
  parts = os.path.normpath(trial_dir).split(os.sep)
  for i in range(len(parts) - 1, 0, -1):
    study = results.index_of(parts[i], 'study')
    if study is not None:
      return study, parts[i - 1]
  return 0, None


def _read_optional_json(path: str) -> Optional[Any]:
  return results.read_json(path) if os.path.isfile(path) else None


def _json_object(path: str) -> Dict[str, Any]:
  """The JSON object in `path` ({} when the file is absent); BenchmarkError for another type."""
  value = _read_optional_json(path)
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise BenchmarkError(f'{path} must hold a JSON object, not {type(value).__name__}')
  return value


def _checked(value: Any, kinds: tuple, what: str, path: str) -> Any:
  """`value` when it is None or of `kinds` (a bool is not a number); else BenchmarkError."""
  if value is not None and (not isinstance(value, kinds) or
                            (isinstance(value, bool) and bool not in kinds)):
    raise BenchmarkError(f'{path}: {what} must be {" or ".join(k.__name__ for k in kinds)}, '
                         f'not {value!r}')
  return value


def _step(row: Dict[str, Any], path: str) -> int:
  """The row's `global_step` (0 when absent) as an int; BenchmarkError when not a count."""
  step = row.get('global_step', 0.0)
  if not isinstance(step, float) or not math.isfinite(step) or step < 0:
    raise BenchmarkError(f'{path}: global_step must be a non-negative number, not {step!r}')
  return int(step)


def higher_is_better(metric_name: str) -> bool:
  """Upstream scoring's guess from the metric's name."""
  return metric_name not in LOWER_IS_BETTER_METRICS


def _beats(value: float, target: float, higher: bool) -> bool:
  return value > target if higher else value < target


def summary_from_measurements(trial_dir: str) -> Summary:
  """A trial summary derived from an upstream-written trial folder (no `trial_summary.json`).

  Steps and seconds to target are those of the first evaluation strictly beyond the validation
  target (upstream's runner credits no evaluation past the budget, so every row counts).
  """
  csv_path = os.path.join(trial_dir, results.MEASUREMENTS_FILE)
  rows = results.read_measurements(csv_path)
  meta_path = os.path.join(trial_dir, results.meta_data_file(0))
  meta = _json_object(meta_path)
  variant = results.workload_of_dir(os.path.basename(os.path.dirname(trial_dir)))
  _, experiment = _study_and_experiment(trial_dir)
  metric = _checked(meta.get('workload.target_metric_name'), (str,), 'the target metric', meta_path)
  target = _checked(meta.get('workload.validation_target_value'), (int, float), 'the target',
                    meta_path)
  higher = _checked(meta.get('workload.target_metric_higher_is_better',
                             higher_is_better(metric) if metric else True), (bool,),
                    'target_metric_higher_is_better', meta_path)
  column = f'validation/{metric}'
  values = [r[column] for r in rows if isinstance(r.get(column), float)]
  first = next((r for r in rows if target is not None and isinstance(r.get(column), float)
                and _beats(r[column], target, higher)), None)
  last = rows[-1] if rows else {}
  finite = [v for v in values if math.isfinite(v)]
  return {
      'workload': meta.get('workload.workload_name', variant),
      'workload_variant': variant,
      'submission': experiment or 'unknown',
      'hyperparameters': _read_optional_json(os.path.join(trial_dir, results.HPARAMS_FILE)),
      'rng_seed': meta.get('rng_seed'),
      'status': results.STATUS_TARGET_REACHED if first else results.STATUS_BUDGET_EXHAUSTED,
      'reason': f'derived from {results.MEASUREMENTS_FILE}',
      'global_steps': _step(last, csv_path),
      'num_evals': len(rows),
      'target_metric_name': metric,
      'validation_target_value': target,
      'target_metric_higher_is_better': higher,
      'steps_to_target': _step(first, csv_path) if first else None,
      'seconds_to_target': first.get('accumulated_submission_time') if first else None,
      'final_validation_metric': values[-1] if values else None,
      'best_validation_metric': (max if higher else min)(finite) if finite else None,
      'final_metrics': last,
      'accumulated_submission_time': last.get('accumulated_submission_time', 0.0),
      'accumulated_eval_time': last.get('accumulated_eval_time', 0.0),
      'accumulated_logging_time': last.get('accumulated_logging_time', 0.0),
      'total_duration': last.get('total_duration', 0.0),
      'time_split': {},
      'steps_per_phase': {},
      'max_runtime_sec': meta.get('workload.max_allowed_runtime_sec'),
  }


def _read_summary(trial_dir: str) -> Summary:
  return _json_object(os.path.join(trial_dir, results.SUMMARY_FILE))


def load_trial_summaries(experiment_dir: str) -> List[Summary]:
  """Every finished trial below `experiment_dir`, with `trial_dir` and `study` added.

  A trial is a folder with a `trial_summary.json`, or an `eval_measurements.csv` in a
  `trial_<n>` folder (upstream-written: `summary_from_measurements`).
  """
  if not os.path.isdir(experiment_dir):
    raise BenchmarkError(f'experiment directory {experiment_dir!r} does not exist')
  summaries = []
  for root, dirs, files in os.walk(experiment_dir):
    dirs.sort()
    if results.SUMMARY_FILE in files:
      summary = _read_summary(root)
    elif (results.MEASUREMENTS_FILE in files
          and results.index_of(os.path.basename(root), 'trial') is not None):
      summary = summary_from_measurements(root)
    else:
      continue
    summary['trial_dir'] = root
    summary['study'] = _study_and_experiment(root)[0]
    summaries.append(summary)
  return sorted(summaries, key=lambda s: s['trial_dir'])


def load_environments(experiment_dir: str) -> List[Dict[str, Any]]:
  """The `meta_data_<p>.json` of every trial below `experiment_dir`, in folder order."""
  runs = []
  for root, dirs, files in os.walk(experiment_dir):
    dirs.sort()
    for name in sorted(f for f in files if f.startswith('meta_data_') and f.endswith('.json')):
      runs.append(_json_object(os.path.join(root, name)))
  return runs
