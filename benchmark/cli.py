"""`kfac-bench`: run submissions on workloads, report leaderboards, describe workloads, write
each submission's fastest trial of a study as its tuned point.

  kfac-bench run --workload=ogbg_small --framework=jax \
      --submission_path=submissions/ogbg_molpcba/nesterov.py \
      --tuning_search_space=tuning_search_spaces/ogbg_molpcba/nesterov.json \
      --num_tuning_trials=1 --experiment_dir=experiments --experiment_name=demo --rng_seed=0
  kfac-bench report experiments/demo [--format=json] [--json_full] [--out=report_dir]
      [--score=upstream] [--comparison=comparison.json]
  kfac-bench describe --workload=ogbg --format=json
  kfac-bench build-data --workload=ogbg
  kfac-bench tuned experiments/study_small [--out=tuning_search_spaces]   # fastest trials

Flags are named like upstream AlgoPerf's `submission_runner.py`; workload names are upstream's
(`ogbg`, `imagenet_vit`, `cifar` for the full configs) or variants `<base>_<config>`
(`ogbg_small`); `--config` names the config separately. Bad input prints one line and exits 2.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Tuple

from absl import app, flags

from contract.errors import BenchmarkError

COMMANDS = ('run', 'report', 'describe', 'build-data', 'tuned')

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', None, 'Workload: ogbg, imagenet_vit, cifar (full configs) or a '
                    'variant <base>_<config> (ogbg_small, cifar_tiny, ...).')
flags.DEFINE_string('config', None, 'Workload config (full, small, tiny); default: the one the '
                    'workload name carries (full for a base name).')
flags.DEFINE_enum('framework', 'jax', ['jax', 'pytorch'], 'Upstream\'s flag; only jax runs here.')
flags.DEFINE_string('data_source', None, 'embedded (no download) or tfds; default by config.')
flags.DEFINE_string('data_dir', None, 'tensorflow-datasets directory (data_source=tfds).')
flags.DEFINE_string('submission_path', None, 'Submission module file or dotted module name.')
flags.DEFINE_enum('tuning_ruleset', 'external', ['external', 'self'],
                  'external: trials drawn from --tuning_search_space; self: no search space, '
                  'hyperparameters None, 1.5x the runtime budget.')
flags.DEFINE_string('tuning_search_space', None, 'JSON search space (external tuning).')
flags.DEFINE_integer('num_tuning_trials', 1, 'Trials per study (external tuning ruleset).')
flags.DEFINE_integer('hparam_start_index', None, 'Run trials from this index of each study.')
flags.DEFINE_integer('hparam_end_index', None, 'Run trials up to (not incl.) this index.')
flags.DEFINE_integer('num_studies', 1, 'Independent studies (seeds) per submission.')
flags.DEFINE_string('experiment_dir', 'experiments', 'Root folder of experiments.')
flags.DEFINE_string('experiment_name', 'default', 'Experiment folder below experiment_dir.')
flags.DEFINE_integer('rng_seed', 0, 'Seed of trial draws and training.')
flags.DEFINE_integer('max_global_steps', None, 'Stop a trial after this many steps.')
flags.DEFINE_float('max_runtime_sec', None, 'Submission-time budget (default: the workload\'s, '
                   'x1.5 under self-tuning).')
flags.DEFINE_integer('eval_period_steps', None, 'Evaluate every N steps (default: the workload\'s '
                     'step period, else every eval_period_time_sec of wall-clock).')
flags.DEFINE_boolean('stop_on_target', True, 'Stop a trial once both targets are reached.')
flags.DEFINE_boolean('overwrite', False, 'Rerun finished trials of this experiment.')
flags.DEFINE_boolean('resume_last_run', True, 'Continue an unfinished trial from its last '
                     'checkpoint (upstream\'s flag; here also the default, so rerunning a killed '
                     'command continues it); --noresume_last_run restarts it from step 0.')
flags.DEFINE_boolean('save_checkpoints', True, 'Checkpoint trials at every evaluation and every '
                     '--checkpoint_every_secs (upstream\'s flag).')
flags.DEFINE_float('checkpoint_every_secs', 600.0, 'Wall-clock seconds between checkpoints '
                   'besides those at evaluations.')
flags.DEFINE_integer('checkpoints_to_keep', 2, 'Newest checkpoints kept per trial (at least 2, so '
                     'that a corrupt one falls back to the previous).')
flags.DEFINE_integer('max_consecutive_rejections', 10, 'A trial in which a layer\'s curvature '
                     'update was rejected (non-finite) more times in a row is marked degraded.')
flags.DEFINE_string('compilation_cache_dir', None, 'JAX\'s persistent compilation cache (trials '
                    '2..n and reruns load compiled steps); default $XDG_CACHE_HOME/kfac-bench/jax '
                    '(~/.cache/kfac-bench/jax); an empty value turns it off.')
flags.DEFINE_string('coordinator_address', None, 'Several processes (hosts): host:port of '
                    'process 0, given to jax.distributed.initialize with --num_processes and '
                    '--process_id. Inside a SLURM job step of several tasks they come from '
                    'SLURM\'s environment (docs/scaling.md).')
flags.DEFINE_integer('num_processes', None, 'Several processes: how many (see '
                     '--coordinator_address).')
flags.DEFINE_integer('process_id', None, 'Several processes: this one\'s index, 0 writes files.')
flags.DEFINE_enum('format', 'markdown', ['markdown', 'json'], 'Output format of report/describe.')
flags.DEFINE_string('out', None, 'report: also write report.md, report.html (self-contained), '
                    'report.json (the full report) and the PNG plots to this folder; tuned: the '
                    'search-space root to write into (default tuning_search_spaces).')
flags.DEFINE_boolean('json_full', False, 'report: print the full report object as JSON.')
flags.DEFINE_enum('score', 'ours', ['ours', 'upstream'], 'report: the score method; upstream '
                  'computes it exactly as AlgoPerf\'s scoring/performance_profile.py.')
flags.DEFINE_string('comparison', None, 'report: the reference and pairs file (default '
                    'benchmark/comparison.json).')


def _require(name: str) -> str:
  value = FLAGS[name].value
  if value in (None, ''):
    raise BenchmarkError(f'--{name} is required')
  return value


def _workload_and_config() -> Tuple[str, str]:
  """(registry name, config) from --workload (`ogbg`, `ogbg_small`) and --config."""
  import workloads
  name, config_name = workloads.split_variant(_require('workload'))
  if FLAGS.config is None:
    return name, config_name
  if config_name != 'full' and config_name != FLAGS.config:
    raise BenchmarkError(f'--workload={FLAGS.workload} names config {config_name!r} but '
                         f'--config={FLAGS.config}')
  return name, FLAGS.config


def _workload():
  import workloads
  name, config_name = _workload_and_config()
  return workloads.get_workload(name, config_name, data_dir=FLAGS.data_dir,
                                data_source=FLAGS.data_source)


def _settings():
  from benchmark.experiment import ExperimentSettings
  from benchmark.trial import TrialSettings
  if FLAGS.num_studies < 1:
    raise BenchmarkError(f'--num_studies must be at least 1, got {FLAGS.num_studies}')
  if FLAGS.checkpoints_to_keep < 2:
    raise BenchmarkError(f'--checkpoints_to_keep must be at least 2, got '
                         f'{FLAGS.checkpoints_to_keep}')
  if FLAGS.checkpoint_every_secs <= 0:
    raise BenchmarkError(f'--checkpoint_every_secs must be positive, got '
                         f'{FLAGS.checkpoint_every_secs}')
  return ExperimentSettings(
      experiment_dir=FLAGS.experiment_dir, experiment_name=FLAGS.experiment_name,
      tuning_ruleset=FLAGS.tuning_ruleset, num_tuning_trials=FLAGS.num_tuning_trials,
      num_studies=FLAGS.num_studies, hparam_start_index=FLAGS.hparam_start_index,
      hparam_end_index=FLAGS.hparam_end_index, rng_seed=FLAGS.rng_seed,
      overwrite=FLAGS.overwrite, flags=FLAGS.flag_values_dict(),
      trial=TrialSettings(rng_seed=FLAGS.rng_seed, max_global_steps=FLAGS.max_global_steps,
                          max_runtime_sec=FLAGS.max_runtime_sec,
                          eval_period_steps=FLAGS.eval_period_steps,
                          stop_on_target=FLAGS.stop_on_target, resume=FLAGS.resume_last_run,
                          save_checkpoints=FLAGS.save_checkpoints,
                          checkpoint_every_secs=FLAGS.checkpoint_every_secs,
                          checkpoints_to_keep=FLAGS.checkpoints_to_keep,
                          max_consecutive_rejections=FLAGS.max_consecutive_rejections))


def cmd_run(args: List[str]) -> int:
  from benchmark import hosts, report, submission_loader, tuning
  from benchmark.experiment import experiment_root, run_experiment
  if args:
    raise BenchmarkError(f'unexpected arguments to run: {" ".join(args)}')
  if FLAGS.framework != 'jax':
    raise BenchmarkError(f'--framework={FLAGS.framework}: only jax submissions run here')
  hosts.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  hosts.enable_compilation_cache(hosts.default_compilation_cache_dir()
                                 if FLAGS.compilation_cache_dir is None
                                 else FLAGS.compilation_cache_dir)
  workload = _workload()
  workload.check_data_available()
  submission = submission_loader.load_submission(_require('submission_path'))
  if FLAGS.tuning_ruleset == 'self' and FLAGS.tuning_search_space:
    raise BenchmarkError('--tuning_ruleset=self takes no --tuning_search_space')
  search_space = (None if FLAGS.tuning_ruleset == 'self'
                  else tuning.load_search_space(_require('tuning_search_space')))
  settings = _settings()
  run_experiment(workload, submission, search_space, settings, log=_log)
  if hosts.is_writer():
    print(report.render(experiment_root(settings), 'leaderboard'))
  return 0


def cmd_report(args: List[str]) -> int:
  from benchmark import report
  from benchmark.comparison import load_comparison
  if len(args) != 1:
    raise BenchmarkError('usage: kfac-bench report EXPERIMENT_DIR [--format=json] [--json_full] '
                         '[--out=DIR] [--score=upstream] [--comparison=FILE]')
  comparison = load_comparison(FLAGS.comparison)
  fmt = 'json_full' if FLAGS.json_full else FLAGS.format
  print(report.render(args[0], fmt, comparison, FLAGS.score))
  if FLAGS.out:
    paths = report.write_report(args[0], FLAGS.out, comparison, FLAGS.score)
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
  names = [_workload_and_config()[0]] if FLAGS.workload else sorted(workloads.WORKLOADS)
  for name in names:
    built = workloads.workload_class(name).build_embedded_data()
    if built is None:
      raise BenchmarkError(f'workload {name!r} has no embedded data to build')
    print(f'{name}: {built}')
  return 0


def cmd_tuned(args: List[str]) -> int:
  from benchmark import jobs, tuned_points
  if len(args) != 1:
    raise BenchmarkError('usage: kfac-bench tuned EXPERIMENT_DIR [--out=SEARCH_SPACES_DIR]')
  written, missing = tuned_points.write_tuned_points(args[0], FLAGS.out or jobs.SEARCH_SPACE_DIR)
  for (workload, submission), path, summary in written:
    print(f'{workload} {submission}: {path} (steps {summary.get("steps_to_target")}, '
          f'{summary["seconds_to_target"]:.1f} s, {summary.get("trial_dir")})')
  for workload, submission in missing:
    print(f'{workload} {submission}: no trial reached the target; its point is unchanged')
  return 0


def _log(message: str) -> None:
  """Prints on process 0 (the only one of a single-process run)."""
  from benchmark import hosts
  if hosts.is_writer():
    print(message, flush=True)


def main(argv: List[str]) -> int:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    given = argv[1] if len(argv) > 1 else 'nothing'
    raise BenchmarkError(f'unknown command {given!r}; use one of: {", ".join(COMMANDS)}')
  command, args = argv[1], argv[2:]
  handlers = {'run': cmd_run, 'report': cmd_report, 'describe': cmd_describe,
              'build-data': cmd_build_data, 'tuned': cmd_tuned}
  return handlers[command](args)


def _main_with_errors(argv: List[str]) -> int:
  from benchmark import environment  # Imports jax: not at flag-definition time.
  environment.quiet_library_logs()
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
