"""Data-parallel training (issue 12): the same trial on 1 device and on 4 forced host devices.

A device count is fixed when jax starts (`--xla_force_host_platform_device_count`), so each run is
this file executed as a script in a subprocess (`run_trial_body`): a trial through the runner
(`benchmark.trial.run_trial`) with a step cap, whose last checkpoint gives the parameters and
whose summary gives the final evaluation metrics. Sums over devices are summed in another
order than on one device, so the runs agree to rounding, not bit for bit.

The Wide ResNet (batch norm over the global batch, ReLU) runs in float64: in float32 a rounding
change can put a ReLU input on the other side of 0, which flips that unit's gradient, and at
batch 16 one flipped unit moves the early layers' gradients by about 1 % (docs/scaling.md, "1
vs N devices"). float64 keeps every ReLU on its side and still tests what differs between device
counts: the batch split, synchronised batch statistics and the sharded evaluation. (K-FAC's
statistics stay float32, `kfac/layers.py`: the WRN K-FAC runs then agree to about 1e-8.)
ogbg is not compared: its grouping of molecules into batches depends on the device count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import workloads
from benchmark import results, submission_loader, trial
from benchmark.checkpoint import Checkpointer
from contract import sharding
from contract.errors import BenchmarkError
from kfac.blocks.kron import KronState
from workloads.ogbg_molpcba import embedded_data, input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
PARAMS_RTOL = 1e-4
METRICS_RTOL = 1e-3
NESTEROV = dict(learning_rate=0.01, one_minus_beta1=0.1, weight_decay=5e-4, warmup_factor=0.05,
                decay_steps_factor=0.9, end_factor=0.01, label_smoothing=0.0, dropout_rate=0.0)
KFAC_REDUCE = dict(NESTEROV, weight_decay=1e-5, damping=1e-2, cov_update_every=1,
                   inverse_update_every=3)
# Clipped as in WRN's search space: unclipped, this point takes the WRN's loss from 2.3 to 43-110
# in 10 steps, and the float32 statistics' rounding differences grow to 0.12 of a parameter.
WRN_KFAC_REDUCE = dict(KFAC_REDUCE, clip_update_norm=1.0)
CASES = {  # (workload, config, submission module, hyperparameters, in float64)
    'vit_nesterov': ('imagenet_vit', 'tiny', 'submissions/imagenet_vit/nesterov.py', NESTEROV,
                     False),
    'vit_kfac_reduce': ('imagenet_vit', 'tiny', 'submissions/imagenet_vit/kfac_reduce.py',
                        KFAC_REDUCE, False),
    'wrn_nesterov': ('cifar', 'tiny', 'submissions/cifar_wrn/nesterov.py', NESTEROV, True),
    'wrn_kfac_reduce': ('cifar', 'tiny', 'submissions/cifar_wrn/kfac_reduce.py',
                        WRN_KFAC_REDUCE, True),
}


def _flat(tree) -> np.ndarray:
  """The floating leaves of `tree`, raveled and concatenated."""
  return np.concatenate([np.zeros(0)] + [
      np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
      if np.issubdtype(np.asarray(leaf).dtype, np.floating)])


def _kronecker_factors(opt_state) -> list:
  """Every K-FAC block's averaged factors `(A, B)` in an optimiser state (not their
  eigenvectors: those are defined up to sign)."""
  nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda node: isinstance(node, KronState))
  return [(node.factor_a, node.factor_b) for node in nodes if isinstance(node, KronState)]


def _initialise_in_float64(workload) -> None:
  """Turns on float64 and casts `workload`'s initial parameters and model state to it; the
  float32 images are then promoted by the model's first layer (exactly)."""
  jax.config.update('jax_enable_x64', True)
  init_model_fn = workload.init_model_fn

  def init_in_float64(*args, **kwargs):
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(np.float64) if np.issubdtype(leaf.dtype, np.floating) else leaf,
        init_model_fn(*args, **kwargs))

  workload.init_model_fn = init_in_float64


