"""Convolutions as linear weight-sharing layers: an `nn.Conv`'s geometry and its im2col patches.

A convolution maps the patch `a [prod(k) * c]` of every output location (R locations) to
`a @ W` with `W = kernel.reshape(prod(k) * c, o)`, in the kernel's HWIO order `(k_1, ..., k_d,
c)` (`lax.conv_general_dilated_patches` orders its patch features `(c, k_1, ..., k_d)`: we
permute). Patches are extracted at `HIGHEST` precision, so they are exact copies of the input.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import flax.linen as nn
from flax.linen import linear as flax_linear
import jax
import jax.numpy as jnp
from jax import lax


class ConvGeometry(NamedTuple):
  """The static configuration of an `nn.Conv` call, as `lax.conv_general_dilated` sees it.

  Attributes:
    kernel_size: spatial kernel shape `(k_1, ..., k_d)`.
    strides, input_dilation, kernel_dilation: per spatial dimension.
    padding: `'SAME'`, `'VALID'` or `((lo, hi), ...)` per spatial dimension.
    pre_padding: `(numpy pad mode, ((lo, hi), ...))` applied to the spatial axes before a
      `'VALID'` convolution (Flax's `'CIRCULAR'`, `'REFLECT'` and `'CAUSAL'`), or None.
  """

  kernel_size: Tuple[int, ...]
  strides: Tuple[int, ...]
  padding: Any
  input_dilation: Tuple[int, ...]
  kernel_dilation: Tuple[int, ...]
  pre_padding: Optional[Tuple[str, Tuple[Tuple[int, int], ...]]]



def conv_geometry(module: nn.Conv) -> ConvGeometry:
  """Flax's canonicalisation of an `nn.Conv`'s attributes (flax/linen/linear.py, `_Conv`)."""
  kernel_size = ((module.kernel_size,) if isinstance(module.kernel_size, int)
                 else tuple(module.kernel_size))
  rank = len(kernel_size)

  def per_dim(value: Any) -> Tuple[int, ...]:
    if value is None:
      value = 1
    return (value,) * rank if isinstance(value, int) else tuple(value)

  kernel_dilation = per_dim(module.kernel_dilation)
  padding = flax_linear.canonicalize_padding(module.padding, rank)
  pre_padding = None
  if padding in ('CIRCULAR', 'REFLECT'):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    pads = tuple(((k - 1) // 2, k // 2) for k in dilated)
    pre_padding = ({'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}[padding], pads)
    padding = 'VALID'
  elif padding == 'CAUSAL':
    pre_padding = ('constant', ((kernel_dilation[0] * (kernel_size[0] - 1), 0),))
    padding = 'VALID'
  elif not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  return ConvGeometry(kernel_size=kernel_size, strides=per_dim(module.strides), padding=padding,
                      input_dilation=per_dim(module.input_dilation),
                      kernel_dilation=kernel_dilation, pre_padding=pre_padding)


def _conv_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Channels-last input/output and `[k_1, ..., k_d, c, o]` kernel, like Flax's `nn.Conv`."""
  lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def _conv_input(geometry: ConvGeometry, x: jax.Array) -> jax.Array:
  """Flattens all batch axes into one, `[B, *spatial, c]`, and applies Flax's pre-padding."""
  spatial = len(geometry.kernel_size)
  x = x.reshape((-1,) + x.shape[-(spatial + 1):])
  if geometry.pre_padding is not None:
    mode, pads = geometry.pre_padding
    x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), mode=mode)
  return x


def conv_patches(geometry: ConvGeometry, x: jax.Array) -> jax.Array:
  """im2col patches `[B, *out_spatial, prod(k) * c]` in HWIO order `(k_1, ..., k_d, c)`."""
  x = _conv_input(geometry, x)
  channels = x.shape[-1]
  patches = lax.conv_general_dilated_patches(
      x, geometry.kernel_size, geometry.strides, geometry.padding,
      lhs_dilation=geometry.input_dilation, rhs_dilation=geometry.kernel_dilation,
      dimension_numbers=_conv_dimension_numbers(x.ndim), precision=lax.Precision.HIGHEST)
  leading = patches.shape[:-1]
  patches = patches.reshape(leading + (channels,) + geometry.kernel_size)  # (c, k...)
  patches = jnp.moveaxis(patches, len(leading), -1)  # (k..., c)
  return patches.reshape(leading + (-1,))


def conv_patch_sums(geometry: ConvGeometry, x: jax.Array) -> jax.Array:
  """Sum of the im2col patches over output locations, `[B, prod(k) * c]`, HWIO order.

  `sum_r patch_r = d/dK sum_r conv(x, K)_r` for a kernel `K [*k, c, 1]`: one convolution per
  example, no patches materialised.
  """
  x = _conv_input(geometry, x)
  kernel = jnp.zeros(geometry.kernel_size + (x.shape[-1], 1), x.dtype)
  dimension_numbers = _conv_dimension_numbers(x.ndim)

  def summed_output(kernel, example):
    return jnp.sum(lax.conv_general_dilated(
        example[None], kernel, geometry.strides, geometry.padding,
        lhs_dilation=geometry.input_dilation, rhs_dilation=geometry.kernel_dilation,
        dimension_numbers=dimension_numbers, precision=lax.Precision.HIGHEST))

  sums = jax.vmap(jax.grad(summed_output), in_axes=(None, 0))(kernel, x)
  return sums.reshape(x.shape[0], -1)


