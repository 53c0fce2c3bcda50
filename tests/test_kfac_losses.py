"""Loss-Hessian square roots and Fisher types (kfac/losses.py): type-2 roots vs `jax.hessian`, MC
convergence to type-2, empirical = gradient outer product, weighted masks, NaN labels under the
mask, padding examples, and the loss-scale convention against the dense GGN and empirical Fisher
of a training objective `sum(w * loss) / sum(w)`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from kfac import losses
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py

LOSSES = ('softmax_cross_entropy', 'sigmoid_cross_entropy', 'mse')


def _batch(loss, shape, seed=0, weighted=False):
  """Logits `shape`, targets and a mask with a padding example (last) and masked entries; a
  weighted mask has its other entries drawn from [0.2, 2]."""
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=shape), jnp.float32)
  if loss == 'softmax_cross_entropy':
    targets = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]))
    mask = np.ones(shape[:-1], np.float32)
  else:
    targets = jnp.asarray(rng.integers(0, 2, shape), jnp.float32)
    mask = np.ones(shape, np.float32)
  if weighted:
    mask = rng.uniform(0.2, 2.0, mask.shape).astype(np.float32)
  mask[-1] = 0.0
  mask[0, 0] = 0.0
  return logits, targets, jnp.asarray(mask)


def test_output_cotangents_factor_the_curvature_of_the_batch_mean_loss():
  """`sum_m c_m c_m^T` per example equals the Hessian (type2) and the gradient outer product
  (empirical) of `l_n / N` by `jax.hessian`/`jax.grad`, with 0/1 and weighted masks (a weight
  enters the empirical Fisher squared, the type-2 one linearly) and a padding example."""
  batches = {(loss, weighted): _batch(loss, (3, 2, 4), weighted=weighted)
             for loss in LOSSES for weighted in (False, True)}

  @jax.jit
  def per_example_curvatures(batches):
    result = {}
    for key, (logits, targets, mask) in batches.items():
      for fisher_type in ('type2', 'empirical'):
        columns = losses.output_cotangents(key[0], fisher_type, logits, targets, mask=mask)
        columns = columns.reshape(columns.shape[0], logits.shape[0], -1)
        result[key + (fisher_type,)] = (
            jnp.einsum('mni,mnj->nij', columns, columns),
            oracles.output_curvature(key[0], fisher_type, logits, targets, mask))
    return result

  for key, (curvature, expected) in per_example_curvatures(batches).items():
    np.testing.assert_allclose(curvature, expected, rtol=1e-5, atol=1e-7, err_msg=str(key))


def test_masked_targets_may_be_nan_and_mc_needs_an_rng():
  logits, targets, mask = _batch('sigmoid_cross_entropy', (3, 4))
  nan_targets = jnp.where(mask > 0, targets, jnp.nan)
  columns = losses.output_cotangents('sigmoid_cross_entropy', 'empirical', logits, nan_targets,
                                     mask=mask)
  np.testing.assert_array_equal(columns, losses.output_cotangents(
      'sigmoid_cross_entropy', 'empirical', logits, targets, mask=mask))
  with pytest.raises(ValueError, match='rng'):
    losses.output_cotangents('mse', 'mc', logits, targets)
  with pytest.raises(ValueError, match='fisher_type'):
    losses.output_cotangents('mse', 'fisher', logits, targets)


def test_masked_soft_label_targets_may_be_nan():
  """Soft-label (distribution) targets with NaN at masked positions give, for every Fisher
  type, the columns of the integer labels they one-hot encode (the integer-label empirical
  columns match `jax.grad` in the test above): masked targets are zeroed before any use."""
  logits, labels, mask = _batch('softmax_cross_entropy', (3, 2, 4), weighted=True)
  soft = jax.nn.one_hot(labels, 4)
  nan_soft = jnp.where(mask[..., None] > 0, soft, jnp.nan)
  for fisher_type in losses.FISHER_TYPES:
    config = dict(mask=mask, rng=jax.random.key(0))
    columns = losses.output_cotangents('softmax_cross_entropy', fisher_type, logits, nan_soft,
                                       **config)
    np.testing.assert_allclose(columns, losses.output_cotangents(
        'softmax_cross_entropy', fisher_type, logits, labels, **config), rtol=1e-6, atol=1e-8,
        err_msg=fisher_type)


class PositionMixing(nn.Module):
  """Per-position outputs `[N, R, C]` of a network that mixes positions (a mean over them)."""

  @nn.compact
  def __call__(self, x):
    hidden = jnp.tanh(nn.Dense(4)(x))
    hidden = hidden + hidden.mean(axis=1, keepdims=True)
    return nn.Dense(3)(hidden)


SAMPLE_COUNTS = (1, 16, 1024)


def _assert_error_decreases(name, errors):
  print(f'MC vs type2, {name}: relative errors ' + ', '.join(
      f'{count} samples {error:.3f}' for count, error in zip(SAMPLE_COUNTS, errors)))
  assert errors[0] > errors[1] > errors[2], (name, errors)
  assert errors[2] < 0.15, (name, errors)


def test_mc_curvature_converges_to_type2():
  """Per example, the outer products of the MC columns approach the loss Hessian as the number
  of samples grows (labels drawn independently per position), for every loss."""
  batches = {loss: _batch(loss, (3, 2, 4)) for loss in LOSSES}

  @jax.jit
  def curvatures(batches, rng):
    result = {}
    for loss, (logits, targets, mask) in batches.items():
      for count in (0,) + SAMPLE_COUNTS:  # 0: type2
        columns = losses.output_cotangents(loss, 'mc' if count else 'type2', logits, targets,
                                           mask=mask, rng=rng, num_samples=max(count, 1))
        columns = columns.reshape(columns.shape[0], logits.shape[0], -1)
        result[loss, count] = jnp.einsum('mni,mnj->nij', columns, columns)
    return result

  result = curvatures(batches, jax.random.key(0))
  for loss in LOSSES:
    _assert_error_decreases(loss, [oracles.relative_error(result[loss, count], result[loss, 0])
                                   for count in SAMPLE_COUNTS])


def test_mc_fisher_factors_converge_to_type2():
  """The MC-Fisher factors of a network mixing positions approach the type-2 ones."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5))
  model = PositionMixing()
  config = dict(loss='softmax_cross_entropy', flavour='expand',
                flavour_overrides={'Dense_1': 'reduce'})

  @jax.jit
  def all_factors(x, rng):
    params = model.init(jax.random.key(1), x)
    type2 = kfac.compute_factors(model.apply, params, x, None, fisher_type='type2', **config)
    return type2, [kfac.compute_factors(model.apply, params, x, None, rng=rng, fisher_type='mc',
                                        num_samples=count, **config) for count in SAMPLE_COUNTS]

  type2, mc = all_factors(x, jax.random.key(2))
  _assert_error_decreases('factors', [
      max(oracles.relative_error(np.kron(*factors[path]), np.kron(*type2[path]))
          for path in type2) for factors in mc])


