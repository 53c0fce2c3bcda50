"""Kill a tiny `kfac-bench run` at random moments, resume it each time, compare with a clean run.

  python scripts/kill_resume.py --kills=100 --workload=ogbg_tiny \
      --submission_path=submissions/ogbg_molpcba/kfac_reduce.py \
      --tuning_search_space=tuning_search_spaces/ogbg_molpcba/kfac_reduce.json \
      --max_global_steps=3000 --eval_period_steps=100 --work_dir=/tmp/kill_resume
  python scripts/kill_resume.py --quick   # 2 kills of a 30-step run: a smoke test of the harness

The defaults train long enough for most kills to land after the first checkpoint: a 200-step
ogbg_tiny run spends nearly all its time starting (imports, compilation), so a kill there only
restarts it (3000 steps: 33 s a run, about half of it training, 2 cores at load 7).

First an uninterrupted run (its wall-clock T sets the kill window). Then rounds: each round runs the
same command with `--resume_last_run` in a fresh experiment folder, sends SIGKILL to the whole
process group after a delay drawn uniformly from [0, T], restarts it, and so on until the trial
finishes; kills left over go to the next round. A round that finishes unkilled sets T to its
wall-clock when shorter (later runs are faster: compiled steps come from JAX's cache). Each finished
round is compared with the clean run: the same evaluation rows (every column but the time columns
and `preemption_count`, to `--rtol`/`--atol`), no torn row (every row has the header's number of
fields), the same final status, global step, steps to target and final metrics. Exit status 0 when
every round matches, 1 when one differs, 2 when `kfac-bench run` has no `--resume_last_run` (the
runner does not checkpoint yet).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

IGNORED_COLUMNS = ('accumulated_submission_time', 'accumulated_eval_time',
                   'accumulated_logging_time', 'total_duration', 'score', 'preemption_count')
SUMMARY_KEYS = ('status', 'global_steps', 'steps_to_target', 'final_metrics')
NO_RESUME_FLAG = 'resume_last_run'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--kills', type=int, default=100)
  parser.add_argument('--workload', default='ogbg_tiny')
  parser.add_argument('--submission_path', default='submissions/ogbg_molpcba/kfac_reduce.py')
  parser.add_argument('--tuning_search_space',
                      default='tuning_search_spaces/ogbg_molpcba/kfac_reduce.json')
  parser.add_argument('--max_global_steps', type=int, default=3000)
  parser.add_argument('--eval_period_steps', type=int, default=100)
  parser.add_argument('--rng_seed', type=int, default=0)
  parser.add_argument('--seed', type=int, default=0, help='Seed of the kill moments.')
  parser.add_argument('--work_dir', default='/tmp/kill_resume')
  parser.add_argument('--kfac_bench', default=os.path.join(os.path.dirname(sys.executable),
                                                           'kfac-bench'))
  parser.add_argument('--rtol', type=float, default=1e-6)
  parser.add_argument('--atol', type=float, default=1e-6)
  parser.add_argument('--quick', action='store_true', help='2 kills of a 30-step run.')
  args = parser.parse_args(argv)
  if args.quick:
    args.kills, args.max_global_steps, args.eval_period_steps = 2, 30, 10
  return args


def run_command(args: argparse.Namespace, experiment_dir: str, resume: bool) -> List[str]:
  command = [args.kfac_bench, 'run', f'--workload={args.workload}',
             f'--submission_path={args.submission_path}',
             f'--tuning_search_space={args.tuning_search_space}', '--num_tuning_trials=1',
             f'--experiment_dir={experiment_dir}', '--experiment_name=kill_resume',
             f'--rng_seed={args.rng_seed}', f'--max_global_steps={args.max_global_steps}',
             f'--eval_period_steps={args.eval_period_steps}']
  return command + (['--resume_last_run'] if resume else [])


def start(command: List[str], log_path: str) -> subprocess.Popen:
  """Starts `command` in its own process group (killed whole), its output appended to a log."""
  with open(log_path, 'a') as log:
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def trial_files(experiment_dir: str) -> Tuple[str, str]:
  """The (only) trial's `eval_measurements.csv` and `trial_summary.json`."""
  found = glob.glob(os.path.join(experiment_dir, '**', 'eval_measurements.csv'), recursive=True)
  if len(found) != 1:
    raise SystemExit(f'expected one eval_measurements.csv under {experiment_dir}, found {found}')
  return found[0], os.path.join(os.path.dirname(found[0]), 'trial_summary.json')


def read_rows(path: str) -> Tuple[List[str], List[List[str]]]:
  with open(path, newline='') as f:
    lines = list(csv.reader(f))
  return lines[0], lines[1:]


def close(a: str, b: str, rtol: float, atol: float) -> bool:
  try:
    x, y = float(a), float(b)
  except ValueError:
    return a == b
  return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rtol, abs_tol=atol)


