"""Fuzzing the K-FAC statistics with hypothesis: random Dense / DenseGeneral / Conv layers (shapes,
strides, paddings, dilations, bias), losses, masks (weights, padding examples) and Fisher types
(`'type2'`, `'empirical'`: deterministic) against brute-force loops over examples and locations
(`tests/kfac_oracles.py`), for both flavours. Derandomized (the same examples on every run); each
example compiles one program, so the example counts are small."""

import flax.linen as nn
from hypothesis import Phase, assume, given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import kfac
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py

# No shrinking: every example compiles, so shrinking a failure would take minutes; a failure
# reports the example as drawn.
FUZZ = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False)


class OneLayer(nn.Module):
  """`tanh(layer(x))`: the output `[N, ..., P_out]` (softmax classes or tasks on the last axis)."""
  layer: nn.Module

  @nn.compact
  def __call__(self, x):
    return jnp.tanh(self.layer(x))


def _targets_and_mask(loss, output_shape, mask_axes, rng):
  """Targets for `loss` and a weighted mask of the loss's first `mask_axes` axes: weights in
  [0.2, 2] with some zeros, and every example after the first one padding with probability 1/3."""
  loss_shape = output_shape[:-1] if loss == 'softmax_cross_entropy' else output_shape
  if loss == 'softmax_cross_entropy':
    targets = rng.integers(0, output_shape[-1], loss_shape)
  elif loss == 'sigmoid_cross_entropy':
    targets = rng.integers(0, 2, loss_shape).astype(np.float32)
  else:
    targets = rng.normal(size=loss_shape).astype(np.float32)
  mask_shape = loss_shape[:max(1, min(mask_axes, len(loss_shape)))]
  mask = rng.uniform(0.2, 2.0, mask_shape) * (rng.random(mask_shape) > 0.2)
  mask.reshape(mask_shape[0], -1)[0, 0] = 1.0  # at least one valid example (a view)
  mask[1:][rng.random(mask_shape[0] - 1) < 1 / 3] = 0.0
  return jnp.asarray(targets), jnp.asarray(mask, jnp.float32)


def _assert_matches_brute_force(layer, x, loss, fisher_type, mask_axes, seed, rows_of):
  """`compute_factors` (both flavours) == `oracles.brute_force_factors`, with the layer's
  per-example rows from `rows_of(x) -> [N, R, P_in]`; also checks that those rows reproduce
  the layer's output (`rows @ kernel + bias`), so the oracle's rows are the layer's."""
  model = OneLayer(layer)
  params = model.init(jax.random.key(seed), x)
  output_shape = jax.eval_shape(model.apply, params, x).shape
  targets, mask = _targets_and_mask(loss, output_shape, mask_axes, np.random.default_rng(seed))

  @jax.jit
  def factors_and_references(params, x, targets, mask):
    factors = {flavour: kfac.compute_factors(model.apply, params, x, targets, loss=loss,
                                             flavour=flavour, fisher_type=fisher_type, mask=mask)
               for flavour in kfac.FLAVOURS}
    output, _, jacobians = oracles.layer_io(model.apply, params, x)
    layer_output = layer.apply({'params': params['params']['layer']}, x)
    return (factors, output, jacobians[('layer',)], layer_output,
            oracles.output_curvature(loss, fisher_type, output, targets, mask))

  factors, output, jacobian, layer_output, curvature = jax.tree_util.tree_map(
      np.asarray, factors_and_references(params, x, targets, mask))
  layer_params = params['params']['layer']
  kernel = np.asarray(layer_params['kernel'], np.float64)
  rows = rows_of(np.asarray(x))  # [N, R, P_in]
  p_out = kernel.size // rows.shape[-1]
  bias = np.asarray(layer_params['bias'], np.float64).reshape(-1) if 'bias' in layer_params else 0
  np.testing.assert_allclose(rows @ kernel.reshape(-1, p_out) + bias,
                             layer_output.reshape(rows.shape[0], -1, p_out), rtol=1e-4, atol=1e-5)
  num_examples = output.shape[0]
  jacobian = jacobian.astype(np.float64).reshape(num_examples, -1, num_examples,
                                                 rows.shape[1], p_out)
  example_jacobians = [jacobian[n][:, n] for n in range(num_examples)]  # [E, R, P_out]
  valid = np.any(np.asarray(mask).reshape(num_examples, -1) > 0, axis=1)
  for flavour, layer_factors in factors.items():
    references = oracles.brute_force_factors(flavour, list(rows), example_jacobians,
                                             curvature.astype(np.float64), valid,
                                             'bias' in layer_params)
    for factor, reference, name in zip(layer_factors[('layer',)], references, 'AB'):
      np.testing.assert_allclose(factor, reference, rtol=2e-4, atol=1e-6,
                                 err_msg=f'{flavour} {name}')


