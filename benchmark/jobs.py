"""The two packaged jobs: `make run` (tuned points, one study) and `make study` (equal-budget
random-search sweeps, several studies), for any workload, into one job folder.

A job trains the configured submissions (`benchmark.comparison`: `job_submissions`) one after the
other, each `submissions/<workload folder>/<name>.py` with a search space from
`tuning_search_spaces/<workload folder>/`, through `experiment.run_experiment` (so a rerun
resumes at trial granularity), each into its own experiment folder `<job folder>/<submission>`
(upstream's one folder per submission), and writes the full report of the job folder.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import workloads
from benchmark import environment, report, submission_loader, tuning
from benchmark.comparison import load_comparison
from benchmark.experiment import ExperimentSettings, run_experiment
from benchmark.trial import TrialSettings
from contract.errors import BenchmarkError
from contract.workload import Workload

SEARCH_SPACE_DIR = 'tuning_search_spaces'
SUBMISSION_DIR = 'submissions'


def workload_folder(workload_name: str, root: str = SUBMISSION_DIR) -> str:
  """The folder of a workload's submissions or search spaces below `root`: `<root>/<name>` when
  it exists, else the folder named like the workload's package (`ogbg` -> `ogbg_molpcba`)."""
  workloads.workload_class(workload_name)  # An unknown name is a BenchmarkError.
  package = workloads.WORKLOADS[workload_name][0].split('.')[1]
  for name in (workload_name, package):
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  raise BenchmarkError(f'no folder for workload {workload_name!r} in {root}/')


def job_submissions(workload_name: str) -> Tuple[str, ...]:
  """The configured job submissions that exist for the workload, in configured order."""
  folder = workload_folder(workload_name)
  names = tuple(n for n in load_comparison().job_submissions
                if os.path.isfile(os.path.join(folder, f'{n}.py')))
  if not names:
    raise BenchmarkError(f'no job submissions for workload {workload_name!r} in {folder}')
  return names


def _first_existing(candidates: Sequence[str]) -> str:
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise BenchmarkError(f'no search space file: tried {", ".join(candidates)}')


def tuned_space_path(workload_name: str, submission_name: str) -> str:
  """`make run`'s fixed point: `<name>_tuned.json` when it exists, else `<name>.json`."""
  folder = workload_folder(workload_name, SEARCH_SPACE_DIR)
  return _first_existing([os.path.join(folder, f'{submission_name}_tuned.json'),
                          os.path.join(folder, f'{submission_name}.json')])


def sweep_space_path(workload_name: str, submission_name: str) -> str:
  """The study's search space: `<name>_sweep.json` when it exists (a reference whose
  `<name>.json` is a fixed published point), else `<name>.json`."""
  folder = workload_folder(workload_name, SEARCH_SPACE_DIR)
  return _first_existing([os.path.join(folder, f'{submission_name}_sweep.json'),
                          os.path.join(folder, f'{submission_name}.json')])


def run_job(workload: Workload, plan: Sequence[Tuple[str, str]], settings: ExperimentSettings,
            log: Callable[[str], None] = print) -> str:
  """Train every `(submission name, search-space path)` of `plan` on `workload`, each into
  `<experiment_dir>/<experiment_name>/<submission>`; returns the job folder."""
  folder = workload_folder(workload.workload_name)
  loaded = [(submission_loader.load_submission(os.path.join(folder, f'{name}.py')),
             tuning.load_search_space(space)) for name, space in plan]  # Fail before training.
  for submission, space in loaded:
    experiment_name = os.path.join(settings.experiment_name, submission.name)
    run_experiment(workload, submission, space,
                   dataclasses.replace(settings, experiment_name=experiment_name), log=log)
  return os.path.join(settings.experiment_dir, settings.experiment_name)


def run_workload_job(workload_name: str, config_name: str, *,
                     space_path: Callable[[str, str], str], experiment_dir: str,
                     experiment_name: Callable[[Workload], str], step_caps: Mapping[str, int],
                     names: Optional[Sequence[str]] = None, max_global_steps: Optional[int] = None,
                     num_tuning_trials: int = 1, num_studies: int = 1, rng_seed: int = 0) -> str:
  """Load the workload (building its embedded data), then `run_job` its submissions `names`
  (default: `job_submissions`) with the search spaces `space_path(workload_name, name)`.

  Every trial stops at `max_global_steps`, by default `min(step_hint, step_caps[workload])`;
  study `s` draws with seed `rng_seed + s` (`experiment.run_experiment`). Returns the job folder
  `experiment_dir/experiment_name(workload)`.
  """
  workload = load_workload(workload_name, config_name, log=log_line)
  plan = [(name, space_path(workload_name, name))
          for name in (names or job_submissions(workload_name))]
  max_steps = max_global_steps or min(workload.step_hint,
                                      step_caps.get(workload_name, workload.step_hint))
  settings = ExperimentSettings(
      experiment_dir=experiment_dir, experiment_name=experiment_name(workload),
      num_tuning_trials=num_tuning_trials, num_studies=num_studies, rng_seed=rng_seed,
      trial=TrialSettings(rng_seed=rng_seed, max_global_steps=max_steps))
  return run_job(workload, plan, settings, log=log_line)


def finish_report(root: str, log: Callable[[str], None] = print) -> List[str]:
  """Print the leaderboard of the job folder `root`, write its report, print the HTML path."""
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
  if workload.data_source == 'embedded':
    built = workload.build_embedded_data()
    if built:
      log(f'embedded data: {built}')
  workload.check_data_available()
  return workload


def log_line(message: str) -> None:
  print(message, flush=True)


def run_main(label: str, job: Callable[[], str]) -> int:
  """Run `job() -> job folder`, then its report; a `BenchmarkError` is one line on stderr and
  exit status 2."""
  environment.quiet_library_logs()
  started = time.perf_counter()
  try:
    finish_report(job(), log=log_line)
  except BenchmarkError as e:
    print(f'{label}: error: {e}', file=sys.stderr)
    return 2
  print(f'{label} took {time.perf_counter() - started:.0f} s')
  return 0
