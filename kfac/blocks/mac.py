"""MAC blocks (Seung, Lee, Ko 2025, arXiv 2506.08464; the math is in `kfac.mac`, docs/mac.md).

* 'mac': `F = (abar abar^T + damping I) kron I`. State O(d_a): the zero-initialised exponential
  average of `LayerStatistics.a_mean`, its weight mass (bias correction) and the corrected
  `abar` that `invert` caches; `apply` is the Sherman-Morrison step with decoupled damping,
  `(I - abar abar^T / (damping + |abar|^2)) G`. Before the first `invert`: `G` (SGD).
* 'mac_input': the paper's exact input covariance for the layers that read the model input,
  `damping (A + damping I)^-1 G`, `A = a_rows^T a_rows` averaged with *equal* weights over every
  statistics step (the data's covariance, which the paper computes once over the training set;
  the EMA weight is ignored). `invert` is one Cholesky factorisation of `A + damping I`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kfac import defaults, mac
from kfac.blocks.base import BlockOptions, CurvatureBlock, LayerStatistics, UnsupportedLayer
from kfac.blocks.cholesky import damped_cholesky, solve_left


class MacState(NamedTuple):
  """'mac' state: `average [d_a]` and `mass []` of the exponential average of `abar`
  (`kfac.mac.ema_update`), `a_bar [d_a]` the bias-corrected average cached by `invert`."""

  average: jax.Array
  mass: jax.Array
  a_bar: jax.Array


def make_mac_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """The 'mac' block (see the module docstring)."""
  del dim_b  # No output-side factor.

  def init() -> MacState:
    zeros = jnp.zeros((dim_a,), options.dtype)
    return MacState(average=zeros, mass=jnp.zeros((), options.dtype), a_bar=zeros)

  def statistics(layer: LayerStatistics) -> jax.Array:
    return layer.a_mean.astype(options.dtype)

  def update(state: MacState, a_mean: jax.Array, weight: jax.Array) -> MacState:
    average, mass = mac.ema_update(state.average, state.mass, a_mean, weight)
    return state._replace(average=average.astype(options.dtype), mass=mass.astype(options.dtype))

  def invert(state: MacState, damping: jax.Array) -> MacState:
    del damping  # Enters at apply: the cache is abar itself.
    return state._replace(a_bar=mac.bias_corrected(state.average, state.mass))

  def apply(state: MacState, grad: jax.Array, damping: jax.Array) -> jax.Array:
    return mac.mac_precondition(state.a_bar, grad, damping).astype(grad.dtype)

  return CurvatureBlock(kind='mac', init=init, statistics=statistics, update=update,
                        invert=invert, apply=apply)


class MacInputState(NamedTuple):
  """'mac_input' state: `covariance [d_a, d_a]` (equal-weight mean over `count []` statistics
  steps), `cholesky [d_a, d_a]` the lower factor of `covariance + damping I`, `damping []` the
  damping it was built with (`apply` scales by it), 0 before the first `invert`."""

  covariance: jax.Array
  count: jax.Array
  cholesky: jax.Array
  damping: jax.Array


def make_mac_input_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """The 'mac_input' block (see the module docstring).

  Raises:
    UnsupportedLayer: `dim_a > kfac.defaults.MAX_FACTOR_DIM` (a dense `[d_a, d_a]` factor).
  """
  del dim_b
  if dim_a > defaults.MAX_FACTOR_DIM:
    raise UnsupportedLayer(f'input covariance of side {dim_a} > {defaults.MAX_FACTOR_DIM}')

  def init() -> MacInputState:
    eye = jnp.eye(dim_a, dtype=options.dtype)
    return MacInputState(covariance=jnp.zeros((dim_a, dim_a), options.dtype),
                         count=jnp.zeros((), jnp.float32), cholesky=eye,
                         damping=jnp.zeros((), jnp.float32))

  def statistics(layer: LayerStatistics) -> jax.Array:
    rows = layer.a_rows.astype(options.dtype)
    return rows.T @ rows

  def update(state: MacInputState, batch_a: jax.Array, weight: jax.Array) -> MacInputState:
    del weight  # Equal weights: the running mean of the input covariance.
    count = state.count + 1.0
    covariance = state.covariance + (batch_a - state.covariance) / count
    return state._replace(covariance=covariance.astype(options.dtype), count=count)

  def invert(state: MacInputState, damping: jax.Array) -> MacInputState:
    factor = damped_cholesky(state.covariance, damping, options.eigh_dtype)
    return state._replace(cholesky=factor, damping=jnp.asarray(damping, jnp.float32))

  def apply(state: MacInputState, grad: jax.Array, damping: jax.Array) -> jax.Array:
    del damping  # The one the factor was built with.
    solved = state.damping * solve_left(state.cholesky, grad)
    return jnp.where(state.damping > 0, solved, grad).astype(grad.dtype)

  return CurvatureBlock(kind='mac_input', init=init, statistics=statistics, update=update,
                        invert=invert, apply=apply, additive=True)