def run_trial_body(case: str, out_dir: str) -> None:
  """Runs `CASES[case]` for `STEPS` steps in `out_dir`; writes `result.npz` (flattened params,
  final metrics)."""
  name, config, path, point, in_float64 = CASES[case]
  workload = workloads.get_workload(name, config)
  if in_float64:
    _initialise_in_float64(workload)
  submission = submission_loader.load_submission(os.path.join(ROOT, path))
  settings = trial.TrialSettings(rng_seed=0, max_global_steps=STEPS, eval_period_steps=STEPS,
                                 max_runtime_sec=1e6, stop_on_target=False)
  summary = trial.run_trial(workload, submission, point, out_dir, settings, log=lambda m: None)
  found = Checkpointer(os.path.join(out_dir, results.CHECKPOINTS_DIR)).latest()
  np.savez(os.path.join(out_dir, 'result.npz'), params=_flat(found.params),
           factors=_flat(_kronecker_factors(found.optimizer_state.opt_state)),
           devices=jax.device_count())
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump({'final_metrics': summary['final_metrics'], 'step': found.global_step}, f)


def _run(case: str, devices: int, out_dir: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  done = subprocess.run([sys.executable, __file__, case, out_dir], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = np.load(os.path.join(out_dir, 'result.npz'))
  assert int(result['devices']) == devices
  with open(os.path.join(out_dir, 'metrics.json')) as f:
    return dict(json.load(f), params=result['params'], factors=result['factors'])


def test_ogbg_shards_hold_whole_molecules_and_equal_per_device_batches():
  """Each quarter of a 4-shard batch is the per-device batch of its molecules (built
  independently by `padded_batch`), node indices offset into its own rows; the last, partial
  batch is completed with all-padding shards."""
  data = embedded_data.load_embedded_data()
  examples = list(input_pipeline.embedded_examples(data, 'validation', num_examples=37))
  budget = input_pipeline.padding_budget(4, 17, 34)
  batches = list(input_pipeline.batch_examples(examples, budget, num_shards=4))
  shards_alone = list(input_pipeline.shard_batches(examples, budget))
  assert len(batches) == -(-len(shards_alone) // 4)
  for index, batch in enumerate(batches):
    graph = batch['inputs']
    for shard in range(4):
      rows = {'nodes': slice(shard * budget.n_node, (shard + 1) * budget.n_node),
              'edges': slice(shard * budget.n_edge, (shard + 1) * budget.n_edge),
              'graphs': slice(shard * budget.n_graph, (shard + 1) * budget.n_graph)}
      alone_index = 4 * index + shard
      if alone_index >= len(shards_alone):  # Padding shard: no weight, no molecule.
        assert not batch['weights'][rows['graphs']].any()
        assert graph.n_node[rows['graphs']][0] == budget.n_node
        continue
      alone = shards_alone[alone_index]
      offset = shard * budget.n_node
      np.testing.assert_array_equal(graph.nodes[rows['nodes']], alone['inputs'].nodes)
      np.testing.assert_array_equal(graph.senders[rows['edges']] - offset, alone['inputs'].senders)
      np.testing.assert_array_equal(graph.receivers[rows['edges']] - offset,
                                    alone['inputs'].receivers)
      np.testing.assert_array_equal(graph.n_node[rows['graphs']], alone['inputs'].n_node)
      np.testing.assert_array_equal(batch['weights'][rows['graphs']], alone['weights'])
  assert graph.senders.dtype == graph.receivers.dtype == np.int32


def test_a_batch_size_that_does_not_divide_by_the_devices_is_an_error(monkeypatch):

  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  sharding.check_divisible(8)
  with pytest.raises(BenchmarkError, match='batch size 6 does not divide by the 4 devices'):
    sharding.check_divisible(6)


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(CASES))
def test_one_device_and_four_devices_train_alike(tmp_path, case):
  one = _run(case, 1, str(tmp_path / 'one'))
  four = _run(case, 4, str(tmp_path / 'four'))
  assert one['step'] == four['step'] == STEPS
  scale = np.max(np.abs(one['params']))
  np.testing.assert_allclose(four['params'], one['params'], rtol=PARAMS_RTOL,
                             atol=PARAMS_RTOL * scale)
  # K-FAC: the factors after STEPS statistics steps (MC samples: the same on 1 and 4 devices).
  assert (len(one['factors']) > 0) == case.endswith('kfac_reduce')
  if len(one['factors']):
    np.testing.assert_allclose(four['factors'], one['factors'], rtol=PARAMS_RTOL,
                               atol=PARAMS_RTOL * np.max(np.abs(one['factors'])))
  metrics = [key for key in one['final_metrics']
             if key.startswith(('train/', 'validation/', 'test/'))]
  assert metrics
  for key in metrics:
    value = one['final_metrics'][key]
    np.testing.assert_allclose(four['final_metrics'][key], value, rtol=METRICS_RTOL,
                               err_msg=key)


if __name__ == '__main__':
  run_trial_body(sys.argv[1], sys.argv[2])
