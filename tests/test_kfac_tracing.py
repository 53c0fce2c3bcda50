"""Tracing and classification (kfac/tracing.py): coverage report, reasons for uncovered
parameters."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

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