class MLP(nn.Module):
  """A nonlinear MLP on `[N, D]`."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(4, bias_init=nn.initializers.normal(0.5))(x))
    return nn.Dense(3, bias_init=nn.initializers.normal(0.5))(x)


def test_empirical_fisher_is_the_gradient_outer_product():
  """N = 1, R = 1: `A kron B` of the empirical Fisher equals `vec(grad) vec(grad)^T` of the
  layer's `[kernel; bias]` for the loss at the true targets."""
  x = jax.random.normal(jax.random.key(0), (1, 5))
  model = MLP()
  params = jax.jit(model.init)(jax.random.key(1), x)
  targets = {'softmax_cross_entropy': jnp.array([1]),
             'sigmoid_cross_entropy': jnp.array([[1.0, 0.0, 1.0]]),
             'mse': jnp.array([[0.3, -1.0, 2.0]])}

  @jax.jit
  def factors_and_gradients(params, x, targets):
    result = {}
    for loss, loss_targets in targets.items():
      factors = kfac.compute_factors(model.apply, params, x, loss_targets, loss=loss,
                                     flavour='expand', fisher_type='empirical')
      gradients = jax.grad(
          lambda p: oracles.batch_mean_loss(loss, model.apply(p, x), loss_targets))(params)
      result[loss] = factors, gradients
    return result

  for loss, (factors, gradients) in factors_and_gradients(params, x, targets).items():
    for path, (a_factor, b_factor) in factors.items():
      gradient = np.asarray(oracles.layer_parameters(gradients, path))
      np.testing.assert_allclose(np.kron(a_factor, b_factor), np.outer(gradient, gradient),
                                 rtol=1e-4, atol=1e-7, err_msg=f'{loss} {path}')


def test_padding_examples_do_not_change_the_factors():
  """Appending padding examples (mask all zero, arbitrary inputs, NaN targets) changes no factor:
  each loss with one Fisher type, both flavours; masked entries may hold NaN targets."""
  model = PositionMixing()
  x = jax.random.normal(jax.random.key(0), (5, 3, 5))
  settings = {'softmax_cross_entropy': 'mc', 'sigmoid_cross_entropy': 'empirical',
              'mse': 'type2'}
  batches = {}
  for loss in settings:
    _, targets, mask = _batch(loss, (5, 3, 3))
    mask = mask.at[-2:].set(0.0)
    if loss != 'softmax_cross_entropy':
      targets = jnp.where(mask > 0, targets, jnp.nan)
    batches[loss] = targets, mask

  @jax.jit
  def padded_and_unpadded(x, batches, rng):
    params = model.init(jax.random.key(1), x)
    result = []
    for loss, (targets, mask) in batches.items():
      config = dict(loss=loss, flavour='reduce', flavour_overrides={'Dense_0': 'expand'},
                    fisher_type=settings[loss], rng=rng)
      result.append((
          kfac.compute_factors(model.apply, params, x, targets, mask=mask, **config),
          kfac.compute_factors(model.apply, params, x[:3], targets[:3], mask=mask[:3], **config)))
    return result

  for padded, unpadded in padded_and_unpadded(x, batches, jax.random.key(2)):
    for path in unpadded:
      for padded_factor, factor in zip(padded[path], unpadded[path]):
        assert np.all(np.isfinite(padded_factor))
        np.testing.assert_allclose(padded_factor, factor, rtol=1e-5, atol=1e-6)
