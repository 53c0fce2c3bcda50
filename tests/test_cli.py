"""`kfac-bench` answers bad input with one clear line and a non-zero exit."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')


def kfac_bench(*args):
  return subprocess.run([sys.executable, '-m', 'benchmark.cli', *args], capture_output=True,
                        text=True, cwd=REPO, env=ENV, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['frobnicate'], "unknown command 'frobnicate'"),
    (['run', '--workload=mnist_mlp'], "unknown workload 'mnist_mlp'"),
    (['describe', '--workload=ogbg_molpcba', '--config=huge'], "unknown config 'huge'"),
    (['run', '--workload=ogbg_molpcba', '--config=tiny',
      '--submission_path=submissions/ogbg_molpcba/missing.py',
      '--tuning_search_space=tuning_search_spaces/ogbg_molpcba/nesterov.json'],
     'does not exist'),
    (['run', '--workload=ogbg_molpcba', '--config=full', '--data_dir=/no/such/dir',
      '--submission_path=submissions/ogbg_molpcba/nesterov.py',
      '--tuning_search_space=tuning_search_spaces/ogbg_molpcba/nesterov.json'],
     "data directory '/no/such/dir' does not exist"),
    (['run', '--workload=ogbg_molpcba', '--config=full',
      '--submission_path=submissions/ogbg_molpcba/nesterov.py',
      '--tuning_search_space=tuning_search_spaces/ogbg_molpcba/nesterov.json'],
     'needs --data_dir'),
    (['report', '/no/such/experiment'], 'does not exist'),
])
def test_bad_input_one_line(args, message):
  result = kfac_bench(*args)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('kfac-bench: error: ') and message in lines[0]
  assert 'Traceback' not in result.stderr


def test_malformed_search_space_and_submission(tmp_path):
  space = tmp_path / 'space.json'
  space.write_text('{"learning_rate": {"min": 1, "max": 0.1, "scaling": "log"}}')
  partial = tmp_path / 'partial.py'
  partial.write_text('def get_batch_size(name):\n  return 1\n')
  for submission, search_space, message in (
      ('submissions/ogbg_molpcba/nesterov.py', str(space), 'min 1 is greater than max 0.1'),
      (str(partial), 'tuning_search_spaces/ogbg_molpcba/nesterov.json', 'missing required')):
    result = kfac_bench('run', '--workload=ogbg_molpcba', '--config=tiny',
                        f'--submission_path={submission}', f'--tuning_search_space={search_space}',
                        f'--experiment_dir={tmp_path}')
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('workload, num_params, num_arrays', [
    ('ogbg_molpcba', 3_554_176, 66),
    ('imagenet_vit', 22_122_472, 200),
])
def test_describe_full_configs(workload, num_params, num_arrays):
  result = kfac_bench('describe', f'--workload={workload}', '--config=full', '--format=json')
  assert result.returncode == 0, result.stderr
  described = json.loads(result.stdout)
  assert described['num_params'] == num_params
  assert described['num_param_arrays'] == num_arrays
  assert described['data_source'] == 'tfds'
  for key in ('target_metric_name', 'validation_target_value', 'step_hint', 'batch_size',
              'num_train_examples', 'num_validation_examples', 'num_test_examples'):
    assert key in described
