"""The curvature block interface: what one batch gives a layer, and what a block does with it.

A covered layer's gradient is a matrix `G [dim_a, dim_b]` (`dim_a = P_in (+1 with a bias)`,
`dim_b = P_out`; see `kfac.param_paths`). A *curvature block* approximates the layer's curvature
and multiplies `G` by its damped inverse. Blocks are pure functions over an explicit state
(the kfac-jax idea, in optax style):

* `init() -> state`: zero statistics and an identity-like preconditioner;
* `statistics(LayerStatistics) -> stats`: what the block keeps of one batch's rows;
* `update(state, stats, ema_weight) -> state` on statistics steps (every T_cov): the block owns
  its exponential average `F <- (1 - w) F + w F_batch` and any online decomposition;
* `invert(state, damping) -> state` on inverse steps (every T_inv): refresh the decomposition;
* `apply(state, grad, damping) -> preconditioned grad`, both `[dim_a, dim_b]`.

`kfac.curvature` owns the gating, the EMA weight `w = max(1 - ema_decay, 1 / (count + 1))`, and
rejects non-finite new states. A block is chosen per layer by `inverse_method` through the
registry in `kfac.blocks`; a factory `make_<kind>_block(dim_a, dim_b, options)` raises
`UnsupportedLayer` when it cannot serve a layer (strict mode reports it as an error, otherwise the
layer falls back).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp

# How a Kronecker factor is stored when its side is above `max_factor_dim`, per side:
# the `[d, d]` matrix, its diagonal `[d]`, or its mean eigenvalue `tr F / d` as `[1]`.
FACTOR_FORMS = ('full', 'diagonal', 'identity')


class LayerStatistics(NamedTuple):
  """What one batch gives one layer (computed by `kfac.layers` for the layer's flavour).

  Attributes:
    a_rows: `[n_a, dim_a]`: this batch's `A = a_rows.T @ a_rows` (1/N, 1/R, masks and the bias
      column (last) folded in). reduce: `n_a = N`; expand: `n_a = N * R`.
    g_rows: `[n_b, dim_b]`: this batch's `B = g_rows.T @ g_rows` (MC samples folded in).
    a_mean: `[dim_a]`: weighted mean activation over valid examples and positions (bias
      coordinate = 1): MAC's a-bar; for the value projection of an attention module, the
      attention-weighted mean `kfac.mac.attention_weighted_mean`.

  Unused fields cost nothing: everything is traced under jit and XLA drops dead code.
  """

  a_rows: jax.Array
  g_rows: jax.Array
  a_mean: jax.Array


class CurvatureBlock(NamedTuple):
  """One layer's curvature approximation: pure functions over an explicit state.

  Attributes:
    kind: explicit tag: 'eigh', 'pi_eigh', 'cholesky', 'diagonal', 'identity', 'rsvd', 'brand',
      'brand_rsvd', 'brand_corrected', 'mac', 'mac_input' (never inferred from array ranks).
    init: `() -> state` pytree (shapes from the closure).
    statistics: `LayerStatistics -> stats` pytree.
    update: `(state, stats, ema_weight) -> state` (statistics steps).
    invert: `(state, damping) -> state` (inverse steps).
    apply: `(state, grad [dim_a, dim_b], damping) -> [dim_a, dim_b]`.
    additive: `statistics` is a sum over the rows (Gram matrices, their diagonals): the
      statistics of a batch are the sum of those of its row chunks, so with data parallelism
      each device computes its chunk's and one all-reduce sums every additive layer's
      (`kfac.distributed_statistics.summed_over_devices`). False: computed on the whole rows.
  """

  kind: str
  init: Callable[[], Any]
  statistics: Callable[[LayerStatistics], Any]
  update: Callable[[Any, Any, jax.Array], Any]
  invert: Callable[[Any, jax.Array], Any]
  apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
  additive: bool = False


class BlockOptions(NamedTuple):
  """Static settings every block factory receives (add fields with defaults).

  Attributes:
    dtype: dtype of every array of the block state.
    eigh_dtype: dtype decompositions run in (at least float32; float64 needs jax x64 mode).
    rank: target rank of low-rank blocks.
    oversampling: extra columns of randomised range finders.
    power_iterations: power iterations of randomised range finders.
    forms: `(form of A, form of B)`, each in `FACTOR_FORMS`: how the Kronecker-factored blocks
      store each factor (a side above `max_factor_dim` falls back to 'diagonal' or 'identity').
    lowrank_damping: 'pi' or 'exact': the damping of the low-rank blocks ('rsvd', 'brand',
      'brand_rsvd', 'brand_corrected'; see `kfac.blocks.lowrank`).
    brand_max_rows: 0, or the most rows a Brand update takes: a batch with more is compressed
      to this many by a Gaussian sketch (unbiased; `kfac.lowrank.sketch_rows`).
    correction_fraction: the share of each basis' columns that 'brand_corrected' corrects on an
      inverse step (`kfac.lowrank.correction_columns`).
  """

  dtype: Any = jnp.float32
  eigh_dtype: Any = jnp.float32
  rank: int = 64
  oversampling: int = 10
  power_iterations: int = 2
  forms: Tuple[str, str] = ('full', 'full')
  lowrank_damping: str = 'pi'
  brand_max_rows: int = 0
  correction_fraction: float = 0.2


class UnsupportedLayer(ValueError):
  """Raised by a block factory for a layer (dimensions, options) the block cannot serve."""


BlockFactory = Callable[[int, int, BlockOptions], CurvatureBlock]
