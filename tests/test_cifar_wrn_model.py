"""The Wide ResNet: parameter counts by hand, shapes, names, BatchNorm state in train and eval."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from workloads import get_workload
from workloads.cifar_wrn import configs
from workloads.cifar_wrn.model import WideResNet
from contract import types as api_types


def wrn_param_count(depth, widen_factor, num_classes):
  """By hand from the architecture: a bias-free 3x3 stem conv 3->16; per block BN(in) (scale and
  bias), 3x3 conv in->out, BN(out), 3x3 conv out->out and a 1x1 projection when in != out; a
  final BN; a Dense head with bias."""
  blocks = (depth - 4) // 6
  count = 3 * 3 * 3 * 16
  channels_in = 16
  for width in (16 * widen_factor, 32 * widen_factor, 64 * widen_factor):
    for _ in range(blocks):
      count += 2 * channels_in + 9 * channels_in * width + 2 * width + 9 * width * width
      if channels_in != width:
        count += channels_in * width
      channels_in = width
  return count + 2 * channels_in + channels_in * num_classes + num_classes


def abstract_variables(depth, widen_factor, num_classes=10):
  model = WideResNet(depth=depth, widen_factor=widen_factor, num_classes=num_classes)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_full_config_is_wrn_16_4_with_2_748_890_parameters():
  model = configs.get_config('full').model
  assert (model.depth, model.widen_factor, model.num_classes) == (16, 4, 10)
  variables = abstract_variables(16, 4)
  leaves = jax.tree.leaves(variables['params'])
  assert sum(leaf.size for leaf in leaves) == wrn_param_count(16, 4, 10) == 2_748_890
  assert len(leaves) == 44


@pytest.mark.parametrize('depth,widen_factor', [(10, 1), (16, 1), (22, 2), (28, 10)])
def test_other_sizes_match_the_hand_count(depth, widen_factor):
  params = abstract_variables(depth, widen_factor)['params']
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == wrn_param_count(
      depth, widen_factor, 10)


def test_wrn_28_10_has_the_papers_36_5_million_parameters():
  assert round(wrn_param_count(28, 10, 10) / 1e6, 1) == 36.5  # Zagoruyko & Komodakis, Table 5


def test_bad_depth_is_refused():
  with pytest.raises(ValueError, match='6n \\+ 4'):
    abstract_variables(12, 1)


def test_every_weight_layer_is_called_once_under_its_parameter_path():
  model = WideResNet(depth=10, widen_factor=2, num_classes=10)
  images = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(context.module, (nn.Dense, nn.Conv)):
      calls.append(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):  # Tracing suffices: the calls are recorded at trace time.
    jax.eval_shape(functools.partial(model.apply, train=True, mutable=['batch_stats']),
                   variables, images)
  kernel_paths = {path[:-1] for path in flatten_dict(variables['params'])
                  if path[-1] == 'kernel'}
  assert len(calls) == len(set(calls)) == len(kernel_paths)
  assert set(calls) == kernel_paths


@pytest.fixture(scope='module')
def tiny():
  workload = get_workload('cifar', 'tiny')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  batch = {'inputs': 1.0 + jax.random.normal(jax.random.PRNGKey(1), (6, 32, 32, 3))}
  return workload, params, model_state, batch


def test_model_state_holds_batch_norm_statistics(tiny):
  workload, params, model_state, batch = tiny
  assert set(model_state) == {'batch_stats'}
  assert set(flatten_dict(model_state['batch_stats'])) == {
      path[:-1] + (stat,) for path in flatten_dict(params) if 'BatchNorm' in path[-2]
      and path[-1] == 'scale' for stat in ('mean', 'var')}
  logits, _ = workload.model_fn(params, batch, model_state, api_types.ForwardPassMode.EVAL, None,
                                False)
  assert logits.shape == (6, 10)
  types = jax.tree.leaves(workload.model_params_types)
  assert types.count(api_types.ParameterType.CONV_WEIGHT) == 9  # stem, 3 x 2 convs, 2 projections
  assert types.count(api_types.ParameterType.BATCH_NORM_SCALE) == 7
  assert workload.is_output_params(('head', 'bias'))


def test_train_mode_updates_running_statistics_only_when_asked(tiny):
  workload, params, model_state, batch = tiny
  train = api_types.ForwardPassMode.TRAIN
  logits, updated = workload.model_fn(params, batch, model_state, train, None, True)
  # The first BatchNorm normalises the stem conv output: its running mean moves to
  # 0.9 * 0 + 0.1 * batch mean, its variance to 0.9 * 1 + 0.1 * batch variance.
  stem = jax.lax.conv_general_dilated(batch['inputs'], params['Conv_stem']['kernel'], (1, 1),
                                      'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  first = updated['batch_stats']['group_0_block_0']['BatchNorm_0']
  np.testing.assert_allclose(first['mean'], 0.1 * stem.mean(axis=(0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(first['var'], 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4)
  for before, after in zip(jax.tree.leaves(model_state), jax.tree.leaves(updated)):
    assert not np.allclose(before, after)
  same_logits, kept = workload.model_fn(params, batch, model_state, train, None, False)
  np.testing.assert_allclose(same_logits, logits, rtol=1e-5, atol=1e-5)
  assert kept is model_state


def test_eval_mode_uses_running_statistics_and_keeps_the_state(tiny):
  workload, params, model_state, batch = tiny
  evaluate = api_types.ForwardPassMode.EVAL
  logits, kept = workload.model_fn(params, batch, model_state, evaluate, None, True)
  assert kept is model_state
  alone, _ = workload.model_fn(params, {'inputs': batch['inputs'][:1]}, model_state, evaluate,
                               None, False)
  np.testing.assert_allclose(alone, logits[:1], rtol=1e-4, atol=1e-5)
  train_logits, _ = workload.model_fn(params, batch, model_state, api_types.ForwardPassMode.TRAIN,
                                      None, False)
  assert not np.allclose(train_logits, logits, atol=1e-3)
