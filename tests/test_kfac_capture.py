"""Probe capture on unmodified Flax models (kfac/capture.py): captured inputs and output
gradients, shared modules, dtypes, jitted apply functions."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from kfac import capture, layers
from tests import kfac_oracles as oracles
from tests.kfac_models import Mixed, fixture_mixed  # noqa: F401 (the fixture)

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


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
