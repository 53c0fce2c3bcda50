"""`make run`: the default job on the embedded data, from data build to leaderboard.

Trains the workload's job submissions (`job_submissions` of `benchmark/comparison.json`: the
Nesterov reference, K-FAC-expand, K-FAC-reduce) on its small config with fixed hyperparameters
(`tuning_search_spaces/<workload>/<submission>_tuned.json` when it exists, else the first point
of `<submission>.json`), one study, until the validation target or the step budget, then prints
the leaderboard and writes the full report (Markdown, HTML, JSON, PNG). Every run writes a new
experiment folder `<experiment_dir>/run_<workload>_<config>_<UTC time>`, so runs stay apart and
nothing is overwritten.

  make run                       # ogbg
  make run WORKLOAD=imagenet_vit # or cifar
"""

from __future__ import annotations

import datetime

from absl import app, flags

from benchmark import jobs

# `make run` stops a submission that has not reached the target after this many steps: about
# 1.5x the tuned Nesterov reference's measured steps to target (docs/results_*.md).
MAKE_RUN_MAX_STEPS = {'ogbg': 1500, 'imagenet_vit': 600, 'cifar': 600}

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', 'ogbg', 'Workload to run (registry name: ogbg, imagenet_vit, cifar).')
flags.DEFINE_string('config', 'small', 'Workload config.')
flags.DEFINE_string('experiment_dir', 'experiments', 'Where the experiment folder is written.')
flags.DEFINE_integer('rng_seed', 0, 'Seed of the run.')


def job() -> str:
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
  return jobs.run_workload_job(
      FLAGS.workload, FLAGS.config, space_path=jobs.tuned_space_path,
      experiment_dir=FLAGS.experiment_dir,
      experiment_name=lambda workload: f'run_{workload.variant_name}_{stamp}',
      step_caps=MAKE_RUN_MAX_STEPS, rng_seed=FLAGS.rng_seed)


def main(argv) -> int:
  del argv
  return jobs.run_main('make run', job)


if __name__ == '__main__':
  app.run(main)
