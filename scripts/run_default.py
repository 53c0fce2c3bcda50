"""`make run`: the default job on the embedded data, from data build to leaderboard.

Trains each default submission of the workload (`DEFAULT_SUBMISSIONS`) on its small config with
fixed hyperparameters (`tuning_search_spaces/<workload>/<submission>_tuned.json` when it exists,
else the first point of `<submission>.json`), one study, until the validation target or the step
budget, then prints the leaderboard and writes the full report (Markdown, HTML, JSON, PNG). Every run writes a new
experiment folder `<experiment_dir>/run_<workload>_<config>_<UTC time>`, so runs stay apart and
nothing is overwritten.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from absl import app, flags

from benchmark import report, runner, spec, tuning
from benchmark.spec import BenchmarkError
import workloads

# workload -> submissions trained by `make run`, in order, each with its search space file.
DEFAULT_SUBMISSIONS = {
    'ogbg_molpcba': ('nesterov', 'kfac_expand', 'kfac_reduce'),
}

# `make run` stops a submission that has not reached the target after this many steps (the
# tuned Nesterov point needs 900-1,000 steps on ogbg small, K-FAC about half; see README).
MAKE_RUN_MAX_STEPS = 1500

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', 'ogbg_molpcba', 'Workload to run.')
flags.DEFINE_string('config', 'small', 'Workload config.')
flags.DEFINE_string('experiment_dir', 'experiments', 'Where the experiment folder is written.')
flags.DEFINE_integer('rng_seed', 0, 'Seed of the run.')


def fixed_point_space(workload: str, submission_name: str) -> str:
  """The search-space file `make run` trains with: the tuned point when there is one."""
  folder = os.path.join('tuning_search_spaces', workload)
  tuned = os.path.join(folder, f'{submission_name}_tuned.json')
  return tuned if os.path.isfile(tuned) else os.path.join(folder, f'{submission_name}.json')


def main(argv) -> int:
  del argv
  started = time.perf_counter()
  try:
    workload = workloads.get_workload(FLAGS.workload, FLAGS.config)
    build = getattr(type(workload), 'build_embedded_data', None)
    if build is not None:
      print(f'embedded data: {build()}', flush=True)
    workload.check_data_available()
    if FLAGS.workload not in DEFAULT_SUBMISSIONS:
      raise BenchmarkError(f'no default submissions for workload {FLAGS.workload!r}; choose one of '
                           f'{", ".join(sorted(DEFAULT_SUBMISSIONS))}')
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
    name = f'run_{workload.variant_name}_{stamp}'
    for submission_name in DEFAULT_SUBMISSIONS[FLAGS.workload]:
      path = os.path.join('submissions', FLAGS.workload, f'{submission_name}.py')
      submission = spec.load_submission(path)
      space = tuning.load_search_space(fixed_point_space(FLAGS.workload, submission_name))
      settings = runner.ExperimentSettings(
          experiment_dir=FLAGS.experiment_dir, experiment_name=name,
          trial=runner.TrialSettings(rng_seed=FLAGS.rng_seed,
                                     max_global_steps=min(workload.step_hint, MAKE_RUN_MAX_STEPS)))
      runner.run_experiment(workload, submission, submission_name, space, settings,
                            log=lambda m: print(m, flush=True))
    root = os.path.join(FLAGS.experiment_dir, name)
    print()
    print(report.render(root, 'leaderboard'))
    paths = report.write_report(root, os.path.join(root, 'report'))
    html = next(p for p in paths if p.endswith('.html'))
    print(f'\nresults: {root}\nreport: {html}')
    print(f'make run took {time.perf_counter() - started:.0f} s')
  except BenchmarkError as e:
    print(f'make run: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  app.run(main)
