"""An experiment: one submission on one workload, `num_studies` studies of tuning trials, resumed
at trial granularity, in upstream AlgoPerf's folder layout (`benchmark.results`).

External tuning: study s draws its trials from the search space with seed `rng_seed + s`;
`hparam_start_index`/`hparam_end_index` run a slice of them (upstream's flags, to spread one
study over machines). Self-tuning: one trial per study, no search space, hyperparameters None,
1.5 x the runtime budget (upstream's). Trial t of study s trains with seed
`rng_seed + SEEDS_PER_STUDY * s + t`. A trial with a `trial_summary.json` is finished and never
rerun; an unfinished trial continues from its last checkpoint (`TrialSettings.resume`, upstream's
`--resume_last_run`), and its folder is removed when it has none (or resuming is off) and the
trial restarts cleanly. `meta_data_<p>.json` and `flags_<p>.json` are written for each run of a
trial, `p` its preemption count.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Mapping, Optional

from benchmark import environment, hosts, results, tuning
from benchmark.checkpoint import Checkpointer
from benchmark.trial import SELF_TUNING_BUDGET_FACTOR, TrialSettings, run_trial
from contract.errors import BenchmarkError
from contract.submission import Submission
from contract.workload import Workload

RULESETS = ('external', 'self')
SEEDS_PER_STUDY = 1000  # Trial seeds of different studies never meet below 1000 trials.
WORKLOAD_PROPERTIES = (
    'workload_name', 'variant_name', 'config_name', 'data_source', 'target_metric_name',
    'target_metric_higher_is_better', 'validation_target_value', 'test_target_value',
    'max_allowed_runtime_sec', 'eval_period_time_sec', 'eval_period_steps', 'step_hint',
    'num_train_examples', 'num_eval_train_examples', 'num_validation_examples',
    'num_test_examples', 'eval_batch_size')


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
  """One `kfac-bench run`: a submission on a workload, `num_studies` x `num_tuning_trials`.

  `flags` is what `flags_0.json` records beside the settings (the CLI's flag values).
  """
  experiment_dir: str
  experiment_name: str
  tuning_ruleset: str = 'external'
  num_tuning_trials: int = 1
  num_studies: int = 1
  hparam_start_index: Optional[int] = None
  hparam_end_index: Optional[int] = None
  rng_seed: int = 0
  overwrite: bool = False
  trial: TrialSettings = TrialSettings(rng_seed=0)
  flags: Optional[Mapping[str, Any]] = None


def experiment_root(settings: ExperimentSettings) -> str:
  return os.path.join(settings.experiment_dir, settings.experiment_name)


def _check_writable(path: str) -> None:
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise BenchmarkError(
        f'experiment directory {path!r} cannot be written: {e.strerror or e}') from e


def meta_data(workload: Workload, rng_seed: int, preemption_count: int = 0) -> Dict[str, Any]:
  """`meta_data_<p>.json`: the environment, `workload.<property>` values (upstream's keys), seed,
  the preemption count `p` (runs of the trial before this one)."""
  properties = {f'workload.{name}': getattr(workload, name) for name in WORKLOAD_PROPERTIES}
  return dict(environment.environment_metadata(), rng_seed=rng_seed,
              preemption_count=preemption_count, **properties)


def _flags(settings: ExperimentSettings, workload: Workload, submission: Submission
           ) -> Dict[str, Any]:
  recorded = dataclasses.asdict(settings)
  recorded.pop('flags')
  recorded.update(workload=workload.variant_name, submission=submission.name,
                  framework=results.FRAMEWORK)
  return dict(recorded, **(settings.flags or {}))


def _trial_points(search_space: Optional[tuning.SearchSpace], settings: ExperimentSettings,
                  study: int) -> List[Optional[Dict[str, Any]]]:
  if settings.tuning_ruleset == 'self':
    return [None]
  return tuning.generate_trials(search_space, settings.num_tuning_trials,
                                seed=settings.rng_seed + study)


def _check_ruleset(search_space: Optional[tuning.SearchSpace], settings: ExperimentSettings
                   ) -> None:
  if settings.tuning_ruleset not in RULESETS:
    raise BenchmarkError(f'unknown tuning ruleset {settings.tuning_ruleset!r}; choose one of '
                         f'{", ".join(RULESETS)}')
  if settings.tuning_ruleset == 'self' and search_space is not None:
    raise BenchmarkError('the self-tuning ruleset takes no tuning search space')
  if settings.tuning_ruleset == 'external' and search_space is None:
    raise BenchmarkError('the external tuning ruleset needs --tuning_search_space')


def _finished(trial_dir: str, point: Optional[Dict[str, Any]], submission: Submission
              ) -> Optional[Dict[str, Any]]:
  """The trial's summary when it finished with these hyperparameters; None when not finished."""
  path = os.path.join(trial_dir, results.SUMMARY_FILE)
  if not os.path.isfile(path):
    return None
  done = results.read_json(path)
  if done.get('submission') != submission.name:
    raise BenchmarkError(
        f'{trial_dir} holds a trial of submission {done.get("submission")!r}; an experiment '
        f'folder holds one submission: use another --experiment_name for {submission.name!r}')
  _check_hyperparameters(trial_dir, point, done.get('hyperparameters'))
  return done


def _check_hyperparameters(trial_dir: str, point: Optional[Dict[str, Any]], recorded: Any
                           ) -> None:
  if json.loads(json.dumps(point)) != recorded:
    raise BenchmarkError(f'{trial_dir} was run with other hyperparameters ({recorded}); '
                         f'use --overwrite or another --experiment_name')


def _resumable(trial_dir: str, point: Optional[Dict[str, Any]], resume: bool) -> bool:
  """Whether an unfinished trial continues from a checkpoint: resuming is on and the folder has
  one; BenchmarkError when it was run with other hyperparameters."""
  if not resume or not Checkpointer(os.path.join(trial_dir, results.CHECKPOINTS_DIR)).names():
    return False
  path = os.path.join(trial_dir, results.HPARAMS_FILE)
  recorded = results.read_json(path) if os.path.isfile(path) else None
  _check_hyperparameters(trial_dir, point, recorded)
  return True


def run_experiment(workload: Workload, submission: Submission,
                   search_space: Optional[tuning.SearchSpace], settings: ExperimentSettings,
                   log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
  """Runs every study and trial of the slice not yet finished; returns their summaries.

  Raises:
    BenchmarkError: bad settings, an unwritable folder, or a finished trial whose recorded
      hyperparameters differ from the drawn ones (unless `overwrite`).
  """
  _check_ruleset(search_space, settings)
  root = experiment_root(settings)
  writer = hosts.is_writer()  # Several processes: process 0 changes the folder, the others wait.
  if settings.overwrite and writer:
    pattern = os.path.join(root, 'study_*', results.workload_dir_name(workload.variant_name))
    for folder in glob.glob(pattern):
      shutil.rmtree(folder)
  if writer:
    _check_writable(root)
  budget_factor = SELF_TUNING_BUDGET_FACTOR if settings.tuning_ruleset == 'self' else 1.0
  summaries = []
  for study in range(settings.num_studies):
    points = _trial_points(search_space, settings, study)
    for index, point in itertools.islice(enumerate(points), settings.hparam_start_index,
                                         settings.hparam_end_index):
      trial_dir = results.trial_dir(root, study, workload.variant_name, index + 1)
      prefix = f'[{submission.name} study {study} trial {index + 1}/{len(points)}]'
      hosts.barrier(f'before {trial_dir}')  # The previous trial's files are written.
      done = _finished(trial_dir, point, submission)
      if done is not None:
        log(f'{prefix} already finished ({done["status"]}); skipped')
        summaries.append(done)
        continue
      if (writer and os.path.isdir(trial_dir)
          and not _resumable(trial_dir, point, settings.trial.resume)):
        shutil.rmtree(trial_dir)
      os.makedirs(trial_dir, exist_ok=True)
      seed = settings.rng_seed + SEEDS_PER_STUDY * study + index
      hosts.agree(f'trial {trial_dir}: seed {seed}, hyperparameters '
                  f'{json.dumps(point, sort_keys=True)}')  # Also waits for the folder.
      trial_settings = dataclasses.replace(settings.trial, rng_seed=seed,
                                           budget_factor=budget_factor)

      def write_run_files(preemption: int, trial_dir: str = trial_dir, seed: int = seed) -> None:
        results.write_json(os.path.join(trial_dir, results.meta_data_file(preemption)),
                           meta_data(workload, seed, preemption))
        results.write_json(os.path.join(trial_dir, results.flags_file(preemption)),
                           _flags(settings, workload, submission))

      log(f'{prefix} hyperparameters {json.dumps(point, sort_keys=True)}')
      result = run_trial(workload, submission, point, trial_dir, trial_settings, log=log,
                         log_prefix=prefix, on_start=write_run_files)
      seconds = result['seconds_to_target']
      log(f'{prefix} {result["status"]}: steps_to_target={result["steps_to_target"]} '
          f'seconds_to_target={"null" if seconds is None else f"{seconds:.1f}"}')
      summaries.append(result)
  return summaries
