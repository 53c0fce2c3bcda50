"""The ViT model: AlgoPerf's ViT-S/16 size, shapes, names, position embeddings, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from workloads import get_workload
from workloads.image_classification import parameter_types
from workloads.imagenet_vit import configs
from workloads.imagenet_vit.model import ViT, sincos_position_embedding
from contract import types as api_types


def abstract_params(config_name):
  config = configs.get_config(config_name)
  size = config.image_size
  variables = jax.eval_shape(ViT(**config.model).init, jax.random.PRNGKey(0),
                             jnp.zeros((1, size, size, 3)))
  return variables


def vit_param_count(width, depth, mlp_dim, patch, num_classes):
  """By hand: patch conv, per block 2 LayerNorms + q/k/v/out (kernel and bias) + MLP, final
  LayerNorm, pre-logits Dense, head."""
  patch_embedding = patch * patch * 3 * width + width
  attention = 4 * (width * width + width)
  mlp = width * mlp_dim + mlp_dim + mlp_dim * width + width
  block = 2 * 2 * width + attention + mlp
  return (patch_embedding + depth * block + 2 * width + (width * width + width)
          + (width * num_classes + num_classes))


def test_full_config_is_vit_s16_with_22_122_472_parameters_in_200_arrays():
  variables = abstract_params('full')
  assert set(variables) == {'params'}
  leaves = jax.tree.leaves(variables['params'])
  assert sum(leaf.size for leaf in leaves) == 22_122_472
  assert len(leaves) == 200
  assert vit_param_count(384, 12, 1536, 16, 1000) == 22_122_472


@pytest.mark.parametrize('config_name', ['small', 'tiny'])
def test_smaller_configs_match_the_hand_count(config_name):
  model = configs.get_config(config_name).model
  leaves = jax.tree.leaves(abstract_params(config_name)['params'])
  assert sum(leaf.size for leaf in leaves) == vit_param_count(
      model.width, model.depth, model.mlp_dim, model.patch_size, model.num_classes)


def test_small_config_follows_the_issue():
  config = configs.get_config('small')
  assert config.image_size == 32 and config.model.patch_size == 4
  assert 64 <= config.model.width <= 128 and config.model.depth == 4
  assert config.model.num_heads == 4 and config.model.mlp_dim == 4 * config.model.width
  assert config.model.num_classes == 10


def test_parameter_types_cover_attention_norms_conv_and_dense():
  params = abstract_params('full')['params']
  types = jax.tree.leaves(parameter_types(params))
  count = {t: types.count(t) for t in set(types)}
  param_type = api_types.ParameterType
  for attention in (param_type.ATTENTION_Q, param_type.ATTENTION_K, param_type.ATTENTION_V,
                    param_type.ATTENTION_OUT):
    assert count[attention] == 12
  assert count[param_type.ATTENTION_BIAS] == 48
  assert count[param_type.LAYER_NORM_SCALE] == count[param_type.LAYER_NORM_BIAS] == 25
  assert count[param_type.CONV_WEIGHT] == 1
  assert count[param_type.WEIGHT] == 2 * 12 + 2  # MLP Dense layers, pre-logits, head
  assert count[param_type.BIAS] == 2 * 12 + 2 + 1


def test_every_weight_layer_is_called_once_under_its_parameter_path():
  """What the K-FAC capture relies on: one call per Dense/DenseGeneral/Conv, keyed by the
  module path, one-to-one with the kernels."""
  config = configs.get_config('tiny')
  model = ViT(**config.model)
  images = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params']
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(
        context.module, (nn.Dense, nn.DenseGeneral, nn.Conv)):
      calls.append(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):  # Tracing suffices: the calls are recorded at trace time.
    jax.eval_shape(model.apply, {'params': params}, images)
  kernel_paths = {path[:-1] for path in flatten_dict(params) if path[-1] == 'kernel'}
  assert len(calls) == len(set(calls)) == len(kernel_paths)
  assert set(calls) == kernel_paths
  assert ('Transformer', 'encoderblock_0', 'MultiHeadDotProductAttention_1', 'query') in calls


def test_sincos_position_embedding_matches_a_direct_loop():
  height, width, dim = 3, 4, 8
  embedding = np.asarray(sincos_position_embedding(height, width, dim))
  assert embedding.shape == (1, height * width, dim)
  quarter = dim // 4
  omega = [10_000.0 ** (-j / (quarter - 1)) for j in range(quarter)]
  for y in range(height):
    for x in range(width):
      expected = ([np.sin(x * o) for o in omega] + [np.cos(x * o) for o in omega]
                  + [np.sin(y * o) for o in omega] + [np.cos(y * o) for o in omega])
      np.testing.assert_allclose(embedding[0, y * width + x], expected, atol=1e-6)


@pytest.fixture(scope='module')
def tiny():
  workload = get_workload('imagenet_vit', 'tiny')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  return workload, params, model_state, images


def test_logits_shape_and_zero_initialised_head(tiny):
  workload, params, model_state, images = tiny
  assert model_state is None
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  logits, new_state = jax.jit(workload.model_fn, static_argnums=(3, 5))(
      params, {'inputs': images}, None, api_types.ForwardPassMode.EVAL, None, False)
  assert logits.shape == (4, 10) and new_state is None
  np.testing.assert_array_equal(logits, 0.0)
  assert workload.is_output_params(('head', 'kernel'))
  assert not workload.is_output_params(('pre_logits', 'kernel'))
  assert jax.tree.structure(workload.param_shapes) == jax.tree.structure(params)


def test_dropout_is_active_in_train_mode_only(tiny):
  workload, params, _, images = tiny
  params = jax.tree.map(lambda x: x + 0.1, params)  # a non-zero head
  train, evaluate = api_types.ForwardPassMode.TRAIN, api_types.ForwardPassMode.EVAL

  @jax.jit
  def all_logits(keys):
    def logits(mode, rng, rate):
      return workload.model_fn(params, {'inputs': images}, None, mode, rng, False,
                               dropout_rate=rate)[0]

    return (logits(train, keys[0], 0.5), logits(train, keys[1], 0.5),
            logits(train, keys[0], 0.0), logits(evaluate, None, 0.5))

  # Classic threefry: the dropout masks compile ~5x faster on CPU than with JAX's default.
  with jax.threefry_partitionable(False):
    dropped_0, dropped_1, no_dropout, evaluated = all_logits(
        jax.random.split(jax.random.PRNGKey(2)))
  assert not np.allclose(dropped_0, dropped_1)
  assert not np.allclose(dropped_0, no_dropout)
  np.testing.assert_allclose(no_dropout, evaluated, rtol=1e-5, atol=1e-6)
