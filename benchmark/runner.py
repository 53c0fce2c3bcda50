"""The training loop of one trial, and the experiment of many (studies x tuning trials).

Time accounting follows AlgoPerf's submission runner: the clock that decides time-to-target
(`accumulated_submission_time`) covers the submission's own work, optimiser initialisation,
`data_selection` and `update_params` (compilation included, as in AlgoPerf), and excludes model
initialisation, evaluation (`prepare_for_eval` + `eval_model`) and logging. Every second of the
trial's wall-clock is booked to exactly one bucket of `time_split`, so the split adds up to
`total_duration`.

Layout of an experiment (one folder per trial, AlgoPerf-like):
  <experiment_dir>/<experiment_name>/metadata.json
  <experiment_dir>/<experiment_name>/<workload variant>/<submission>/study_<s>/trial_<t>/
      hparams.json  eval_measurements.csv  trial_summary.json
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp

from benchmark import tuning
from contract.errors import BenchmarkError
from contract.workload import Workload

MEASUREMENTS_FILE = 'eval_measurements.csv'
SUMMARY_FILE = 'trial_summary.json'
HPARAMS_FILE = 'hparams.json'
METADATA_FILE = 'metadata.json'
FIXED_COLUMNS = ('global_step', 'accumulated_submission_time', 'accumulated_eval_time',
                 'accumulated_logging_time', 'total_duration')

# Trial outcomes recorded in trial_summary.json['status'].
STATUS_TARGET_REACHED = 'target_reached'
STATUS_BUDGET_EXHAUSTED = 'budget_exhausted'
STATUS_DIVERGED = 'diverged'
STATUS_FAILED = 'failed'
STATUS_INTERRUPTED = 'interrupted'
FINISHED_STATUSES = (STATUS_TARGET_REACHED, STATUS_BUDGET_EXHAUSTED, STATUS_DIVERGED,
                     STATUS_FAILED)


@dataclasses.dataclass(frozen=True)
class TrialSettings:
  """How one trial runs. `None` budgets fall back to the workload's."""
  rng_seed: int
  max_global_steps: Optional[int] = None
  max_runtime_sec: Optional[float] = None
  eval_every_steps: Optional[int] = None
  stop_on_target: bool = True


class _Clock:
  """Books every interval of wall-clock time to one named bucket."""

  def __init__(self) -> None:
    self.start = self.last = time.perf_counter()
    self.buckets: Dict[str, float] = {}

  def book(self, bucket: str) -> float:
    now = time.perf_counter()
    elapsed = now - self.last
    self.buckets[bucket] = self.buckets.get(bucket, 0.0) + elapsed
    self.last = now
    return elapsed

  def total(self) -> float:
    return self.last - self.start


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
  os.replace(tmp, path)


def _json_default(x: Any) -> Any:
  if hasattr(x, 'item'):
    return x.item()
  if hasattr(x, 'tolist'):
    return x.tolist()
  return str(x)


class _MeasurementsWriter:
  """Appends one CSV row per evaluation and flushes it to disk at once."""

  def __init__(self, path: str, hyperparameters: Dict[str, Any]) -> None:
    self.path = path
    self.hparams_json = json.dumps(hyperparameters, sort_keys=True)
    self.columns: Optional[List[str]] = None

  def write(self, row: Dict[str, Any]) -> None:
    if self.columns is None:
      metric_columns = sorted(k for k in row if k not in FIXED_COLUMNS)
      self.columns = list(FIXED_COLUMNS) + metric_columns + ['hyperparameters']
      with open(self.path, 'w', newline='') as f:
        csv.writer(f).writerow(self.columns)
    values = dict(row, hyperparameters=self.hparams_json)
    with open(self.path, 'a', newline='') as f:
      csv.writer(f).writerow([values.get(c, '') for c in self.columns])
      f.flush()
      os.fsync(f.fileno())


def _eval_is_due(workload: Workload, settings: TrialSettings, global_step: int,
                 submission_time: float, last_eval_submission_time: float) -> bool:
  period_steps = settings.eval_every_steps or workload.eval_period_steps
  if period_steps:
    return global_step % period_steps == 0
  return submission_time - last_eval_submission_time >= workload.eval_period_time_sec


def _format_progress(prefix: str, workload: Workload, global_step: int, submission_time: float,
                     metrics: Dict[str, float]) -> str:
  name = workload.target_metric_name
  return (f'{prefix} step {global_step:6d}  time {submission_time:8.1f}s  '
          f'train/loss {metrics.get("train/loss", float("nan")):.4f}  '
          f'validation/{name} {metrics.get(f"validation/{name}", float("nan")):.4f}  '
          f'(target {workload.validation_target_value:.4f})')


