"""`make run`: the default job on the embedded data, from data build to leaderboard.

Trains each default submission of the workload (`DEFAULT_SUBMISSIONS`) on its small config with
its fixed reference hyperparameters (the first point of its search space), one study, until the
validation target or the step budget, then prints the leaderboard. Every run writes a new
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
    'ogbg_molpcba': ('nesterov',),
}

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', 'ogbg_molpcba', 'Workload to run.')
flags.DEFINE_string('config', 'small', 'Workload config.')
flags.DEFINE_string('experiment_dir', 'experiments', 'Where the experiment folder is written.')
flags.DEFINE_integer('rng_seed', 0, 'Seed of the run.')


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
      space = tuning.load_search_space(
          os.path.join('tuning_search_spaces', FLAGS.workload, f'{submission_name}.json'))
      settings = runner.ExperimentSettings(
          experiment_dir=FLAGS.experiment_dir, experiment_name=name,
          trial=runner.TrialSettings(rng_seed=FLAGS.rng_seed, max_global_steps=workload.step_hint))
      runner.run_experiment(workload, submission, submission_name, space, settings,
                            log=lambda m: print(m, flush=True))
    root = os.path.join(FLAGS.experiment_dir, name)
    print()
    print(report.render(root, 'markdown'))
    print(f'\nresults: {root}  (kfac-bench report {root} --format=json)')
    print(f'make run took {time.perf_counter() - started:.0f} s')
  except BenchmarkError as e:
    print(f'make run: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  app.run(main)
