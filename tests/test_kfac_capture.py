"""Layer capture on unmodified Flax models: coverage report, parameter map, probes, shared
modules, graph row matching, jit and dtypes (kfac/capture.py)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import kfac
from kfac import capture, layers
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


class Mixed(nn.Module):
  """Every kind of layer K-FAC sees, and some it does not."""

  @nn.compact
  def __call__(self, tokens, image):
    x = nn.Embed(10, 4)(tokens)  # [N, L, 4]
    x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(nn.LayerNorm()(x))
    x = nn.DenseGeneral((2, 3), axis=(-2, -1))(x[:, :3])  # [N, 2, 3] from [N, 3, 4]
    y = nn.Conv(4, (3, 3), strides=2)(image)
    y = nn.BatchNorm(use_running_average=True)(y)
    y = nn.Conv(4, (1, 1), feature_group_count=2)(y)
    return nn.Dense(5)(jnp.concatenate([x.reshape(x.shape[0], -1), y.mean(axis=(1, 2))], -1))


@pytest.fixture(name='mixed', scope='module')
def fixture_mixed():
  """`(apply_fn, variable shapes, inputs)` of the `Mixed` model (shapes suffice for reports)."""
  tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  image = jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
  model = Mixed()

  def apply_fn(params, inputs):
    return model.apply(params, *inputs)

  return apply_fn, jax.eval_shape(model.init, jax.random.key(1), tokens, image), (tokens, image)


def test_report_covers_dense_densegeneral_conv_and_explains_the_rest(mixed):
  apply_fn, variables, inputs = mixed
  report = kfac.layer_report(apply_fn, variables, inputs)
  expected = {
      ('MultiHeadDotProductAttention_0', 'query'): ('dense_general', 4, 4, (4, 2, 2)),
      ('MultiHeadDotProductAttention_0', 'key'): ('dense_general', 4, 4, (4, 2, 2)),
      ('MultiHeadDotProductAttention_0', 'value'): ('dense_general', 4, 4, (4, 2, 2)),
      ('MultiHeadDotProductAttention_0', 'out'): ('dense_general', 4, 4, (2, 2, 4)),
      ('DenseGeneral_0',): ('dense_general', 12, 6, (3, 4, 2, 3)),
      ('Conv_0',): ('conv', 18, 4, (3, 3, 2, 4)),
      ('Dense_0',): ('dense', 10, 5, (10, 5)),
  }
  assert report.num_examples == 2
  assert {path: (info.kind, info.p_in, info.p_out, info.kernel_shape)
          for path, info in report.layers.items()} == expected
  params = variables['params']
  for path, info in report.layers.items():
    module = functools.reduce(lambda tree, name: tree[name], path, params)
    assert info.kernel_path == path + ('kernel',) and 'kernel' in module
    assert info.has_bias and info.bias_path == path + ('bias',) and 'bias' in module
    assert len(info.calls) == 1
  reasons = report.uncovered
  assert set(reasons) == {('Embed_0', 'embedding'), ('LayerNorm_0', 'scale'),
                          ('LayerNorm_0', 'bias'), ('BatchNorm_0', 'scale'),
                          ('BatchNorm_0', 'bias'), ('Conv_1', 'kernel'), ('Conv_1', 'bias')}
  assert reasons['Embed_0', 'embedding'].startswith('Embed: not a Dense')
  assert 'grouped convolution' in reasons['Conv_1', 'kernel']


def test_kernel_matrix_round_trip_and_layout(mixed):
  """`kernel_matrix` flattens (input axes, output axes) and puts the bias row last."""
  apply_fn, variables, inputs = mixed
  report = kfac.layer_report(apply_fn, variables, inputs)
  info = report.layers['DenseGeneral_0',]
  module = {name: jnp.arange(np.prod(leaf.shape), dtype=jnp.float32).reshape(leaf.shape)
            for name, leaf in variables['params']['DenseGeneral_0'].items()}
  matrix = kfac.kernel_matrix(info, module['kernel'], module['bias'])
  assert matrix.shape == (13, 6)
  np.testing.assert_array_equal(matrix[4 * 1 + 2], module['kernel'][1, 2].reshape(6))
  np.testing.assert_array_equal(matrix[-1], module['bias'].reshape(6))
  kernel, bias = kfac.split_kernel_matrix(info, matrix)
  np.testing.assert_array_equal(kernel, module['kernel'])
  np.testing.assert_array_equal(bias, module['bias'])


def test_captured_inputs_and_gradients_reproduce_parameter_gradients(mixed):
  """For every covered layer, `sum_rows a g^T` of the captured input and output gradient equals
  `d <f, c> / d [kernel; bias]` by `jax.grad`: the probes see the right tensors."""
  apply_fn, variable_shapes, inputs = mixed
  report = kfac.layer_report(apply_fn, variable_shapes, inputs)

  @jax.jit
  def captured_and_direct(inputs, cotangent):
    variables = Mixed().init(jax.random.key(1), *inputs)
    forward = capture.capture_forward(apply_fn, variables, inputs, report)
    output_gradients = forward.output_gradients(cotangent)
    parameter_gradients = jax.grad(
        lambda p: jnp.vdot(apply_fn(dict(variables, params=p), inputs), cotangent))(
            variables['params'])
    captured, direct = {}, {}
    for path, info in report.layers.items():
      (call,), (x,), (g,) = info.calls, forward.layer_inputs[path], output_gradients[path]
      a = layers.input_rows(info, call, x).reshape(-1, info.p_in)
      a = jnp.concatenate([a, jnp.ones((a.shape[0], 1))], axis=1)
      g = layers.output_rows(info, call, g[None]).reshape(-1, info.p_out)
      captured[path] = a.T @ g
      module = functools.reduce(lambda tree, name: tree[name], path, parameter_gradients)
      direct[path] = kfac.kernel_matrix(info, module['kernel'], module['bias'])
    return forward.output, apply_fn(variables, inputs), captured, direct

  cotangent = jax.random.normal(jax.random.key(2), (2, 5))
  output, direct_output, captured, direct = captured_and_direct(inputs, cotangent)
  np.testing.assert_allclose(output, direct_output, rtol=1e-5, atol=1e-6)
  for path in report.layers:
    np.testing.assert_allclose(captured[path], direct[path], rtol=1e-4, atol=1e-5,
                               err_msg=str(path))


CONV_GEOMETRIES = {
    'circular': dict(kernel_size=(3, 2), padding='CIRCULAR'),
    'reflect_dilated': dict(kernel_size=(2, 2), padding='REFLECT', kernel_dilation=2),
    'input_dilation': dict(kernel_size=(2, 3), padding=((1, 0), (1, 2)), input_dilation=(2, 1),
                           strides=(1, 2)),
    'causal_1d': dict(kernel_size=(3,), padding='CAUSAL', kernel_dilation=2),
    'two_batch_axes': dict(kernel_size=(3, 3), padding='SAME', strides=2),
}


def test_conv_patches_reproduce_the_convolution():
  """For every padding mode (Flax's pre-padded CIRCULAR/REFLECT/CAUSAL included), input and
  kernel dilation, 1-d and extra batch axes: `patches @ kernel_2d + bias` is the layer output,
  and the patch sums (computed without patches) are the sums of the patches."""
  images = {name: jax.random.normal(jax.random.key(0), shape) for name, shape in (
      ('circular', (2, 5, 4, 3)), ('reflect_dilated', (2, 5, 5, 2)),
      ('input_dilation', (2, 4, 5, 2)), ('causal_1d', (2, 7, 3)),
      ('two_batch_axes', (2, 3, 5, 5, 2)))}

  @jax.jit
  def check(images):
    result = {}
    for name, image in images.items():
      conv = nn.Conv(4, **CONV_GEOMETRIES[name])
      variables = conv.init(jax.random.key(1), image)
      info = kfac.layer_report(conv.apply, variables, image).layers[()]
      (call,) = info.calls
      rows = layers.input_rows(info, call, image)
      matrix = kfac.kernel_matrix(info, variables['params']['kernel'], variables['params']['bias'])
      rebuilt = jnp.concatenate([rows, jnp.ones(rows.shape[:-1] + (1,))], axis=-1) @ matrix
      result[name] = (rebuilt.reshape(conv.apply(variables, image).shape),
                      conv.apply(variables, image),
                      layers.input_row_sums(info, call, image), rows.sum(axis=1))
    return result

  for name, (rebuilt, output, row_sums, patch_sums) in check(images).items():
    np.testing.assert_allclose(rebuilt, output, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(row_sums, patch_sums, rtol=1e-5, atol=1e-5, err_msg=name)


class SharedDense(nn.Module):
  """One Dense called on several slices of the positions (`split`), or once on all of them."""

  split: bool

  def setup(self):
    self.dense = nn.Dense(3)
    self.head = nn.Dense(2)

  def __call__(self, x):
    if self.split:
      hidden = jnp.concatenate([self.dense(x[:, :1]), self.dense(x[:, 1:])], axis=1)
    else:
      hidden = self.dense(x)
    return self.head(jnp.tanh(hidden))


def test_shared_module_calls_are_extra_weight_sharing_positions():
  """A module called twice gets the factors of one call on the concatenated positions (computed
  eagerly, the split calls under jit)."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 5))
  targets = jnp.array([[[0.1, 0.2]] * 4] * 3)
  params = jax.jit(SharedDense(split=False).init)(jax.random.key(1), x)
  split_report = kfac.layer_report(SharedDense(split=True).apply, params, x)
  assert [call.input_shape for call in split_report.layers['dense',].calls] == [(3, 1, 5),
                                                                               (3, 3, 5)]
  configs = [dict(loss='mse', flavour=flavour, fisher_type='type2') for flavour in kfac.FLAVOURS]
  split = oracles.factors_for_configs(SharedDense(split=True).apply, params, x, targets, configs)
  whole = [kfac.compute_factors(SharedDense(split=False).apply, params, x, targets, **config)
           for config in configs]
  for split_factors, factors in zip(split, whole):
    for path in factors:
      for split_factor, factor in zip(split_factors[path], factors[path]):
        np.testing.assert_allclose(split_factor, factor, rtol=1e-5, atol=1e-6)


class Flattening(nn.Module):
  """A Dense on `[N * L, D]`: its rows are not the examples."""

  @nn.compact
  def __call__(self, x):
    hidden = nn.Dense(3)(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2] + (3,))
    return nn.Dense(2)(hidden.mean(axis=1))


