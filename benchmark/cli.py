"""`kfac-bench`: run submissions on workloads, report leaderboards, describe workloads.

  kfac-bench run --workload=ogbg_molpcba --config=small \
      --submission_path=submissions/ogbg_molpcba/nesterov.py \
      --tuning_search_space=tuning_search_spaces/ogbg_molpcba/nesterov.json \
      --num_tuning_trials=1 --experiment_dir=experiments --experiment_name=demo --rng_seed=0
  kfac-bench report experiments/demo [--format=json] [--json_full] [--out=report_dir]
  kfac-bench describe --workload=ogbg_molpcba --config=full --format=json
  kfac-bench build-data --workload=ogbg_molpcba

Flags are named like AlgoPerf's submission runner. Bad input prints one line and exits 2.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List

from absl import app, flags

from contract.errors import BenchmarkError
from benchmark import submission_loader

COMMANDS = ('run', 'report', 'describe', 'build-data')

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', None, 'Workload name: ogbg_molpcba, imagenet_vit, cifar_wrn.')
flags.DEFINE_string('config', 'small', 'Workload config: full, small or tiny.')
flags.DEFINE_string('data_source', None, 'embedded (no download) or tfds; default by config.')
flags.DEFINE_string('data_dir', None, 'tensorflow-datasets directory (data_source=tfds).')
flags.DEFINE_string('submission_path', None, 'Submission module file or dotted module name.')
flags.DEFINE_string('tuning_search_space', None, 'JSON search space of the submission.')
flags.DEFINE_integer('num_tuning_trials', 1, 'Trials per study (external tuning ruleset).')
flags.DEFINE_integer('num_studies', 1, 'Independent studies (seeds) per submission.')
flags.DEFINE_string('experiment_dir', 'experiments', 'Root folder of experiments.')
flags.DEFINE_string('experiment_name', 'default', 'Experiment folder below experiment_dir.')
flags.DEFINE_integer('rng_seed', 0, 'Seed of trial draws and training.')
flags.DEFINE_integer('max_global_steps', None, 'Stop a trial after this many steps.')
flags.DEFINE_float('max_runtime_sec', None, 'Submission-time budget (default: the workload\'s).')
flags.DEFINE_integer('eval_every_steps', None, 'Evaluate every N steps (default: the workload\'s '
                     'step period, else its time period).')
flags.DEFINE_boolean('stop_on_target', True, 'Stop a trial at the first evaluation on target.')
flags.DEFINE_boolean('overwrite', False, 'Rerun finished trials of this experiment.')
flags.DEFINE_enum('format', 'markdown', ['markdown', 'json'], 'Output format of report/describe.')
flags.DEFINE_string('out', None, 'report: also write report.md, report.html (self-contained), '
                    'report.json (the full report) and the PNG plots to this folder.')
flags.DEFINE_boolean('json_full', False, 'report: print the full report object as JSON (rows, '
                     'performance profiles, scores, time breakdown, metadata) instead of --format.')


def _require(name: str) -> str:
  value = getattr(FLAGS, name)
  if value in (None, ''):
    raise BenchmarkError(f'--{name} is required')
  return value


def _workload():
  import workloads
  return workloads.get_workload(_require('workload'), FLAGS.config, data_dir=FLAGS.data_dir,
                                data_source=FLAGS.data_source)


def cmd_run(args: List[str]) -> int:
  from benchmark import report, runner, tuning
  if args:
    raise BenchmarkError(f'unexpected arguments to run: {" ".join(args)}')
  workload = _workload()
  workload.check_data_available()
  submission_path = _require('submission_path')
  submission = submission_loader.load_submission(submission_path)
  search_space = tuning.load_search_space(_require('tuning_search_space'))
  if FLAGS.num_studies < 1:
    raise BenchmarkError(f'--num_studies must be at least 1, got {FLAGS.num_studies}')
  settings = runner.ExperimentSettings(
      experiment_dir=FLAGS.experiment_dir, experiment_name=FLAGS.experiment_name,
      num_tuning_trials=FLAGS.num_tuning_trials, num_studies=FLAGS.num_studies,
      rng_seed=FLAGS.rng_seed, overwrite=FLAGS.overwrite,
      trial=runner.TrialSettings(rng_seed=FLAGS.rng_seed, max_global_steps=FLAGS.max_global_steps,
                                 max_runtime_sec=FLAGS.max_runtime_sec,
                                 eval_every_steps=FLAGS.eval_every_steps,
                                 stop_on_target=FLAGS.stop_on_target))
  runner.run_experiment(workload, submission, submission_loader.submission_name(submission_path),
                        search_space, settings, log=_log)
  root = os.path.join(FLAGS.experiment_dir, FLAGS.experiment_name)
  print(report.render(root, 'leaderboard'))
  return 0


def cmd_report(args: List[str]) -> int:
  from benchmark import report
  if len(args) != 1:
    raise BenchmarkError('usage: kfac-bench report EXPERIMENT_DIR [--format=json] [--json_full] '
                         '[--out=DIR]')
  print(report.render(args[0], 'json_full' if FLAGS.json_full else FLAGS.format))
  if FLAGS.out:
    paths = report.write_report(args[0], FLAGS.out)
    print(f'wrote {len(paths)} report files to {FLAGS.out}', file=sys.stderr)
  return 0


def cmd_describe(args: List[str]) -> int:
  if args:
    raise BenchmarkError(f'unexpected arguments to describe: {" ".join(args)}')
  description = _workload().describe()
  if FLAGS.format == 'json':
    print(json.dumps(description, indent=2, sort_keys=True))
  else:
    width = max(len(k) for k in description)
    for key, value in description.items():
      print(f'{key:<{width}}  {value}')
  return 0


def cmd_build_data(args: List[str]) -> int:
  import workloads
  if args:
    raise BenchmarkError(f'unexpected arguments to build-data: {" ".join(args)}')
  names = [FLAGS.workload] if FLAGS.workload else sorted(workloads.WORKLOADS)
  for name in names:
    cls = workloads.workload_class(name)
    build = getattr(cls, 'build_embedded_data', None)
    if build is None:
      raise BenchmarkError(f'workload {name!r} has no embedded data to build')
    print(f'{name}: {build()}')
  return 0


def _log(message: str) -> None:
  print(message, flush=True)


def main(argv: List[str]) -> int:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    given = argv[1] if len(argv) > 1 else 'nothing'
    raise BenchmarkError(f'unknown command {given!r}; use one of: {", ".join(COMMANDS)}')
  command, args = argv[1], argv[2:]
  handlers = {'run': cmd_run, 'report': cmd_report, 'describe': cmd_describe,
              'build-data': cmd_build_data}
  return handlers[command](args)


def _main_with_errors(argv: List[str]) -> int:
  try:
    return main(argv)
  except BenchmarkError as e:
    print(f'kfac-bench: error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('kfac-bench: interrupted; finished trials and measurements so far are kept',
          file=sys.stderr)
    return 130


def run_main() -> None:
  """Console-script entry point."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  app.run(_main_with_errors)


if __name__ == '__main__':
  run_main()
