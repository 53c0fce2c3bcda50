"""`kfac.layers`: the rows of each flavour against independent computations: padding examples
masked out of B through a batch coupling (BatchNorm), the mean activation, and the rows' grams
equal to the factors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from kfac import losses
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


class BatchNormMLP(nn.Module):
  """Dense -> BatchNorm in training mode (couples the examples) -> tanh -> Dense."""

  @nn.compact
  def __call__(self, x):
    hidden = nn.BatchNorm(use_running_average=False)(nn.Dense(4)(x))
    return nn.Dense(3)(jnp.tanh(hidden))


@pytest.mark.parametrize('flavour', kfac.FLAVOURS)
def test_padding_examples_are_masked_out_of_b_through_batch_norm(flavour):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  targets = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
  mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
  model = BatchNormMLP()
  variables = model.init(jax.random.key(1), x)

  def apply_fn(params, inputs):
    return model.apply(params, inputs, mutable=['batch_stats'])[0]

  factors = kfac.compute_factors(apply_fn, variables, x, targets, loss='mse', flavour=flavour,
                                 fisher_type='type2', mask=mask)
  output, _, jacobians = oracles.layer_io(apply_fn, variables, x)
  cotangents = losses.output_cotangents('mse', 'type2', output, targets, mask=mask)  # [M, N, C]
  # g[m, n'] = d <f, c_m> / d s_n' over every example n (the BatchNorm coupling included).
  gradients = np.einsum('mnc,nckp->mkp', cotangents, jacobians['Dense_0',])
  valid = np.asarray(mask) > 0
  want = np.einsum('mkp,mkq->pq', gradients[:, valid], gradients[:, valid])
  leaked = np.einsum('mkp,mkq->pq', gradients, gradients)
  assert oracles.relative_error(leaked, want) > 0.05  # padding rows do reach the layer
  np.testing.assert_allclose(factors['Dense_0',][1], want, rtol=1e-4, atol=1e-7)


class DeepLinear(nn.Module):
  """Position-wise Dense layers on `[N, R, D]`, the positions averaged before the output."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.Dense(4)(x)).mean(axis=1)


@pytest.mark.parametrize('flavour', kfac.FLAVOURS)
def test_rows_grams_are_the_factors_and_a_mean_is_the_weighted_mean(flavour):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((5, 3, 2)), jnp.float32)
  mask = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
  model = DeepLinear()
  params = model.init(jax.random.key(0), x)
  report = kfac.layer_report(model.apply, params, x)
  statistics = kfac.compute_statistics(
      model.apply, params, x, None, report=report, flavours={path: flavour for path in report.layers},
      loss='mse', fisher_type='mc', rng=jax.random.key(2), mask=mask)
  factors = kfac.compute_factors(model.apply, params, x, None, loss='mse', flavour=flavour,
                                 fisher_type='mc', rng=jax.random.key(2), mask=mask)
  _, layer_inputs, _ = oracles.layer_io(model.apply, params, x)
  valid = np.asarray(mask) > 0
  for path, rows in statistics.items():
    np.testing.assert_allclose(rows.a_rows.T @ rows.a_rows, factors[path][0], rtol=1e-5)
    np.testing.assert_allclose(rows.g_rows.T @ rows.g_rows, factors[path][1], rtol=1e-5)
    inputs = np.asarray(layer_inputs[path], np.float64)[valid].reshape(-1, rows.a_mean.shape[0] - 1)
    want = np.append(inputs.mean(axis=0), 1.0)  # bias coordinate 1
    np.testing.assert_allclose(rows.a_mean, want, rtol=1e-5, atol=1e-6)
    assert rows.a_rows.shape[0] == (5 if flavour == 'reduce' else 15)