def test_layer_whose_rows_are_not_examples_is_reported_uncovered():
  x = jnp.ones((2, 3, 4))
  params = jax.eval_shape(Flattening().init, jax.random.key(0), x)
  report = kfac.layer_report(Flattening().apply, params, x)
  assert list(report.layers) == [('Dense_1',)]
  assert 'not the example axis' in report.uncovered['Dense_0', 'kernel']


class NodeAndGlobalDense(nn.Module):
  """Dense layers on nodes and on graphs (globals from a node segment sum)."""

  @nn.compact
  def __call__(self, graph):
    nodes = jnp.tanh(nn.Dense(3)(graph.nodes))
    segments = jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node,
                          total_repeat_length=nodes.shape[0])
    pooled = jax.ops.segment_sum(nodes, segments, graph.n_node.shape[0])
    return nn.Dense(2)(pooled)


def _graph(n_node, n_edge):
  num_nodes, num_edges = sum(n_node), sum(n_edge)
  return jraph.GraphsTuple(nodes=jnp.ones((num_nodes, 2)), edges=jnp.ones((num_edges, 1)),
                           senders=jnp.zeros(num_edges, jnp.int32),
                           receivers=jnp.zeros(num_edges, jnp.int32),
                           n_node=jnp.array(n_node), n_edge=jnp.array(n_edge), globals=None)