def run_trial(workload: Workload, submission: types.ModuleType, hyperparameters: Dict[str, Any],
              trial_dir: str, settings: TrialSettings,
              log: Callable[[str], None] = print, log_prefix: str = '') -> Dict[str, Any]:
  """Trains one submission on one workload with one hyperparameter point.

  Writes `hparams.json` at once, a row of `eval_measurements.csv` after every evaluation and
  `trial_summary.json` at the end, also when the trial diverges, fails or is interrupted
  (the exception is then re-raised, as a BenchmarkError for failures inside the submission).

  Returns:
    The trial summary: status, steps_to_target, seconds_to_target (submission time at the first
    evaluation that met the validation target; None when never), the final and best validation
    metric, the number of steps and evaluations, and `time_split` (seconds per bucket, summing to
    `total_duration`).
  """
  os.makedirs(trial_dir, exist_ok=True)
  _write_json(os.path.join(trial_dir, HPARAMS_FILE), hyperparameters)
  writer = _MeasurementsWriter(os.path.join(trial_dir, MEASUREMENTS_FILE), hyperparameters)
  hparams = tuning.make_hyperparameters(hyperparameters)
  max_runtime = (settings.max_runtime_sec if settings.max_runtime_sec is not None
                 else workload.max_allowed_runtime_sec)
  metric_key = f'validation/{workload.target_metric_name}'

  clock = _Clock()
  state: Dict[str, Any] = dict(global_step=0, submission_time=0.0, eval_time=0.0,
                               logging_time=0.0, steps_to_target=None, seconds_to_target=None,
                               last_metrics={}, best_metric=None, num_evals=0,
                               status=STATUS_INTERRUPTED, reason='', phase_steps={})

  def summary() -> Dict[str, Any]:
    split = dict(clock.buckets)
    last = state['last_metrics']
    return {
        'workload': workload.workload_name,
        'workload_variant': workload.variant_name,
        'config': workload.config_name,
        'submission': getattr(submission, '__submission_name__', submission.__name__),
        'hyperparameters': hyperparameters,
        'rng_seed': settings.rng_seed,
        'status': state['status'],
        'reason': state['reason'],
        'global_steps': state['global_step'],
        'num_evals': state['num_evals'],
        'target_metric_name': workload.target_metric_name,
        'validation_target_value': workload.validation_target_value,
        'target_metric_higher_is_better': workload.target_metric_higher_is_better,
        'steps_to_target': state['steps_to_target'],
        'seconds_to_target': state['seconds_to_target'],
        'final_validation_metric': last.get(metric_key),
        'best_validation_metric': state['best_metric'],
        'final_metrics': last,
        'accumulated_submission_time': state['submission_time'],
        'accumulated_eval_time': state['eval_time'],
        'accumulated_logging_time': state['logging_time'],
        'total_duration': clock.total(),
        'time_split': split,
        'steps_per_phase': dict(state['phase_steps']),
        'max_runtime_sec': max_runtime,
        'max_global_steps': settings.max_global_steps,
    }

  def evaluate(params, model_state, optimizer_state, eval_rng) -> bool:
    """Evaluates, logs a CSV row; returns whether training must stop."""
    optimizer_state, params, model_state = submission.prepare_for_eval(
        workload, params, workload.model_params_types, model_state, hparams,
        workload.loss_type, optimizer_state, state['last_metrics'], state['global_step'],
        eval_rng)
    metrics = workload.eval_model(workload.eval_batch_size, params, model_state, eval_rng,
                                  workload.data_dir, global_step=state['global_step'])
    state['eval_time'] += clock.book('evaluation')
    state['num_evals'] += 1
    state['last_metrics'] = metrics
    value = metrics.get(metric_key)
    stop = False
    if value is None or not all(math.isfinite(v) for v in metrics.values()):
      state['status'], state['reason'] = STATUS_DIVERGED, f'non-finite evaluation metrics at step {state["global_step"]}'
      stop = True
    else:
      better = (max if workload.target_metric_higher_is_better else min)
      state['best_metric'] = value if state['best_metric'] is None else better(state['best_metric'], value)
      if state['steps_to_target'] is None and workload.has_reached_validation_target(metrics):
        state['steps_to_target'] = state['global_step']
        state['seconds_to_target'] = state['submission_time']
        if settings.stop_on_target:
          state['status'], stop = STATUS_TARGET_REACHED, True
    writer.write(dict(metrics, global_step=state['global_step'],
                      accumulated_submission_time=state['submission_time'],
                      accumulated_eval_time=state['eval_time'],
                      accumulated_logging_time=state['logging_time'],
                      total_duration=clock.total()))
    log(_format_progress(log_prefix, workload, state['global_step'], state['submission_time'],
                         metrics) + ('  TARGET REACHED' if state['steps_to_target'] == state['global_step'] else ''))
    state['logging_time'] += clock.book('logging')
    return stop

  try:
    rng = jax.random.PRNGKey(settings.rng_seed)
    data_rng, opt_init_rng, model_init_rng, rng = jax.random.split(rng, 4)
    dropout_rate = getattr(hparams, 'dropout_rate', None)
    params, model_state = workload.init_model_fn(model_init_rng, dropout_rate=dropout_rate)
    batch_size = submission.get_batch_size(workload.variant_name)
    input_queue = workload.build_input_queue(data_rng, 'train', workload.data_dir, batch_size)
    clock.book('model_init_and_input_pipeline')
    optimizer_state = submission.init_optimizer_state(workload, params, model_state, hparams,
                                                      opt_init_rng)
    state['submission_time'] += clock.book('optimizer_init')
    step_phase = getattr(submission, 'step_phase', None)
    seen_phases = set()
    last_eval_submission_time = 0.0
    last_eval_step = -1
    while True:
      if settings.max_global_steps is not None and state['global_step'] >= settings.max_global_steps:
        state['status'], state['reason'] = STATUS_BUDGET_EXHAUSTED, f'max_global_steps={settings.max_global_steps}'
        break
      if state['submission_time'] >= max_runtime:
        state['status'], state['reason'] = STATUS_BUDGET_EXHAUSTED, f'max_runtime_sec={max_runtime}'
        break
      step = state['global_step']
      step_rng = jax.random.fold_in(rng, step)
      select_rng, update_rng, eval_rng = jax.random.split(step_rng, 3)
      clock.book('logging')
      batch = submission.data_selection(workload, input_queue, optimizer_state, params,
                                        model_state, hparams, step, select_rng)
      state['submission_time'] += clock.book('data_selection')
      optimizer_state, params, model_state = submission.update_params(
          workload, params, workload.model_params_types, model_state, hparams, batch,
          workload.loss_type, optimizer_state, state['last_metrics'], step, update_rng)
      params_finite = bool(_all_finite(params))
      phase = step_phase(step, hparams) if step_phase else 'step'
      bucket = f'compile_and_first_step/{phase}' if phase not in seen_phases else f'steps/{phase}'
      seen_phases.add(phase)
      state['submission_time'] += clock.book(bucket)
      state['phase_steps'][phase] = state['phase_steps'].get(phase, 0) + 1
      state['global_step'] = step + 1
      if not params_finite:
        state['status'], state['reason'] = STATUS_DIVERGED, f'non-finite parameters after step {step + 1}'
        break
      if _eval_is_due(workload, settings, state['global_step'], state['submission_time'],
                      last_eval_submission_time):
        last_eval_submission_time = state['submission_time']
        last_eval_step = state['global_step']
        if evaluate(params, model_state, optimizer_state, eval_rng):
          break
    if state['status'] != STATUS_DIVERGED and last_eval_step != state['global_step']:
      evaluate(params, model_state, optimizer_state, jax.random.fold_in(rng, -1 % (2**31)))
    if state['status'] == STATUS_TARGET_REACHED or (state['status'] == STATUS_BUDGET_EXHAUSTED
                                                   and state['steps_to_target'] is not None):
      state['status'] = STATUS_TARGET_REACHED
  except KeyboardInterrupt:
    state['status'], state['reason'] = STATUS_INTERRUPTED, 'interrupted by the user'
    clock.book('interrupted')
    _write_json(os.path.join(trial_dir, SUMMARY_FILE + '.partial'), summary())
    raise
  except BenchmarkError as e:
    state['status'], state['reason'] = STATUS_FAILED, str(e)
    clock.book('failed')
    _write_json(os.path.join(trial_dir, SUMMARY_FILE), summary())
    raise
  except Exception as e:  # A failure inside the submission or workload: keep what was measured.
    state['status'], state['reason'] = STATUS_FAILED, f'{type(e).__name__}: {e}'
    clock.book('failed')
    _write_json(os.path.join(trial_dir, SUMMARY_FILE), summary())
    raise BenchmarkError(
        f'trial in {trial_dir} failed at step {state["global_step"]}: {type(e).__name__}: {e} '
        f'(measurements so far are kept in {trial_dir})') from e
  clock.book('logging')
  result = summary()
  _write_json(os.path.join(trial_dir, SUMMARY_FILE), result)
  return result


