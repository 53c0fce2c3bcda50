"""`kfac.compute_factors` against the exact GGN (dense `jax.jacobian`/`jax.hessian`) and against
brute-force loops over examples and positions (tests/kfac_oracles.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import kfac
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py

LOSSES = ('softmax_cross_entropy', 'sigmoid_cross_entropy', 'mse')


class DeepLinear(nn.Module):
  """Position-wise Dense layers on `[N, R, D]`; `reduction` of the positions before the output:
  'none' (outputs `[N, R, C]`, the expand setting), 'mean' or 'sum' (the reduce setting)."""

  widths: tuple = (5, 4, 3)
  reduction: str = 'none'

  @nn.compact
  def __call__(self, x):
    for width in self.widths:
      x = nn.Dense(width, bias_init=nn.initializers.normal(0.5))(x)
    if self.reduction == 'mean':
      return x.mean(axis=1)
    if self.reduction == 'sum':
      return x.sum(axis=1)
    return x


class MLP(nn.Module):
  """A nonlinear MLP."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(4, bias_init=nn.initializers.normal(0.5))(x))
    x = nn.Dense(3, use_bias=False)(x)
    x = nn.softplus(x)
    return nn.Dense(3, bias_init=nn.initializers.normal(0.5))(x)


def _kronecker_errors(problems):
  """Relative errors of `A kron B` (type2) vs the exact GGN block, in one compiled program.

  Args:
    problems: `{name: (model, inputs, loss, targets)}`.

  Returns:
    `{name: {flavour: {layer path: relative error}}}`.
  """
  @jax.jit
  def factors_and_ggn():
    result = {}
    for name, (model, x, loss, targets) in problems.items():
      params = model.init(jax.random.key(1), x)
      factors = {flavour: kfac.compute_factors(model.apply, params, x, targets, loss=loss,
                                               flavour=flavour, fisher_type='type2')
                 for flavour in kfac.FLAVOURS}
      ggn = oracles.exact_ggn_blocks(model.apply, params, x, list(factors['expand']),
                                     lambda f, loss=loss, targets=targets:
                                     oracles.batch_mean_loss(loss, f, targets))
      result[name] = factors, ggn
    return result

  return {name: {flavour: {path: oracles.relative_error(np.kron(a, b), ggn[path])
                           for path, (a, b) in flavour_factors.items()}
                 for flavour, flavour_factors in factors.items()}
          for name, (factors, ggn) in factors_and_ggn().items()}


