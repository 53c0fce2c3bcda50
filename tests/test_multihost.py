"""Several processes (issue 12): `kfac-bench run` as 2 processes on localhost, each with 2 forced
host devices (CPU collectives), coordinated by `jax.distributed` from the CLI flags; process 0
alone writes the experiment's files and logs. Then the same trial as one process on 4 devices:
the same global batches, so the same evaluation metrics (to summation order).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from benchmark import load_results, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
METRICS_RTOL = 1e-3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(experiment_dir: str, *extra: str) -> list:
  return [sys.executable, '-m', 'benchmark.cli', 'run', '--workload=cifar_tiny',
          '--submission_path=submissions/cifar_wrn/nesterov.py',
          '--tuning_search_space=tuning_search_spaces/cifar_wrn/nesterov.json',
          f'--experiment_dir={experiment_dir}', '--experiment_name=multihost',
          f'--max_global_steps={STEPS}', f'--eval_period_steps={STEPS}',
          '--compilation_cache_dir=', *extra]


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _trial(experiment_dir: str) -> dict:
  (summary,) = load_results.load_trial_summaries(os.path.join(experiment_dir, 'multihost'))
  return summary


@pytest.mark.slow
def test_two_processes_train_like_one_and_only_process_0_writes(tmp_path):
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  port = _free_port()
  processes = [subprocess.Popen(
      _command(two, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
               f'--process_id={index}'), cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for index in range(2)]
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  assert 'study 0 trial 1/1' in outputs[0][0]
  assert 'study 0 trial' not in outputs[1][0]  # Process 1 logs nothing.
  done = subprocess.run(_command(one), cwd=ROOT, env=_env(4), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  trial_dir = results.trial_dir(os.path.join(two, 'multihost'), 0, 'cifar_tiny', 1)
  with open(os.path.join(trial_dir, results.meta_data_file(0))) as f:
    meta = json.load(f)
  assert (meta['num_processes'], meta['num_devices'], meta['process_index']) == (2, 4, 0)
  assert len(results.read_measurements(os.path.join(trial_dir, results.MEASUREMENTS_FILE))) == 1
  multi, single = _trial(two), _trial(one)
  assert multi['global_steps'] == single['global_steps'] == STEPS
  for key, value in single['final_metrics'].items():
    if key.startswith(('train/', 'validation/', 'test/')):
      np.testing.assert_allclose(multi['final_metrics'][key], value, rtol=METRICS_RTOL,
                                 err_msg=key)
