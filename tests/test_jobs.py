"""The packaged jobs (`make run`, `make study`): their search spaces and submissions resolve and
load for every workload, and bad input is one clear line."""

import json
import os
import subprocess
import sys

import pytest

import workloads
from benchmark import jobs, results, submission_loader, tuning
from benchmark.comparison import load_comparison
from contract.errors import BenchmarkError


@pytest.mark.parametrize('workload', sorted(workloads.WORKLOADS))
def test_every_job_submission_and_space_loads(workload):
  names = jobs.job_submissions(workload)
  assert names[0] == load_comparison().reference  # the reference trains first
  for name in names:
    submission = submission_loader.load_submission(
        os.path.join(jobs.workload_folder(workload), f'{name}.py'))
    assert submission.name == name
    for path in (jobs.tuned_space_path(workload, name), jobs.sweep_space_path(workload, name)):
      points = tuning.generate_trials(tuning.load_search_space(path), 2, seed=0)
      assert len(points) == 2 and all('learning_rate' in p for p in points)


def test_space_resolution_prefers_tuned_and_sweep_files():
  folder = jobs.workload_folder('ogbg', jobs.SEARCH_SPACE_DIR)
  assert jobs.tuned_space_path('ogbg', 'nesterov') == os.path.join(folder, 'nesterov_tuned.json')
  assert jobs.sweep_space_path('ogbg', 'nesterov') == os.path.join(folder, 'nesterov_sweep.json')
  assert jobs.sweep_space_path('ogbg', 'kfac_reduce') == os.path.join(folder, 'kfac_reduce.json')
  with pytest.raises(BenchmarkError, match='no search space file'):
    jobs.sweep_space_path('ogbg', 'adam')
  with pytest.raises(BenchmarkError, match="unknown workload 'mnist'"):
    jobs.job_submissions('mnist')


@pytest.mark.parametrize('script,args,message', [
    ('scripts/run_study.py', ['--workload=mnist'], "make study: error: unknown workload 'mnist'"),
    ('scripts/run_default.py', ['--workload=cifar', '--config=huge'],
     "make run: error: unknown config 'huge'"),
])
def test_job_scripts_report_bad_input_in_one_line(script, args, message):
  done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 2
  assert message in done.stderr and 'Traceback' not in done.stderr


def test_run_workload_job_trains_with_the_seed_and_cap_it_is_given(tmp_path):
  root = jobs.run_workload_job(
      'ogbg', 'tiny', space_path=jobs.tuned_space_path, experiment_dir=str(tmp_path),
      experiment_name=lambda workload: f'job_{workload.variant_name}', step_caps={},
      names=['nesterov'], max_global_steps=2, rng_seed=7)
  assert root == os.path.join(str(tmp_path), 'job_ogbg_tiny')
  trial_dir = results.trial_dir(os.path.join(root, 'nesterov'), 0, 'ogbg_tiny', 1)
  with open(os.path.join(trial_dir, results.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert summary['global_steps'] == 2 and summary['rng_seed'] == 7  # study 0, trial 1: the seed