def test_deep_linear_exactness():
  """Expand is exact when the loss is per position, reduce when positions are reduced before the
  loss (mean or sum); each is off (relative error > 0.1) in the other setting."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 6))
  problems = {}
  for reduction in ('none', 'mean', 'sum'):
    output_shape = (3, 4, 3) if reduction == 'none' else (3, 3)
    targets = jax.random.normal(jax.random.key(2), output_shape)
    problems[reduction] = (DeepLinear(reduction=reduction), x, 'mse', targets)
  for reduction, errors_by_flavour in _kronecker_errors(problems).items():
    exact_flavour = 'expand' if reduction == 'none' else 'reduce'
    for flavour, errors in errors_by_flavour.items():
      print(f'deep linear, reduction={reduction}, {flavour}: relative errors '
            + ', '.join(f'{"/".join(path)}={error:.2e}' for path, error in errors.items()))
      for path, error in errors.items():
        if flavour == exact_flavour:
          assert error < 1e-5, (reduction, flavour, path, error)
        else:
          assert error > 0.1, (reduction, flavour, path, error)


def test_single_example_mlp_is_exact():
  """N = 1, R = 1: both flavours equal the exact GGN block of every layer, for every loss."""
  x = jax.random.normal(jax.random.key(0), (1, 5))
  targets = {'softmax_cross_entropy': jnp.array([2]),
             'sigmoid_cross_entropy': jnp.array([[1.0, 0.0, 1.0]]),
             'mse': jnp.array([[0.3, -1.0, 2.0]])}
  problems = {loss: (MLP(), x, loss, targets[loss]) for loss in LOSSES}
  for loss, errors_by_flavour in _kronecker_errors(problems).items():
    for flavour, errors in errors_by_flavour.items():
      assert max(errors.values()) < 1e-5, (loss, flavour, errors)


# -- Brute force: convolutions, attention projections, graph layers ------------------------------


def _assert_matches_brute_force(model, inputs, targets, loss, examples_of, mask=None,
                                fisher_types=('type2', 'empirical')):
  """compute_factors == brute-force loops, for both flavours and the given Fisher types.

  The factors and the references' ingredients (layer inputs, Jacobians, loss curvature) come
  from one compiled program. `examples_of(path, layer_input, jacobian, p_out)` returns, per
  example n, its rows `[R_n, P_in]` and `d f_n / d s` restricted to them, `[E, R_n, P_out]`;
  `jacobian` is `[N, E, *layer_output]`.

  Returns:
    The model's parameters.
  """
  configs = [dict(loss=loss, flavour=flavour, fisher_type=fisher_type)
             for fisher_type in fisher_types for flavour in kfac.FLAVOURS]

  @jax.jit
  def factors_and_references(inputs, targets, mask):
    params = model.init(jax.random.key(1), inputs)
    all_factors = [kfac.compute_factors(model.apply, params, inputs, targets, mask=mask,
                                        **config) for config in configs]
    output, layer_inputs, jacobians = oracles.layer_io(model.apply, params, inputs)
    curvatures = {fisher_type: oracles.output_curvature(loss, fisher_type, output, targets, mask)
                  for fisher_type in fisher_types}
    return params, all_factors, output, layer_inputs, jacobians, curvatures

  params, all_factors, output, layer_inputs, jacobians, curvatures = jax.tree_util.tree_map(
      np.asarray, factors_and_references(inputs, targets, mask))
  num_examples = output.shape[0]
  valid = np.ones(num_examples, bool) if mask is None else np.any(
      np.asarray(mask).reshape(num_examples, -1) > 0, axis=1)
  for config, factors in zip(configs, all_factors):
    assert set(factors) == set(layer_inputs)
    for path, (a_factor, b_factor) in factors.items():
      jacobian = jacobians[path].astype(np.float64)
      jacobian = jacobian.reshape((num_examples, -1) + jacobian.shape[output.ndim:])
      rows, example_jacobians = examples_of(path, layer_inputs[path].astype(np.float64),
                                            jacobian, b_factor.shape[0])
      has_bias = 'bias' in oracles.module_params(params, path)
      a_ref, b_ref = oracles.brute_force_factors(
          config['flavour'], rows, example_jacobians,
          curvatures[config['fisher_type']].astype(np.float64), valid, has_bias)
      context = (config, path)
      np.testing.assert_allclose(a_factor, a_ref, rtol=1e-4, atol=1e-5, err_msg=str(context))
      np.testing.assert_allclose(b_factor, b_ref, rtol=1e-4, atol=1e-6, err_msg=str(context))
  return params


def _sequence_examples(path, layer_input, jacobian, p_out):
  """Rows of example n: its positions (the contracted input axes are the last ones)."""
  del path
  rows, jacobians = [], []
  for n in range(layer_input.shape[0]):
    jac = jacobian[n][:, n]  # [E, R..., output features...]
    jac = jac.reshape(jac.shape[0], -1, p_out)
    rows.append(layer_input[n].reshape(jac.shape[1], -1))
    jacobians.append(jac)
  return rows, jacobians


class TinyTransformer(nn.Module):
  """Pre-LN transformer block (multi-head self-attention + MLP), mean pool, classifier."""

  @nn.compact
  def __call__(self, x):
    h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(nn.LayerNorm()(x))
    x = x + h
    h = nn.gelu(nn.Dense(6)(nn.LayerNorm()(x)))
    x = x + nn.Dense(x.shape[-1])(h)
    return nn.Dense(3)(x.mean(axis=1))


def test_attention_projections_match_brute_force():
  """q/k/v/out DenseGeneral projections and MLP Dense layers of a transformer block."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  _assert_matches_brute_force(TinyTransformer(), x, jnp.array([0, 2]), 'softmax_cross_entropy',
                              _sequence_examples)


def _same_padding(size, kernel, stride, dilation):
  """XLA's 'SAME' padding `(lo, hi)` of one spatial dimension."""
  out = -(-size // stride)
  total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
  return total // 2, total - total // 2


def _numpy_patches(image, kernel_size, strides, padding, dilation):
  """im2col by explicit loops: `[H', W', C]` image -> `[H' * W', kh * kw * C]`, (kh, kw, c)."""
  if padding == 'SAME':
    padding = [_same_padding(image.shape[d], kernel_size[d], strides[d], dilation[d])
               for d in range(2)]
  padded = np.pad(image, (tuple(padding[0]), tuple(padding[1]), (0, 0)))
  extent = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
  out_shape = [(padded.shape[d] - extent[d]) // strides[d] + 1 for d in range(2)]
  patches = []
  for i in range(out_shape[0]):
    for j in range(out_shape[1]):
      patches.append(np.concatenate([
          padded[i * strides[0] + u * dilation[0], j * strides[1] + v * dilation[1]]
          for u in range(kernel_size[0]) for v in range(kernel_size[1])]))
  return np.stack(patches)


CONV_CONFIGS = {
    'stride2_same': dict(kernel_size=(3, 2), strides=(2, 2), padding='SAME',
                         kernel_dilation=(1, 1)),
    'explicit_padding_dilation': dict(kernel_size=(2, 3), strides=(1, 2),
                                      padding=((1, 2), (0, 1)), kernel_dilation=(2, 1)),
}


class ConvNet(nn.Module):
  """Conv (the configuration under test) -> tanh -> 2x2 VALID conv -> mean pool -> Dense."""

  config: dict

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(3, **self.config)(x))
    x = nn.Conv(2, (2, 2), padding='VALID', use_bias=False)(x)
    return nn.Dense(3)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize('name', sorted(CONV_CONFIGS))
def test_convolution_matches_brute_force(name):
  """Conv factors (patches in HWIO order, any stride/padding/dilation) vs loops over output
  locations and patches."""
  config = CONV_CONFIGS[name]
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 2))
  geometry = {('Conv_0',): config,
              ('Conv_1',): dict(kernel_size=(2, 2), strides=(1, 1), padding=((0, 0), (0, 0)),
                                kernel_dilation=(1, 1))}

  def examples_of(path, layer_input, jacobian, p_out):
    if path not in geometry:
      return _sequence_examples(path, layer_input, jacobian, p_out)
    cfg = geometry[path]
    rows = [_numpy_patches(image, cfg['kernel_size'], cfg['strides'], cfg['padding'],
                           cfg['kernel_dilation']) for image in layer_input]
    return rows, [jacobian[n][:, n].reshape(jacobian.shape[1], -1, p_out)
                  for n in range(layer_input.shape[0])]

  _assert_matches_brute_force(ConvNet(config), x, jnp.array([1, 2]), 'softmax_cross_entropy',
                              examples_of)