def test_graph_rows_matched_by_size_ambiguity_raises_and_override_resolves():
  model = NodeAndGlobalDense()
  distinct = _graph([2, 3], [1, 2])
  params = jax.eval_shape(model.init, jax.random.key(0), distinct)
  report = kfac.layer_report(model.apply, params, distinct)
  assert [info.calls[0].rows for info in report.layers.values()] == ['nodes', 'graphs']
  ambiguous = _graph([2, 3], [4, 1])  # 5 nodes and 5 edges
  with pytest.raises(ValueError, match='graph_rows'):
    kfac.layer_report(model.apply, params, ambiguous)
  report = kfac.layer_report(model.apply, params, ambiguous, graph_rows={'Dense_0': 'nodes'})
  assert report.layers['Dense_0',].calls[0].rows == 'nodes'
  with pytest.raises(ValueError, match='n_graph'):
    kfac.layer_report(lambda p, g: model.apply(p, g)[:1], params, distinct)


class LowPrecisionSharedDense(nn.Module):
  """`SharedDense(split=True)` computing in bfloat16 (float32 parameters)."""

  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(3, dtype=jnp.bfloat16, name='dense')
    hidden = jnp.concatenate([dense(x[:, :1]), dense(x[:, 1:])], axis=1)
    return nn.Dense(2, dtype=jnp.bfloat16, name='head')(jnp.tanh(hidden))


def test_low_precision_model_accumulates_in_float32():
  """A bfloat16 model gives float32 factors close to the float32 model's (both jitted, the
  configuration bound with functools.partial)."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 5))
  targets = jnp.array([0, 1, 1])
  config = dict(loss='softmax_cross_entropy', flavour='reduce', fisher_type='mc',
                flavour_overrides={'head': 'expand'})
  model = SharedDense(split=True)
  params = jax.jit(model.init)(jax.random.key(1), x)
  rng = jax.random.key(2)
  float32 = jax.jit(functools.partial(kfac.compute_factors, model.apply, **config))(
      params, x, targets, rng=rng)
  bfloat16 = jax.jit(functools.partial(kfac.compute_factors, LowPrecisionSharedDense().apply,
                                       **config))(params, x, targets, rng=rng)
  assert set(bfloat16) == set(float32) == {('dense',), ('head',)}
  for path in float32:
    for factor, low_precision_factor in zip(float32[path], bfloat16[path]):
      assert low_precision_factor.dtype == jnp.float32
      np.testing.assert_allclose(low_precision_factor, factor, rtol=0.1, atol=0.05)


def test_jitted_apply_fn_is_refused():
  """A jitted apply_fn hides its module calls from the interceptor after its first trace."""
  x = jnp.ones((3, 4, 5))
  model = SharedDense(split=False)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  params = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), params)
  with pytest.raises(RuntimeError, match='no jitted apply_fn'):
    kfac.compute_factors(jax.jit(model.apply), params, x, jnp.zeros((3, 4, 2)), loss='mse',
                         flavour='expand', fisher_type='type2')
