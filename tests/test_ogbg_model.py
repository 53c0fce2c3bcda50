"""ogbg-molpcba GraphNetwork: AlgoPerf's parameter count and names, one call per Dense, dropout
only in training, padding invariance of loss and metric, jitted evaluation."""
# pylint: disable=protected-access

from __future__ import annotations

import collections
import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from workloads.ogbg_molpcba import input_pipeline, metrics, model
from workloads.ogbg_molpcba.workload import OgbgMolpcbaWorkload
from contract import types as api_types

# AlgoPerf's ogbg GNN (DESIGN section 3): 3,554,176 parameters in 66 arrays.
FULL_NUM_PARAMS = 3_554_176
FULL_NUM_ARRAYS = 66


@pytest.fixture(scope='module')
def tiny():
  workload = OgbgMolpcbaWorkload('tiny')
  params, _ = workload.init_model_fn(jax.random.PRNGKey(0))
  return workload, params


@pytest.fixture(scope='module')
def tiny_batch(tiny):
  workload, _ = tiny
  return next(workload.build_input_queue(jax.random.PRNGKey(0), 'train', None, 32))


def test_full_model_has_algoperf_parameter_count_and_names(tmp_path):
  workload = OgbgMolpcbaWorkload('full', data_dir=str(tmp_path), data_source='tfds')
  # Shapes only: tracing init_model_fn sets param_shapes/types without compiling 3.5M params.
  params, model_state = jax.eval_shape(workload.init_model_fn, jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(params)
  assert model_state is None
  assert sum(x.size for x in leaves) == FULL_NUM_PARAMS
  assert len(leaves) == FULL_NUM_ARRAYS
  expected_modules = ({'node_embedding', 'edge_embedding'} | {f'Dense_{i}' for i in range(16)}
                      | {f'LayerNorm_{i}' for i in range(15)})
  assert set(params) == expected_modules
  assert params['node_embedding']['kernel'].shape == (9, 256)
  assert params['edge_embedding']['kernel'].shape == (3, 256)
  # First edge MLP: [edge 256, sender 256, receiver 256, globals 128] -> 256.
  assert params['Dense_0']['kernel'].shape == (896, 256)
  assert params['Dense_15']['kernel'].shape == (256, 128)
  assert workload.is_output_params(('Dense_15', 'kernel'))
  assert not workload.is_output_params(('Dense_14', 'kernel'))
  assert workload.param_shapes['Dense_15']['bias'].shape_tuple == (128,)


def test_parameter_types(tiny):
  workload, _ = tiny
  types = workload.model_params_types
  assert types['node_embedding']['kernel'] == api_types.ParameterType.EMBEDDING
  assert types['Dense_0']['kernel'] == api_types.ParameterType.WEIGHT
  assert types['Dense_0']['bias'] == api_types.ParameterType.BIAS
  assert types['LayerNorm_0']['scale'] == api_types.ParameterType.LAYER_NORM_SCALE
  assert types['LayerNorm_0']['bias'] == api_types.ParameterType.LAYER_NORM_BIAS


def test_every_dense_is_called_once_and_maps_to_its_parameters():
  small = OgbgMolpcbaWorkload('small')
  params, _ = jax.eval_shape(small.init_model_fn, jax.random.PRNGKey(0))
  batch = next(small.build_input_queue(jax.random.PRNGKey(0), 'train', None, 16))
  calls = collections.Counter()

  def count_dense_calls(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
      calls[context.module.path] += 1
    return next_fun(*args, **kwargs)

  def train_logits(p):
    return small.model_fn(p, batch, None, api_types.ForwardPassMode.TRAIN, jax.random.PRNGKey(1),
                          update_batch_norm=False)[0]

  with nn.intercept_methods(count_dense_calls):
    jax.eval_shape(train_logits, params)  # One trace = one forward pass.
  assert set(calls.values()) == {1}
  dense_params = {name for name in params if 'kernel' in params[name]}
  assert {path[-1] for path in calls} == dense_params
  steps, hidden = (small.config.model.num_message_passing_steps, small.config.model.hidden_dims)
  assert len(dense_params) == 2 + steps * 3 * len(hidden) + 1
  assert small.is_output_params((model.decoder_name(steps, hidden), 'kernel'))


def test_dropout_only_in_training(tiny, tiny_batch):
  workload, params = tiny

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def model_logits(mode, rng, dropout_rate):
    return workload.model_fn(params, tiny_batch, None, mode, rng, False, dropout_rate)[0]

  def logits(mode, rng, dropout_rate=None):
    return np.asarray(model_logits(mode, rng, dropout_rate))

  train = api_types.ForwardPassMode.TRAIN
  evaluation = api_types.ForwardPassMode.EVAL
  key_a, key_b = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  assert logits(train, key_a).shape == (33, workload.num_tasks)
  assert not np.allclose(logits(train, key_a), logits(train, key_b))
  np.testing.assert_array_equal(logits(evaluation, key_a), logits(evaluation, key_b))
  np.testing.assert_allclose(logits(train, key_a, dropout_rate=0.0), logits(evaluation, key_b),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='no model state'):
    workload.model_fn(params, tiny_batch, {'batch_stats': {}}, evaluation, None, False)


def test_loss_and_metric_are_invariant_to_padding(tiny):
  workload, params = tiny
  data = workload._embedded_data()
  examples = [data.example(int(i)) for i in data.split_indices('validation')[:10]]
  results = []
  for batch_size in (12, 40):
    budget = workload.padding_budget(batch_size)
    (batch,) = list(input_pipeline.batch_examples(examples, budget))
    assert batch['weights'].any(axis=1).sum() == len(examples)  # All in one batch.
    logits, summed, n_valid = workload._eval_outputs(params, batch)
    results.append({
        'logits': np.asarray(logits)[:len(examples)],
        'summed': float(summed),
        'n_valid': float(n_valid),
        'map': metrics.mean_average_precision(batch['targets'], np.asarray(logits),
                                              batch['weights']),
    })
  small_pad, large_pad = results
  np.testing.assert_allclose(small_pad['logits'], large_pad['logits'], rtol=1e-5, atol=1e-5)
  assert small_pad['summed'] == pytest.approx(large_pad['summed'], rel=1e-5)
  assert small_pad['n_valid'] == large_pad['n_valid'] == 10 * workload.num_tasks
  assert small_pad['map'] == pytest.approx(large_pad['map'], abs=1e-12)


def test_eval_model_reports_loss_and_map_per_split_with_one_compilation(tiny):
  workload, params = tiny
  compiled_before = workload._eval_outputs._cache_size()
  results = workload.eval_model(workload.eval_batch_size, params, None, jax.random.PRNGKey(0),
                                None)
  for split in ('train', 'validation', 'test'):
    assert np.isfinite(results[f'{split}/loss'])
    assert 0.0 < results[f'{split}/mean_average_precision'] <= 1.0
  again = workload.eval_model(workload.eval_batch_size, params, None, jax.random.PRNGKey(1), None)
  assert again == results
  # The three splits share the padded shapes: one compilation for all evaluations.
  assert workload._eval_outputs._cache_size() == compiled_before + 1


def test_tiny_config_learns(tiny, tiny_batch):
  """A few Adam steps on one batch lower its masked loss: gradients reach every layer."""
  workload, params = tiny
  optimizer = optax.adam(1e-2)

  def mean_loss(p, rng):
    logits, _ = workload.model_fn(p, tiny_batch, None, api_types.ForwardPassMode.TRAIN, rng, False)
    losses = workload.loss_fn(tiny_batch['targets'], logits, tiny_batch['weights'])
    return losses['summed'] / losses['n_valid_examples']

  @jax.jit
  def step(p, state, rng):
    loss, grads = jax.value_and_grad(mean_loss)(p, rng)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, grads

  state = optimizer.init(params)
  p, state, first_loss, grads = step(params, state, jax.random.PRNGKey(0))
  assert all(float(np.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
  for i in range(1, 40):
    p, state, loss, _ = step(p, state, jax.random.PRNGKey(i))
  assert float(loss) < 0.8 * float(first_loss)