class TinyGraphNet(nn.Module):
  """One jraph GraphNetwork step (Dense edge/node/global updates) and a Dense decoder on the
  globals: Dense_0 acts on edges, Dense_1 on nodes, Dense_2 and Dense_3 on graphs."""

  @nn.compact
  def __call__(self, graph):
    def update(width):
      @jraph.concatenated_args
      def update_fn(features):
        return jnp.tanh(nn.Dense(width)(features))
      return update_fn

    graph = graph._replace(globals=jnp.zeros((graph.n_node.shape[0], 2)))
    graph = jraph.GraphNetwork(update_edge_fn=update(3), update_node_fn=update(3),
                               update_global_fn=update(2))(graph)
    return nn.Dense(4)(graph.globals)


def _graph_batch(n_node, n_edge, seed=0):
  """A GraphsTuple of random graphs (features `[., 2]`, edges within each graph)."""
  rng = np.random.default_rng(seed)
  offsets = np.concatenate([[0], np.cumsum(n_node)[:-1]])
  senders = np.concatenate([rng.integers(0, n, e) + o for n, e, o in zip(n_node, n_edge, offsets)])
  receivers = np.concatenate([rng.integers(0, n, e) + o
                              for n, e, o in zip(n_node, n_edge, offsets)])
  return jraph.GraphsTuple(
      nodes=rng.normal(size=(sum(n_node), 2)).astype(np.float32),
      edges=rng.normal(size=(sum(n_edge), 2)).astype(np.float32),
      senders=senders.astype(np.int32), receivers=receivers.astype(np.int32),
      n_node=np.array(n_node, np.int32), n_edge=np.array(n_edge, np.int32), globals=None)


GRAPH_ROWS = {('Dense_0',): 'edges', ('Dense_1',): 'nodes'}


def _graph_examples(graph):
  """Per-graph rows: the graph's edges, nodes, or its own row for global layers."""
  bounds = {'nodes': np.cumsum(np.concatenate([[0], graph.n_node])),
            'edges': np.cumsum(np.concatenate([[0], graph.n_edge])),
            'graphs': np.arange(len(graph.n_node) + 1)}

  def examples_of(path, layer_input, jacobian, p_out):
    del p_out
    starts = bounds[GRAPH_ROWS.get(path, 'graphs')]
    rows = [layer_input[starts[n]:starts[n + 1]] for n in range(len(starts) - 1)]
    return rows, [jacobian[n][:, starts[n]:starts[n + 1]] for n in range(len(starts) - 1)]

  return examples_of


def test_graph_network_matches_brute_force_and_ignores_padding():
  """GraphNetwork edge/node/global layers vs loops over graphs and their rows; padding graphs
  (jraph.pad_with_graphs, mask zero) change nothing, an edge-less graph has no edge rows."""
  graph = _graph_batch(n_node=[3, 2, 4], n_edge=[4, 0, 6])
  padded = jraph.pad_with_graphs(graph, n_node=12, n_edge=14, n_graph=5)
  rng = np.random.default_rng(1)
  targets = rng.integers(0, 2, (5, 4)).astype(np.float32)
  mask = np.ones((5, 4), np.float32)
  mask[0, 1] = 0.0
  mask[3:] = 0.0
  model = TinyGraphNet()
  params = _assert_matches_brute_force(model, padded, targets, 'sigmoid_cross_entropy',
                                       _graph_examples(padded), mask=mask)
  # MC labels are drawn per example index: padding graphs appended last change no draw.
  configs = [dict(loss='sigmoid_cross_entropy', flavour='reduce', fisher_type='mc',
                  flavour_overrides={'Dense_0': 'expand', 'Dense_2': 'expand'})]
  rng = jax.random.key(3)
  (with_padding,) = oracles.factors_for_configs(model.apply, params, padded, targets, configs,
                                                mask=mask, rng=rng)
  (without,) = oracles.factors_for_configs(model.apply, params, graph, targets[:3], configs,
                                           mask=mask[:3], rng=rng)
  for path in without:
    for padded_factor, factor in zip(with_padding[path], without[path]):
      np.testing.assert_allclose(padded_factor, factor, rtol=1e-5, atol=1e-6)