LOSSES = st.sampled_from(['softmax_cross_entropy', 'sigmoid_cross_entropy', 'mse'])
FISHER_TYPES = st.sampled_from(['type2', 'empirical'])
SEEDS = st.integers(0, 2 ** 16)


@FUZZ
@given(num_examples=st.integers(1, 3), sharing=st.lists(st.integers(1, 3), max_size=2),
       contracted=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       features=st.lists(st.integers(1, 3), min_size=1, max_size=2), use_bias=st.booleans(),
       loss=LOSSES, fisher_type=FISHER_TYPES, mask_axes=st.integers(1, 4), seed=SEEDS)
def test_dense_statistics_match_brute_force(num_examples, sharing, contracted, features,
                                            use_bias, loss, fisher_type, mask_axes, seed):
  """Dense (one contracted axis, one output feature axis) or DenseGeneral (several of either),
  with 0-2 weight-sharing axes between the example axis and the contracted ones."""
  shape = (num_examples, *sharing, *contracted)
  x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape), jnp.float32)
  if len(contracted) == 1 and len(features) == 1:
    layer = nn.Dense(features[0], use_bias=use_bias)
  else:
    layer = nn.DenseGeneral(tuple(features), axis=tuple(range(-len(contracted), 0)),
                            use_bias=use_bias)
  p_in = int(np.prod(contracted))
  _assert_matches_brute_force(layer, x, loss, fisher_type, mask_axes, seed,
                              lambda x: x.reshape(num_examples, -1, p_in).astype(np.float64))


@FUZZ
@given(num_examples=st.integers(1, 3), spatial=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       channels=st.integers(1, 2), features=st.integers(1, 2), use_bias=st.booleans(),
       geometry=st.data(), loss=LOSSES, fisher_type=FISHER_TYPES, mask_axes=st.integers(1, 4),
       seed=SEEDS)
def test_conv_statistics_match_brute_force(num_examples, spatial, channels, features, use_bias,
                                           geometry, loss, fisher_type, mask_axes, seed):
  """Conv (1-D and 2-D) with random kernel sizes, strides, kernel and input dilations, and
  'SAME', 'VALID', 'CIRCULAR' or explicit padding; output locations are the positions."""
  rank = len(spatial)

  def per_dim(low, high):
    return tuple(geometry.draw(st.lists(st.integers(low, high), min_size=rank, max_size=rank)))

  kernel_size, strides = per_dim(1, 3), per_dim(1, 3)
  kernel_dilation, input_dilation = per_dim(1, 2), per_dim(1, 2)
  padding = geometry.draw(st.sampled_from(['SAME', 'VALID', 'CIRCULAR', 'explicit']))
  if padding == 'explicit':
    padding = tuple(zip(per_dim(0, 2), per_dim(0, 2)))
  else:  # lax refuses string padding with input dilation
    input_dilation = (1,) * rank
  x = jnp.asarray(np.random.default_rng(seed + 1).normal(
      size=(num_examples, *spatial, channels)), jnp.float32)
  layer = nn.Conv(features, kernel_size, strides=strides, padding=padding,
                  input_dilation=input_dilation, kernel_dilation=kernel_dilation,
                  use_bias=use_bias)
  out_shape = jax.eval_shape(layer.init_with_output, jax.random.key(0), x)[0].shape
  assume(all(size > 0 for size in out_shape))
  _assert_matches_brute_force(layer, x, loss, fisher_type, mask_axes, seed, lambda x: (
      oracles.conv_patches(x, kernel_size, strides, padding, input_dilation, kernel_dilation)))