# -- Experiments --------------------------------------------------------------------------


def environment_metadata() -> Dict[str, Any]:
  """Versions, device and git commit: what a result folder needs to be reproduced."""
  import flax
  import optax
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
    git_commit = commit.stdout.strip() or None
    dirty = subprocess.run(['git', 'status', '--porcelain'], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
    git_dirty = bool(dirty.stdout.strip())
  except (OSError, subprocess.SubprocessError):
    git_commit, git_dirty = None, None
  devices = jax.devices()
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'python': sys.version.split()[0],
      'platform': platform.platform(),
      'processor': cpu_model(),
      'cpu_count': os.cpu_count(),
      'jax': jax.__version__,
      'jaxlib': getattr(jax.lib, '__version__', None) or _package_version('jaxlib'),
      'flax': flax.__version__,
      'optax': optax.__version__,
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'backend': jax.default_backend(),
      'jax_default_matmul_precision': str(jax.config.jax_default_matmul_precision),
      'jax_enable_x64': bool(jax.config.jax_enable_x64),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'git_commit': git_commit,
      'git_dirty': git_dirty,
  }


def _package_version(name: str) -> Optional[str]:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
  """One `kfac-bench run`: a submission on a workload, `num_studies` x `num_tuning_trials`."""
  experiment_dir: str
  experiment_name: str
  num_tuning_trials: int = 1
  num_studies: int = 1
  rng_seed: int = 0
  overwrite: bool = False
  trial: TrialSettings = TrialSettings(rng_seed=0)


