"""`make study`: equal-budget random-search studies of the reference, K-FAC-expand and
K-FAC-reduce on one workload (default: its small config), then the leaderboard and report.

Every submission gets the same number of Halton trials per study (`--num_tuning_trials`) and
the same number of studies (`--num_studies`, seeds `rng_seed + s`), the same step cap and the
same evaluation schedule; the search space is `<submission>_sweep.json` when it exists, else
`<submission>.json` (`benchmark.jobs.sweep_space_path`). Trials stop at the target.
All workloads write into one job folder (`--experiment_name`, default `study_<config>`; one
experiment folder per submission inside it), so `kfac-bench report experiments/study_small`
gives one leaderboard and one performance profile over them. A rerun resumes: finished trials are skipped.

  make study WORKLOAD=ogbg            # or imagenet_vit, cifar
  make study WORKLOAD=cifar STUDY_TRIALS=2 STUDY_STUDIES=3
"""

from __future__ import annotations

from absl import app, flags

from benchmark import jobs

# The step cap of every trial of a study: half the ogbg small step_hint (3,000) and 0.4x the image
# small configs' (1,000); 1.3-1.5x the measured reference steps to target.
STUDY_MAX_STEPS = {'ogbg': 1500, 'imagenet_vit': 400, 'cifar': 400}

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', 'ogbg', 'Workload to study (registry name: ogbg, imagenet_vit, cifar).')
flags.DEFINE_string('config', 'small', 'Workload config.')
flags.DEFINE_string('experiment_dir', 'experiments', 'Root folder of experiments.')
flags.DEFINE_string('experiment_name', None, 'Experiment folder (default: study_<config>).')
flags.DEFINE_list('submissions', None, 'Submissions to study (default: the workload\'s job).')
flags.DEFINE_integer('num_tuning_trials', 3, 'Trials per study, the same for every submission.')
flags.DEFINE_integer('num_studies', 3, 'Studies (seeds) per submission.')
flags.DEFINE_integer('max_global_steps', None, 'Step cap of every trial (default: per workload).')
flags.DEFINE_integer('rng_seed', 0, 'Seed of the trial draws and training.')


def job() -> str:
  return jobs.run_workload_job(
      FLAGS.workload, FLAGS.config, space_path=jobs.sweep_space_path,
      experiment_dir=FLAGS.experiment_dir,
      experiment_name=lambda workload: FLAGS.experiment_name or f'study_{FLAGS.config}',
      step_caps=STUDY_MAX_STEPS, names=FLAGS.submissions, max_global_steps=FLAGS.max_global_steps,
      num_tuning_trials=FLAGS.num_tuning_trials, num_studies=FLAGS.num_studies,
      rng_seed=FLAGS.rng_seed)


def main(argv) -> int:
  del argv
  return jobs.run_main('make study', job)


if __name__ == '__main__':
  app.run(main)
