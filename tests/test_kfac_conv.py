"""Convolution geometry and im2col patches (kfac/conv.py, through kfac.layers)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import kfac
from kfac import layers
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


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
