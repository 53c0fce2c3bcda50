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


SUBMISSION = '--submission_path=submissions/ogbg_molpcba/nesterov.py'
SPACE = '--tuning_search_space=tuning_search_spaces/ogbg_molpcba/nesterov.json'


@pytest.mark.parametrize('args, message', [
    (['frobnicate'], "unknown command 'frobnicate'"),
    (['run', '--workload=mnist_mlp'], "unknown workload 'mnist_mlp'"),
    (['describe', '--workload=ogbg', '--config=huge'], "unknown config 'huge'"),
    (['describe', '--workload=ogbg_tiny', '--config=small'], "names config 'tiny'"),
    (['run', '--workload=ogbg_tiny', '--submission_path=submissions/ogbg_molpcba/missing.py',
      SPACE], 'does not exist'),
    (['run', '--workload=ogbg', '--data_dir=/no/such/dir', SUBMISSION, SPACE],
     "data directory '/no/such/dir' does not exist"),
    (['run', '--workload=ogbg', SUBMISSION, SPACE], 'needs --data_dir'),
    (['run', '--workload=ogbg_tiny', '--framework=pytorch', SUBMISSION, SPACE],
     'only jax submissions run here'),
    (['run', '--workload=ogbg_tiny', '--tuning_ruleset=self', SUBMISSION, SPACE],
     'takes no --tuning_search_space'),
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
    result = kfac_bench('run', '--workload=ogbg_tiny', '--framework=jax',
                        f'--submission_path={submission}', f'--tuning_search_space={search_space}',
                        f'--experiment_dir={tmp_path}')
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('workload, num_params, num_arrays', [
    ('ogbg', 3_554_176, 66),
    ('imagenet_vit', 22_122_472, 200),
])
def test_describe_full_configs(workload, num_params, num_arrays):
  # Upstream's names are the full configs; the CLI prints only what the user asked for (no XLA
  # "Unable to initialize backend 'tpu'" line on a CPU machine).
  result = kfac_bench('describe', f'--workload={workload}', '--format=json')
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert json.loads(result.stdout)['config'] == 'full'
  described = json.loads(result.stdout)
  assert described['num_params'] == num_params
  assert described['num_param_arrays'] == num_arrays
  assert described['data_source'] == 'tfds'
  for key in ('target_metric_name', 'validation_target_value', 'step_hint', 'batch_size',
              'num_train_examples', 'num_validation_examples', 'num_test_examples'):
    assert key in described
