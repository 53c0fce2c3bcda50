"""The two packaged jobs: `make run` (tuned points, one study) and `make study` (equal-budget
random-search sweeps, several studies), for any workload, into one experiment folder.

A job is a list of `(submission name, search-space file)` per workload; each submission module is
`submissions/<workload>/<name>.py`. `run_job` trains them one after the other through
`runner.run_experiment` (so a rerun resumes at trial granularity) and writes the full report.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from benchmark import report, runner, tuning
from contract.errors import BenchmarkError
from contract.workload import Workload
import workloads
from benchmark import submission_loader

SEARCH_SPACE_DIR = 'tuning_search_spaces'
SUBMISSION_DIR = 'submissions'

# The submissions every job trains, in order: the reference first (ratios are to it).
JOB_SUBMISSIONS: Dict[str, Tuple[str, ...]] = {
    'ogbg_molpcba': ('nesterov', 'kfac_expand', 'kfac_reduce'),
    'imagenet_vit': ('nesterov', 'kfac_expand', 'kfac_reduce'),
    'cifar_wrn': ('nesterov', 'kfac_expand', 'kfac_reduce'),
}


def job_submissions(workload_name: str) -> Tuple[str, ...]:
  if workload_name not in JOB_SUBMISSIONS:
    raise BenchmarkError(f'no job submissions for workload {workload_name!r}; choose one of '
                         f'{", ".join(sorted(JOB_SUBMISSIONS))}')
  return JOB_SUBMISSIONS[workload_name]


def _first_existing(candidates: Sequence[str]) -> str:
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise BenchmarkError(f'no search space file: tried {", ".join(candidates)}')


def tuned_space_path(workload_name: str, submission_name: str) -> str:
  """`make run`'s fixed point: `<name>_tuned.json` when it exists, else `<name>.json`."""
  folder = os.path.join(SEARCH_SPACE_DIR, workload_name)
  return _first_existing([os.path.join(folder, f'{submission_name}_tuned.json'),
                          os.path.join(folder, f'{submission_name}.json')])


def sweep_space_path(workload_name: str, submission_name: str) -> str:
  """The study's search space: `<name>_sweep.json` when it exists (a reference whose
  `<name>.json` is a fixed published point), else `<name>.json`."""
  folder = os.path.join(SEARCH_SPACE_DIR, workload_name)
  return _first_existing([os.path.join(folder, f'{submission_name}_sweep.json'),
                          os.path.join(folder, f'{submission_name}.json')])


def run_job(workload: Workload, plan: Sequence[Tuple[str, str]], settings: runner.ExperimentSettings,
            log: Callable[[str], None] = print, submission_dir: Optional[str] = None) -> str:
  """Train every `(submission name, search-space path)` of `plan` on `workload` into the
  experiment `settings` names; returns the experiment folder (`finish_report` reports it)."""
  folder = submission_dir or os.path.join(SUBMISSION_DIR, workload.workload_name)
  loaded = [(name, submission_loader.load_submission(os.path.join(folder, f'{name}.py')),
             tuning.load_search_space(space)) for name, space in plan]  # Fail before training.
  for name, submission, space in loaded:
    runner.run_experiment(workload, submission, name, space, settings, log=log)
  return os.path.join(settings.experiment_dir, settings.experiment_name)


def run_workload_job(workload_name: str, config_name: str, *,
                     space_path: Callable[[str, str], str], experiment_dir: str,
                     experiment_name: Callable[[Workload], str], step_caps: Mapping[str, int],
                     names: Optional[Sequence[str]] = None, max_global_steps: Optional[int] = None,
                     num_tuning_trials: int = 1, num_studies: int = 1, rng_seed: int = 0) -> str:
  """Load the workload (building its embedded data), then `run_job` its submissions `names`
  (default: `job_submissions`) with the search spaces `space_path(workload_name, name)`.

  Every trial stops at `max_global_steps`, by default `min(step_hint, step_caps[workload])`;
  study `s` draws with seed `rng_seed + s` (`runner.run_experiment`). Returns the experiment
  folder `experiment_dir/experiment_name(workload)`.
  """
  workload = load_workload(workload_name, config_name, log=log_line)
  plan = [(name, space_path(workload_name, name))
          for name in (names or job_submissions(workload_name))]
  max_steps = max_global_steps or min(workload.step_hint,
                                      step_caps.get(workload_name, workload.step_hint))
  settings = runner.ExperimentSettings(
      experiment_dir=experiment_dir, experiment_name=experiment_name(workload),
      num_tuning_trials=num_tuning_trials, num_studies=num_studies, rng_seed=rng_seed,
      trial=runner.TrialSettings(rng_seed=rng_seed, max_global_steps=max_steps))
  return run_job(workload, plan, settings, log=log_line)


def finish_report(root: str, log: Callable[[str], None] = print) -> List[str]:
  """Print the leaderboard of the experiment `root`, write its report, print the HTML path."""
  log('')
  log(report.render(root, 'leaderboard'))
  paths = report.write_report(root, os.path.join(root, 'report'))
  html = next(p for p in paths if p.endswith('.html'))
  log(f'\nresults: {root}\nreport: {html}')
  return paths


def load_workload(workload_name: str, config_name: str, log: Callable[[str], None] = print
                  ) -> Workload:
  """The workload, with its embedded data built when it uses it, and its data checked."""
  workload = workloads.get_workload(workload_name, config_name)
  build = getattr(type(workload), 'build_embedded_data', None)
  if build is not None and workload.data_source == 'embedded':
    log(f'embedded data: {build()}')
  workload.check_data_available()
  return workload


def log_line(message: str) -> None:
  print(message, flush=True)


def run_main(label: str, job: Callable[[], str]) -> int:
  """Run `job() -> experiment folder`, then its report; a `BenchmarkError` is one line on
  stderr and exit status 2."""
  started = time.perf_counter()
  try:
    finish_report(job(), log=log_line)
  except BenchmarkError as e:
    print(f'{label}: error: {e}', file=sys.stderr)
    return 2
  print(f'{label} took {time.perf_counter() - started:.0f} s')
  return 0
