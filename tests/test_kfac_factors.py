"""`kfac.compute_factors` against the exact GGN (dense `jax.jacobian`/`jax.hessian`) and against
brute-force loops over examples and positions (tests/kfac_oracles.py)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from tests import kfac_oracles as oracles

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


def _kronecker_errors(model, x, loss, targets, flavour, fisher_type='type2'):
  """Relative error of `A kron B` vs the exact GGN block, per layer."""
  params = model.init(jax.random.key(1), x)
  factors = kfac.compute_factors(model.apply, params, x, targets, loss=loss, flavour=flavour,
                                 fisher_type=fisher_type)
  errors = {}
  for path, (a_factor, b_factor) in factors.items():
    ggn = oracles.exact_ggn_block(model.apply, params, x, path,
                                  lambda f: oracles.batch_mean_loss(loss, f, targets))
    errors[path] = oracles.relative_error(np.kron(a_factor, b_factor), ggn)
  return errors


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_deep_linear_exactness(reduction):
  """Expand is exact when the loss is per position, reduce when positions are reduced before the
  loss (mean or sum); each is off (relative error > 0.1) in the other setting."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 6))
  model = DeepLinear(reduction=reduction)
  output_shape = (3, 4, 3) if reduction == 'none' else (3, 3)
  targets = jax.random.normal(jax.random.key(2), output_shape)
  exact_flavour = 'expand' if reduction == 'none' else 'reduce'
  for flavour in ('expand', 'reduce'):
    errors = _kronecker_errors(model, x, 'mse', targets, flavour)
    print(f'deep linear, reduction={reduction}, {flavour}: relative errors '
          + ', '.join(f'{"/".join(path)}={error:.2e}' for path, error in errors.items()))
    for path, error in errors.items():
      if flavour == exact_flavour:
        assert error < 1e-5, (flavour, path, error)
      else:
        assert error > 0.1, (flavour, path, error)


@pytest.mark.parametrize('loss', LOSSES)
def test_single_example_mlp_is_exact(loss):
  """N = 1, R = 1: both flavours equal the exact GGN block of every layer, for every loss."""
  x = jax.random.normal(jax.random.key(0), (1, 5))
  targets = {'softmax_cross_entropy': jnp.array([2]),
             'sigmoid_cross_entropy': jnp.array([[1.0, 0.0, 1.0]]),
             'mse': jnp.array([[0.3, -1.0, 2.0]])}[loss]
  for flavour in ('expand', 'reduce'):
    errors = _kronecker_errors(MLP(), x, loss, targets, flavour)
    assert max(errors.values()) < 1e-5, (flavour, errors)