def _untimed(value):
  """`value` without the time columns when it is a mapping (`final_metrics` is a CSV row)."""
  if isinstance(value, dict):
    return {k: v for k, v in value.items() if k not in IGNORED_COLUMNS}
  return value


def compare(reference_dir: str, resumed_dir: str, rtol: float, atol: float) -> List[str]:
  """Every difference between the clean and the resumed run, one line each (empty: equal)."""
  problems = []
  (header, ref_rows), (resumed_header, rows) = (read_rows(trial_files(d)[0])
                                                for d in (reference_dir, resumed_dir))
  if header != resumed_header:
    return [f'columns differ: {header} vs {resumed_header}']
  torn = [i for i, row in enumerate(rows) if len(row) != len(header)]
  problems += [f'row {i} is torn ({len(rows[i])} of {len(header)} fields)' for i in torn]
  if len(ref_rows) != len(rows):
    problems.append(f'{len(rows)} evaluation rows, the clean run has {len(ref_rows)}')
  for i, (ref, row) in enumerate(zip(ref_rows, rows)):
    for column, a, b in zip(header, ref, row):
      if column not in IGNORED_COLUMNS and not close(a, b, rtol, atol):
        problems.append(f'row {i} column {column}: {b} vs clean {a}')
  with open(trial_files(reference_dir)[1]) as f, open(trial_files(resumed_dir)[1]) as g:
    ref_summary, summary = json.load(f), json.load(g)
  for key in SUMMARY_KEYS:
    if json.dumps(_untimed(ref_summary.get(key)), sort_keys=True) != json.dumps(
        _untimed(summary.get(key)), sort_keys=True):
      problems.append(f'summary {key}: {summary.get(key)} vs clean {ref_summary.get(key)}')
  return problems


def killed_round(args: argparse.Namespace, experiment_dir: str, kills_left: int, window: float,
                 rng: random.Random) -> Tuple[int, int, float]:
  """Runs one trial to its end with up to `kills_left` kills; returns (kills, starts, seconds
  of the last start, which finished)."""
  kills = starts = 0
  log_path = experiment_dir + '.log'
  while True:
    process = start(run_command(args, experiment_dir, resume=True), log_path)
    started, starts = time.monotonic(), starts + 1
    deadline = time.monotonic() + (rng.uniform(0.0, window) if kills < kills_left else math.inf)
    while process.poll() is None and time.monotonic() < deadline:
      time.sleep(0.01)
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      kills += 1
      continue
    if process.returncode != 0:
      with open(log_path) as f:
        tail = f.read()[-3000:]
      if NO_RESUME_FLAG in tail and 'flag' in tail.lower():
        print(f'kfac-bench run has no --{NO_RESUME_FLAG} yet: the runner does not checkpoint '
              f'(integration of benchmark/checkpoint.py pending).')
        raise SystemExit(2)
      raise SystemExit(f'a resumed run failed (exit {process.returncode}); log {log_path}:\n{tail}')
    return kills, starts, time.monotonic() - started


def main(argv: Optional[List[str]] = None) -> int:
  args = parse_args(argv)
  rng = random.Random(args.seed)
  shutil.rmtree(args.work_dir, ignore_errors=True)
  os.makedirs(args.work_dir)
  reference_dir = os.path.join(args.work_dir, 'reference')
  began = time.monotonic()
  clean = subprocess.run(run_command(args, reference_dir, resume=False), capture_output=True,
                         text=True)
  window = time.monotonic() - began
  if clean.returncode != 0:
    raise SystemExit(f'the clean run failed:\n{clean.stdout[-2000:]}{clean.stderr[-2000:]}')
  print(f'clean run: {window:.1f} s; kill moments drawn from [0, {window:.1f}] s', flush=True)
  kills = rounds = starts = 0
  failures: Dict[int, List[str]] = {}
  while kills < args.kills:
    experiment_dir = os.path.join(args.work_dir, f'round_{rounds}')
    round_kills, round_starts, last_run = killed_round(args, experiment_dir, args.kills - kills,
                                                       window, rng)
    if round_kills == 0:  # A whole run, unkilled.
      window = min(window, last_run)
    problems = compare(reference_dir, experiment_dir, args.rtol, args.atol)
    with open(trial_files(experiment_dir)[1]) as f:
      preemptions = json.load(f).get('preemption_count')
    print(f'round {rounds}: {round_kills} kills, {round_starts} starts, preemption_count '
          f'{preemptions}: ' + ('identical to the clean run' if not problems else
                                f'{len(problems)} differences'), flush=True)
    if problems:
      failures[rounds] = problems
    kills, starts, rounds = kills + round_kills, starts + round_starts, rounds + 1
  print(f'{kills} kills, {starts - rounds} resumes over {rounds} rounds: '
        + ('every evaluation row and the final metrics equal the clean run' if not failures else
           f'{len(failures)} rounds differ'))
  for round_index, problems in failures.items():
    for line in problems[:20]:
      print(f'  round {round_index}: {line}')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