def submission_dir(settings: ExperimentSettings, workload: Workload, submission_name: str) -> str:
  return os.path.join(settings.experiment_dir, settings.experiment_name, workload.variant_name,
                      submission_name)


def _check_writable(path: str) -> None:
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise BenchmarkError(f'experiment directory {path!r} cannot be written: {e.strerror or e}') from e


def run_experiment(workload: Workload, submission: types.ModuleType, submission_name: str,
                   search_space: tuning.SearchSpace, settings: ExperimentSettings,
                   log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
  """Runs every study and trial not yet finished; returns all trial summaries.

  Study s draws its trials from the search space with seed `rng_seed + s`; trial t of study s
  trains with seed `rng_seed + 1000 * s + t`. A trial with a `trial_summary.json` is finished and
  never rerun; a trial folder without one is removed and the trial restarts cleanly. A finished
  trial whose recorded hyperparameters differ from the drawn ones is an error unless `overwrite`.
  """
  root = submission_dir(settings, workload, submission_name)
  if settings.overwrite and os.path.isdir(root):
    shutil.rmtree(root)
  _check_writable(root)
  experiment_root = os.path.join(settings.experiment_dir, settings.experiment_name)
  metadata_path = os.path.join(experiment_root, METADATA_FILE)
  metadata = {}
  if os.path.isfile(metadata_path):
    with open(metadata_path) as f:
      metadata = json.load(f)
  metadata.setdefault('runs', []).append(dict(
      environment_metadata(), workload=workload.workload_name, config=workload.config_name,
      data_source=workload.data_source, submission=submission_name,
      num_tuning_trials=settings.num_tuning_trials, num_studies=settings.num_studies,
      rng_seed=settings.rng_seed, trial=dataclasses.asdict(settings.trial)))
  _write_json(metadata_path, metadata)

  submission.__submission_name__ = submission_name
  summaries = []
  for study in range(settings.num_studies):
    points = tuning.generate_trials(search_space, settings.num_tuning_trials,
                                    seed=settings.rng_seed + study)
    for t, point in enumerate(points):
      trial_dir = os.path.join(root, f'study_{study}', f'trial_{t + 1}')
      prefix = f'[{submission_name} study {study} trial {t + 1}/{len(points)}]'
      summary_path = os.path.join(trial_dir, SUMMARY_FILE)
      if os.path.isfile(summary_path):
        with open(summary_path) as f:
          done = json.load(f)
        if json.loads(json.dumps(point)) != done.get('hyperparameters'):
          raise BenchmarkError(
              f'{trial_dir} was run with other hyperparameters ({done.get("hyperparameters")}); '
              f'use --overwrite or another --experiment_name')
        log(f'{prefix} already finished ({done["status"]}); skipped')
        summaries.append(done)
        continue
      if os.path.isdir(trial_dir):
        shutil.rmtree(trial_dir)
      log(f'{prefix} hyperparameters {json.dumps(point, sort_keys=True)}')
      trial_settings = dataclasses.replace(settings.trial,
                                           rng_seed=settings.rng_seed + 1000 * study + t)
      result = run_trial(workload, submission, point, trial_dir, trial_settings, log=log,
                         log_prefix=prefix)
      log(f'{prefix} {result["status"]}: steps_to_target={result["steps_to_target"]} '
          f'seconds_to_target={_fmt(result["seconds_to_target"])}')
      summaries.append(result)
  return summaries


def _fmt(x: Optional[float]) -> str:
  return 'null' if x is None else f'{x:.1f}'
