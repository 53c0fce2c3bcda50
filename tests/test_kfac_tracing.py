"""Tracing and classification (kfac/tracing.py): coverage report, reasons for uncovered
parameters, example axes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from tests import kfac_oracles as oracles
from tests.kfac_models import fixture_mixed  # noqa: F401 (the fixture)

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


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
