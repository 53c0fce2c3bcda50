"""The example axis of a layer (kfac/example_axis.py): found by a second trace with one more
example, never from a size coincidence (issue: a time-major `[R, N, D]` layer with R == N)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


class TimeMajor(nn.Module):
  """A Dense on the time-major `[R, N, D]` transpose of `[N, R, D]` inputs (`batch_major=False`),
  or on the inputs themselves: the same layer, the same statistics."""

  batch_major: bool

  @nn.compact
  def __call__(self, x):  # x [N, R, D]
    dense = nn.Dense(3, name='dense')
    hidden = dense(x) if self.batch_major else dense(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    return nn.Dense(2, name='head')(jnp.tanh(hidden).mean(axis=1))


@pytest.mark.parametrize('flavour', kfac.FLAVOURS)
def test_time_major_layer_with_as_many_positions_as_examples_is_grouped_by_its_example_axis(
    flavour):
  """R == N: a size comparison would group the time-major layer by time; the factors must be
  those of the batch-major layout (the oracle: the same model without the transposes)."""
  x = jax.random.normal(jax.random.key(0), (4, 4, 5))
  targets = jax.random.normal(jax.random.key(1), (4, 2))
  mask = jnp.array([1.0, 1.0, 0.0, 1.0])
  params = TimeMajor(batch_major=True).init(jax.random.key(2), x)
  report = kfac.layer_report(TimeMajor(batch_major=False).apply, params, x)
  (call,) = report.layers['dense',].calls
  assert (call.example_axis, call.output_example_axis) == (1, 1)
  config = dict(loss='mse', flavour=flavour, fisher_type='type2', mask=mask)
  time_major = kfac.compute_factors(TimeMajor(batch_major=False).apply, params, x, targets,
                                    **config)
  batch_major = kfac.compute_factors(TimeMajor(batch_major=True).apply, params, x, targets,
                                     **config)
  for path in batch_major:
    for got, want in zip(time_major[path], batch_major[path]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  wrong = kfac.compute_factors(TimeMajor(batch_major=True).apply, params, x.transpose(1, 0, 2),
                               targets, **config)['dense',][0]
  assert not np.allclose(wrong, batch_major['dense',][0], rtol=1e-2)  # grouping matters here


class BatchIndependent(nn.Module):
  """A Dense on a learned constant that no example changes, added to every example."""

  @nn.compact
  def __call__(self, x):
    bias = nn.Dense(3, name='constant')(jnp.ones((2, 4))).sum(axis=0)
    return nn.Dense(3, name='head')(x) + bias


def test_layer_without_an_example_axis_is_reported_uncovered():
  x = jnp.ones((2, 5))  # N == 2, the constant's first axis too
  params = jax.eval_shape(BatchIndependent().init, jax.random.key(0), x)
  report = kfac.layer_report(BatchIndependent().apply, params, x)
  assert list(report.layers) == [('head',)]
  assert 'no single example axis' in report.uncovered['constant', 'kernel']
  assert set(report.refused) == {('constant',)}
