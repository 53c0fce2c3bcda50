"""An upstream-style submission (`from algoperf import jax_sharding_utils, spec`) loads and trains
here unchanged, mapped onto the contract; a real `algoperf` package is used when installed."""

import csv
import os
import subprocess
import sys

import pytest

from benchmark import results, submission_loader, trial
from contract import spec as contract_spec
from contract.workload import Workload
from tests.fake_workload import FakeWorkload

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINT = {'learning_rate': 0.05, 'dropout_rate': 0.0, 'stop_after_steps': 15}


def test_upstream_style_submission_trains_and_ends_by_training_complete(tmp_path):
  submission = submission_loader.load_submission('tests/fake_upstream_submission.py')
  import algoperf
  from algoperf import jax_sharding_utils, spec
  assert spec is contract_spec and spec.Workload is Workload
  assert callable(jax_sharding_utils.get_replicate_sharding) and algoperf.spec is spec
  calls = submission.get_batch_size.__globals__['CALLS']
  result = trial.run_trial(FakeWorkload(target=0.9), submission, POINT, str(tmp_path),
                           trial.TrialSettings(rng_seed=0, max_global_steps=100),
                           log=lambda m: None)
  assert calls == ['fake_small', 'fake']  # the variant first, then the base name (upstream's)
  assert result['status'] == results.STATUS_COMPLETE and result['global_steps'] == 16
  with open(os.path.join(tmp_path, results.MEASUREMENTS_FILE)) as f:
    losses = [float(r['train/loss']) for r in csv.DictReader(f)]
  assert len(losses) == 2 and losses[1] < losses[0]  # Adam trained the regression


def test_a_real_algoperf_package_is_used_when_installed(tmp_path):
  package = tmp_path / 'algoperf'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'spec.py').write_text('REAL = True\n')
  code = ('from benchmark import submission_loader\n'
          'assert submission_loader.install_algoperf_names() is False\n'
          'from algoperf import spec\n'
          'assert spec.REAL\n')
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}', JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=120)
  assert done.returncode == 0, done.stderr
