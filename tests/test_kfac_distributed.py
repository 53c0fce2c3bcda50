"""`kfac.distributed` on 4 forced host devices: the spread inverses equal the single-device ones,
each device decomposes only its share, the one-collective statistics equal the global batch's.

The device count is fixed when jax initialises, so the multi-device checks run in one subprocess
(`DEVICE_SCRIPT`, about 15 s) whose JSON result the tests read. The assignment's balance is
checked against a brute-force optimum in-process (no devices needed)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kfac import distributed

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 4
SIZES = [5, 17, 33, 9, 64, 3, 40, 12, 2]  # Factor A sides; B is about half (mixed sizes).
# Per-device examples (rows of x) and valid ones among them: uneven, one device without any.
SHARD_EXAMPLES = 6
VALID_PER_DEVICE = [6, 2, 0, 5]
# kfac.blocks inverse methods spread together (their invert functions as they are).
BLOCK_METHODS = ['eigh', 'pi_eigh', 'cholesky', 'rsvd', 'diagonal', 'mac']

DEVICE_SCRIPT = r'''
import json, re, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from kfac import distributed, distributed_statistics

from kfac import blocks

sizes, shard_examples, valid_per_device, block_methods = json.loads(sys.argv[1])
mesh = Mesh(jax.devices(), ('data',))
rng = np.random.default_rng(0)

def spd(n):
  x = rng.standard_normal((n, n)).astype(np.float32)
  return x @ x.T / n + 0.1 * np.eye(n, dtype=np.float32)

layers = [f'layer{i}' for i in range(len(sizes))]
states = {name: (spd(n), spd(max(2, n // 2))) for name, n in zip(layers, sizes)}
calls = []

def record(device, layer):
  calls.append((int(device), int(layer)))

def decompose(state, damping, index):  # Mixed result dtypes: the sharing must keep every bit.
  decompositions = tuple(jnp.linalg.eigh(f + damping * jnp.eye(f.shape[0])) for f in state)
  values = decompositions[0][0]
  return {'eigh': decompositions, 'bf16': values.astype(jnp.bfloat16),
          'count': jnp.int32(index + 7), 'finite': jnp.all(jnp.isfinite(values)),
          'factors': state}  # Passed through: stays on every device, not sent.

def make_invert(index):
  def invert(state, damping):
    jax.debug.callback(record, jax.lax.axis_index('data'), index)
    return decompose(state, damping, index)
  return invert

invert_fns = {name: make_invert(i) for i, name in enumerate(layers)}
replicated = jax.device_put(states, NamedSharding(mesh, P()))
damping = jnp.float32(0.05)

def spread_invert(states, damping):
  return distributed.distributed_invert(invert_fns, states, mesh, 'data', damping)

shapes = jax.eval_shape(spread_invert, replicated, damping)

@jax.jit
def gated(states, damping, due):  # As kfac.curvature calls it: behind a lax.cond.
  return jax.lax.cond(due, lambda s: spread_invert(s, damping),
                      lambda s: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype),
                                                       shapes), states)

compiled = gated.lower(replicated, damping, True).compile()
hlo = compiled.as_text()
spread = jax.block_until_ready(compiled(replicated, damping, True))
jax.effects_barrier()
calls_spread = list(calls)
# The one all-reduce carries the new leaves only: eigh results, bf16, count and flag (1 word
# each), not the passed-through factors.
sent_words = [int(words) for words in re.findall(r'u32\[(\d+)\]\{0\} all-reduce\(', hlo)]
new_words = sum(f.shape[0] * (f.shape[0] + 1) for state in states.values() for f in state) + sum(
    state[0].shape[0] + 2 for state in states.values())  # bf16 widened to one word each.

one_device = jax.devices()[0]  # The single-device inverses: no shard_map, no mesh.
reference = jax.jit(lambda s, d: {n: decompose(s[n], d, i) for i, n in enumerate(layers)})(
    jax.device_put(states, one_device), damping)

# The project's own blocks, several kinds in one spread inverse step (states after one update).
block_fns, block_states, block_objects = {}, {}, {}
for index, method in enumerate(block_methods):
  dim_a, dim_b = 6 + 5 * index, 4 + 3 * index
  block = blocks.make_block(method, dim_a, dim_b, blocks.BlockOptions(rank=3))
  rows = blocks.LayerStatistics(rng.standard_normal((10, dim_a)).astype(np.float32) / 3,
                                rng.standard_normal((10, dim_b)).astype(np.float32) / 3,
                                rng.standard_normal(dim_a).astype(np.float32))
  block_states[method] = block.update(block.init(), block.statistics(rows), jnp.float32(1.0))
  block_fns[method] = block.invert
  block_objects[(method,)] = block
spread_blocks = jax.jit(lambda s, d: distributed.distributed_invert(block_fns, s, mesh, 'data', d))(
    jax.device_put(block_states, NamedSharding(mesh, P())), damping)
single_blocks = jax.jit(lambda s, d: {m: block_fns[m](s[m], d) for m in block_methods})(
    jax.device_put(block_states, one_device), damping)
blocks_error = {m: max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                       for a, b in zip(jax.tree_util.tree_leaves(spread_blocks[m]),
                                       jax.tree_util.tree_leaves(single_blocks[m])))
                for m in block_methods}

# kfac.curvature's inverse step with a mesh (spread) and without, on the same blocks.
from kfac import curvature
config = curvature.CurvatureConfig(blocks=block_objects, damping=0.05)
curvature_state = curvature.init_curvature_state(config)._replace(
    blocks={(m,): block_states[m] for m in block_methods},
    counts={(m,): jnp.int32(1) for m in block_methods})
spread_state = jax.jit(lambda s: curvature.update_inverses(
    s, config._replace(mesh=mesh, axis_name='data')))(
        jax.device_put(curvature_state, NamedSharding(mesh, P())))
single_state = jax.jit(lambda s: curvature.update_inverses(s, config))(
    jax.device_put(curvature_state, one_device))
curvature_error = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                      for a, b in zip(jax.tree_util.tree_leaves(spread_state),
                                      jax.tree_util.tree_leaves(single_state)))

# kfac.curvature's statistics step with a mesh: the additive blocks' statistics (Gram matrices,
# diagonals) from each device's chunk of the rows, summed in one all-reduce for all layers; the
# others (Brand's rows, MAC's mean) from the whole rows. Against the same step on one device.
statistics_methods = ['eigh', 'cholesky', 'diagonal', 'identity', 'rsvd', 'mac_input', 'brand',
                      'mac']
num_devices = len(jax.devices())
statistics_blocks, statistics_rows = {}, {}
for index, method in enumerate(statistics_methods):
  dim_a, dim_b = 5 + 3 * index, 3 + 2 * index
  statistics_blocks[(method,)] = blocks.make_block(method, dim_a, dim_b, blocks.BlockOptions(rank=3))
  statistics_rows[(method,)] = blocks.LayerStatistics(  # 2 MC samples: twice the g rows.
      rng.standard_normal((3 * num_devices, dim_a)).astype(np.float32) / 3,
      rng.standard_normal((6 * num_devices, dim_b)).astype(np.float32) / 3,
      rng.standard_normal(dim_a).astype(np.float32))
statistics_config = curvature.CurvatureConfig(blocks=statistics_blocks, damping=0.05)
rows_sharding = blocks.LayerStatistics(NamedSharding(mesh, P('data')), NamedSharding(mesh, P('data')),
                                       NamedSharding(mesh, P()))
sharded_rows = {path: jax.device_put(rows, rows_sharding) for path, rows in statistics_rows.items()}
initial = curvature.init_curvature_state(statistics_config)
spread_statistics_step = jax.jit(lambda s, r: curvature.update_statistics(
    s, r, statistics_config._replace(mesh=mesh, axis_name='data'))).lower(
        jax.device_put(initial, NamedSharding(mesh, P())), sharded_rows).compile()
statistics_step_hlo = spread_statistics_step.as_text()
spread_statistics_state = spread_statistics_step(jax.device_put(initial, NamedSharding(mesh, P())),
                                                 sharded_rows)
single_statistics_state = jax.jit(lambda s, r: curvature.update_statistics(s, r, statistics_config))(
    jax.device_put(initial, one_device), jax.device_put(statistics_rows, one_device))
statistics_step_error = {
    path[0]: max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                 for a, b in zip(jax.tree_util.tree_leaves(spread_statistics_state.blocks[path]),
                                 jax.tree_util.tree_leaves(single_statistics_state.blocks[path])))
    for path in statistics_blocks}
additive_floats = sum(
    int(np.prod(leaf.shape)) for path, block in statistics_blocks.items() if block.additive
    for leaf in jax.tree_util.tree_leaves(jax.eval_shape(block.statistics, statistics_rows[path])))
# Result shapes of each all-reduce (XLA may merge independent ones into one tuple all-reduce).
summed_floats = [int(n) for shapes in re.findall(r'= (.*) all-reduce\(', statistics_step_hlo)
                 for n in re.findall(r'f32\[(\d+)\]\{0\}', shapes)]

def max_error(get):
  return max(float(np.max(np.abs(np.asarray(get(spread[n]), np.float64) -
                                 np.asarray(get(reference[n]), np.float64)))) for n in layers)

# Eigenvectors are defined up to sign: compare Q diag(w) Q^T and the eigenvalues.
def rebuilt(side):
  return lambda r: (r['eigh'][side][1] * r['eigh'][side][0]) @ r['eigh'][side][1].T

# Statistics: means over each device's valid examples, reduced with one all-reduce.
dim = 7
x = rng.standard_normal((len(jax.devices()) * shard_examples, dim)).astype(np.float32)
mask = np.zeros(len(x), np.float32)
for device, valid in enumerate(valid_per_device):
  mask[device * shard_examples: device * shard_examples + valid] = 1
x[mask == 0] = np.nan  # Padding must not leak (0/0 on the device without valid examples).

def shard_statistics(scale, batch):
  rows, weights, node_weights = batch
  rows = jnp.where(weights[:, None] > 0, rows, 0.0)
  n = jnp.sum(weights)
  with_bias = jnp.concatenate([rows, weights[:, None]], axis=1)
  # A second layer averaging over other units (say, valid nodes: 0 to 3 per example).
  nodes = jnp.sum(node_weights)
  return ({'a': (scale * with_bias.T @ with_bias / n, jnp.sum(rows, 0) / n),
           'nodes': (node_weights * rows[:, 0]) @ rows / nodes},
          {'a': n, 'nodes': nodes})

statistics_fn = jax.jit(distributed_statistics.sharded_mean_statistics(
    shard_statistics, mesh, 'data', (P(), P('data'))))
node_weights = rng.integers(0, 4, len(x)).astype(np.float32) * mask
batch = jax.device_put((x, mask, node_weights), NamedSharding(mesh, P('data')))
compiled_statistics = statistics_fn.lower(jnp.float32(2.0), batch).compile()
stats_hlo = compiled_statistics.as_text()
stats, counts = compiled_statistics(jnp.float32(2.0), batch)
valid = x[mask > 0].astype(np.float64)
node_valid = node_weights[mask > 0]
valid_bias = np.concatenate([valid, np.ones((len(valid), 1))], axis=1)

# The project's statistics pass (K-FAC-reduce, type-2 Fisher: no sampling) on each shard of an
# MLP's batch, averaged once, against the same pass on the whole batch.
import functools
import flax.linen as nn
from kfac import factors

class MLP(nn.Module):
  @nn.compact
  def __call__(self, inputs):
    return nn.Dense(3)(nn.tanh(nn.Dense(5)(inputs)))

compute_factors = functools.partial(factors.compute_factors, MLP().apply,
                                    loss='softmax_cross_entropy', flavour='reduce',
                                    fisher_type='type2')
labels = rng.integers(0, 3, len(x))
clean = np.where(mask[:, None] > 0, x, 0.0).astype(np.float32)[:, :4]
mlp_params = MLP().init(jax.random.PRNGKey(0), clean[:2])
whole = jax.jit(compute_factors)(mlp_params, clean, labels, mask=mask)
sharded_factors = jax.jit(distributed_statistics.sharded_mean_statistics(
    lambda params, b: (compute_factors(params, b[0], b[1], mask=b[2]), jnp.sum(b[2])),
    mesh, 'data', (P(), P('data'))))
spread_factors, _ = sharded_factors(mlp_params, jax.device_put(
    (clean, labels, mask), NamedSharding(mesh, P('data'))))
kfac_factors_error = max(float(np.max(np.abs(a - b))) for a, b in zip(
    jax.tree_util.tree_leaves(spread_factors), jax.tree_util.tree_leaves(whole)))

print(json.dumps({
    'calls': sorted(calls_spread),
    'assignment': distributed.assign_layers(
        {n: distributed.layer_cost(states[n]) for n in layers}, len(jax.devices())),
    'values_error': max(max_error(lambda r, s=s: r['eigh'][s][0]) for s in (0, 1)),
    'rebuilt_error': max(max_error(rebuilt(s)) for s in (0, 1)),
    'bf16_equal': all(bool(np.array_equal(spread[n]['bf16'], reference[n]['bf16']))
                      for n in layers),
    'counts': [int(spread[n]['count']) for n in layers],
    'finite': [bool(spread[n]['finite']) for n in layers],
    'inverse_all_reduces': hlo.count(' all-reduce('),
    'sent_words': sent_words,
    'new_words': new_words,
    'factors_equal': all(bool(np.array_equal(spread[n]['factors'][i], states[n][i]))
                         for n in layers for i in (0, 1)),
    'statistics_all_reduces': stats_hlo.count(' all-reduce('),
    'count': float(counts['a']),
    'node_count': float(counts['nodes']),
    'nodes_error': float(np.max(np.abs(stats['nodes'] - (node_valid * valid[:, 0]) @ valid
                                       / node_valid.sum()))),
    'a_error': float(np.max(np.abs(stats['a'][0] - 2.0 * valid_bias.T @ valid_bias / len(valid)))),
    'mean_error': float(np.max(np.abs(stats['a'][1] - valid.mean(0)))),
    'replicated': bool(stats['a'][0].sharding.is_fully_replicated),
    'blocks_error': blocks_error,
    'curvature_error': curvature_error,
    'kfac_factors_error': kfac_factors_error,
    'statistics_step_error': statistics_step_error,
    'statistics_step_all_reduces': statistics_step_hlo.count(' all-reduce('),
    'summed_floats': summed_floats,
    'additive_floats': additive_floats,
    'additive': sorted(path[0] for path, block in statistics_blocks.items() if block.additive),
}))
'''


@pytest.fixture(scope='module')
def device_run():
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={NUM_DEVICES}',
             JAX_PLATFORMS='cpu')
  done = subprocess.run(
      [sys.executable, '-c', DEVICE_SCRIPT,
       json.dumps([SIZES, SHARD_EXAMPLES, VALID_PER_DEVICE, BLOCK_METHODS])],
      capture_output=True, text=True, cwd=REPOSITORY, env=env, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_spread_inverses_equal_single_device(device_run):
  assert device_run['values_error'] < 1e-5
  assert device_run['rebuilt_error'] < 1e-5
  # Non-float results cross the all-reduce bit for bit.
  assert device_run['bf16_equal']
  assert device_run['counts'] == [index + 7 for index in range(len(SIZES))]
  assert all(device_run['finite'])


def test_spread_blocks_equal_single_device(device_run):
  assert sorted(device_run['blocks_error']) == sorted(BLOCK_METHODS)
  for method, error in device_run['blocks_error'].items():
    assert error < 1e-5, method


def test_curvature_inverse_step_with_a_mesh_equals_without(device_run):
  assert device_run['curvature_error'] < 1e-5


def test_each_device_decomposes_only_its_layers(device_run):
  layers = [f'layer{i}' for i in range(len(SIZES))]
  expected = sorted((device_run['assignment'][name], index) for index, name in enumerate(layers))
  assert [tuple(call) for call in device_run['calls']] == expected
  assert sorted(set(device_run['assignment'].values())) == list(range(NUM_DEVICES))


def test_one_all_reduce_per_step(device_run):
  assert device_run['inverse_all_reduces'] == 1
  # Passed-through leaves (the input factors) are not sent, yet every device has them.
  assert device_run['sent_words'] == [device_run['new_words']]
  assert device_run['factors_equal']
  assert device_run['statistics_all_reduces'] == 1


def test_curvature_statistics_step_one_all_reduce_equals_single_device(device_run):
  # Every block's state after a statistics step with a mesh equals the single-device one.
  for method, error in device_run['statistics_step_error'].items():
    assert error < 1e-5, method
  # The Gram-matrix blocks are additive; Brand (rows) and MAC (a replicated mean) are not.
  assert device_run['additive'] == sorted(['eigh', 'cholesky', 'diagonal', 'identity', 'rsvd',
                                           'mac_input'])
  # One all-reduce carries every additive layer's statistics as one flat buffer (XLA:CPU merges
  # the Brand block's few reductions of its sharded rows into the same tuple all-reduce).
  assert device_run['statistics_step_all_reduces'] == 1
  assert device_run['summed_floats'] == [device_run['additive_floats']]


def test_statistics_equal_global_batch_with_uneven_valid_counts(device_run):
  assert device_run['count'] == sum(VALID_PER_DEVICE)
  assert device_run['a_error'] < 1e-5
  assert device_run['mean_error'] < 1e-5
  # Per-layer counts: the node-averaged layer weighted by nodes, not examples.
  assert device_run['node_count'] > 0 and device_run['nodes_error'] < 1e-5
  assert device_run['replicated']


def test_sharded_kfac_factors_equal_global_batch(device_run):
  # kfac.factors.compute_factors per shard (a device without valid examples among them).
  assert device_run['kfac_factors_error'] < 1e-5


def brute_force_makespan(costs, num_devices):
  """The optimal maximum device load over all `num_devices ** len(costs)` assignments."""
  return min(max(np.bincount(choice, weights=costs, minlength=num_devices))
             for choice in itertools.product(range(num_devices), repeat=len(costs)))


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('num_devices', [2, 3])
def test_assignment_within_graham_bound_of_optimum(seed, num_devices):
  sides = np.random.default_rng(seed).integers(2, 200, size=8)
  costs = {f'layer{i}': float(side) ** 3 for i, side in enumerate(sides)}
  assignment = distributed.assign_layers(costs, num_devices)
  assert set(assignment) == set(costs)
  makespan = max(distributed.device_loads(assignment, costs, num_devices))
  optimum = brute_force_makespan(list(costs.values()), num_devices)
  assert optimum <= makespan <= (4 / 3 - 1 / (3 * num_devices)) * optimum + 1e-6


def test_assignment_examples():
  # LPT by hand: 8 -> d0, 7 -> d1, 6 -> d1 (13), 5 -> d0 (13), 4 -> d0 (tie: lowest index).
  # Loads 17 and 13 where 15 and 15 is optimal (8 + 7 | 6 + 5 + 4): greedy, within 7/6.
  costs = {'a': 4.0, 'b': 8.0, 'c': 5.0, 'd': 7.0, 'e': 6.0}
  assignment = distributed.assign_layers(costs, 2)
  assert assignment == {'a': 0, 'b': 0, 'c': 0, 'd': 1, 'e': 1}
  assert list(assignment) == list(costs)
  assert distributed.device_loads(assignment, costs, 2) == [17.0, 13.0]
  assert distributed.assign_layers(costs, 1) == dict.fromkeys(costs, 0)
  assert set(distributed.assign_layers({'a': 1.0}, 4).values()) == {0}
  with pytest.raises(ValueError, match='num_devices'):
    distributed.assign_layers(costs, 0)


def test_layer_cost_is_cubic_in_square_sides():
  state = (np.zeros((3, 3)), np.zeros((2, 5, 5)), np.zeros(9), np.zeros((4, 6)))
  assert distributed.layer_cost(state) == 27 + 2 * 125
