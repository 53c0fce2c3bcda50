"""Low-rank curvature blocks: 'rsvd' (RS-KFAC), 'brand' (B-KFAC), 'brand_rsvd' (B-R-KFAC),
'brand_corrected' (B-KFAC-c).

Puiu's fast K-FAC inverses (RS-KFAC, arXiv 2206.15397; "Brand New K-FACs", arXiv 2210.08494)
replace the `eigh` of each Kronecker factor (cubic in its side `d`) by a rank-`r` decomposition
`F ~ U diag(D) U^T` (`kfac.lowrank`):

* 'rsvd': the exponential averages of `A` and `B` as `[d, d]` matrices (statistics steps);
  a randomised eigendecomposition of each to rank `r` on inverse steps, `O(d^2 r)`.
* 'brand': no `[d, d]` matrix at all: the rank-`r` decomposition of each average is updated on
  every statistics step from the batch's rows by Brand's online update, `O(d (r + n)^2)` for
  `n` rows; inverse steps do nothing. Truncation errors accumulate (drift).
* 'brand_rsvd': 'brand' on statistics steps, plus the full averages; on inverse steps the
  decomposition is overwritten by a randomised one of the full average, which cancels the
  drift. Use it with a long `inverse_update_every`.
* 'brand_corrected' (B-KFAC-c, the seed's "correction" of the B-update): 'brand' on statistics
  steps, plus the full averages; on inverse steps a random fraction of the basis' columns
  (`BlockOptions.correction_fraction`, 0.2 as in the author's B-R-C code, plus one column) is
  replaced by the Rayleigh-Ritz pairs of the full average on their span, `O(d^2 k)` for `k`
  columns: cheaper than a re-decomposition, cancelling the drift on a share of the modes at a
  time. The author's code corrects every 5 statistics steps: `inverse_update_every = 5
  cov_update_every`.

Damping (`BlockOptions.lowrank_damping`): 'pi' (default; per factor, the form of RS-KFAC's apply)
`(A + d_A I)^-1 G (B + d_B I)^-1` with the split of `kfac.blocks.kron.pi_damping` from the exact
traces of the averages (kept as scalars, so truncation does not shift pi); or 'exact'
`(A kron B + damping I)^-1` in the joint eigenbasis. Both cost `O(dim_a dim_b r)`. Pi is the
default because exact damping gives every direction in the truncated tail of one factor the
weight `1 / damping`, however large the other factor is there; pi gives it
`1 / ((D_i + d_A) d_B)`. Until the first decomposition (statistics step for 'brand' and
'brand_rsvd', inverse step for 'rsvd') `apply` is the identity, like 'pi_eigh'.

Brand's update pays off only while a batch adds few rows: its small eigenproblem has side
`r + n` (expand on a convolution or sequence gives `n = N R` rows, reduce `n = N`); see
`brand_rows_note`. With `BlockOptions.brand_max_rows = m > 0` a batch of more than `m` rows is
compressed to `m` rows by an unbiased Gaussian sketch first (`kfac.lowrank.sketch_rows`; the
traces and the full averages of 'brand_rsvd' use the exact rows).

Statistics: 'rsvd' keeps Gram matrices (additive over examples: under data parallelism each
device forms its rows' and one all-reduce sums them with the other additive blocks',
`kfac.curvature.block_statistics`); 'brand' and 'brand_rsvd' keep the rows `X` themselves, which
are concatenated across devices instead: in a jitted step over a sharded batch XLA gathers the
row chunks and every device runs the same Brand update (inside a `shard_map` with per-device
valid counts, `gather_rows_over_devices` does the same).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from kfac import lowrank
from kfac.blocks.base import BlockOptions, CurvatureBlock, LayerStatistics, UnsupportedLayer
from kfac.blocks.kron import gram, pi_damping

LOWRANK_DAMPINGS = ('pi', 'exact')


class LowRankState(NamedTuple):
  """State of a low-rank block.

  Attributes:
    factor_a, factor_b: the `[d, d]` averages ('rsvd', 'brand_rsvd', 'brand_corrected'); None
      for 'brand'.
    eigen_a, eigen_b: `LowRankEigen` (basis `[d, r]`, values `[r]`) of each average.
    mean_a, mean_b: `[]`, `tr F / d` of each average (exact, for pi).
    key: PRNG key of the randomised decompositions and row sketches, split on each use.
    decomposed: bool `[]`, whether `eigen_a`, `eigen_b` hold a decomposition yet (until then
      `apply` is the identity).
  """

  factor_a: Optional[jax.Array]
  factor_b: Optional[jax.Array]
  eigen_a: lowrank.LowRankEigen
  eigen_b: lowrank.LowRankEigen
  mean_a: jax.Array
  mean_b: jax.Array
  key: jax.Array
  decomposed: jax.Array


def brand_rows_note(dim: int, rank: int, rows: int, max_rows: int = 0) -> Optional[str]:
  """Why Brand's update does not pay off on a factor of side `dim` fed `rows` rows per batch
  (sketched down to `max_rows` when `0 < max_rows < rows`), or None where it does.

  Brand's update costs `O(dim (r + n)^2 + (r + n)^3)` against `eigh`'s `O(dim^3)`; it saves
  little once its small eigenproblem (side `r + n`) is more than half the factor's side, and at
  `r + n >= dim` `kfac.lowrank.brand_update` decomposes the `[dim, dim]` average itself.
  """
  rank, rows = min(rank, dim), (min(rows, max_rows) if max_rows > 0 else rows)
  small = rank + rows
  if 2 * small <= dim:
    return None
  if small >= dim:
    return (f'{rows} rows per batch + rank {rank} >= {dim}: each Brand update is a dense eigh of '
            f'the {dim}x{dim} average (correct, as slow as eigh; see brand_max_rows)')
  return (f'{rows} rows per batch + rank {rank} = {small} > {dim}/2: the Brand update is '
          f'hardly cheaper than an eigh of the {dim}x{dim} factor (see brand_max_rows)')


def gather_rows_over_devices(rows: jax.Array, num_valid: jax.Array, axis_name: str) -> jax.Array:
  """The global batch's rows for Brand's update under data parallelism (inside `shard_map`).

  Device `d`'s rows `X_d [n, dim]` give its mean factor `F_d = X_d^T X_d` over `n_d` valid
  examples; the global factor `sum_d n_d F_d / sum_d n_d` (`kfac.distributed_statistics`,
  equation (2)) is `X^T X` for `X = concat_d(sqrt(n_d / sum n) X_d)` `[D n, dim]`: rows are concatenated, not
  averaged (the 'brand' statistics are rows, not additive like Gram matrices).
  """
  share = num_valid.astype(rows.dtype) / jax.lax.psum(num_valid, axis_name).astype(rows.dtype)
  return jax.lax.all_gather(rows * jnp.sqrt(share), axis_name, tiled=True)


def _make_lowrank_block(kind: str, dim_a: int, dim_b: int, options: BlockOptions, *,
                        brand: bool, refresh: Optional[str]) -> CurvatureBlock:
  """A low-rank block: Brand updates on statistics steps (`brand`), and/or full averages with,
  on inverse steps, a randomised re-decomposition (`refresh='rsvd'`) or B-KFAC-c's correction of
  some of the basis' columns (`refresh='correct'`, `kfac.lowrank.corrected`)."""
  keeps_full = refresh is not None  # Keeps the [d, d] averages.
  damping_form = options.lowrank_damping
  if damping_form not in LOWRANK_DAMPINGS:
    raise ValueError(f'lowrank_damping must be one of {LOWRANK_DAMPINGS}; got {damping_form!r}')
  if keeps_full and tuple(options.forms) != ('full', 'full'):
    raise UnsupportedLayer(f'{kind!r} keeps both [d, d] factors; got forms {options.forms}')
  dtype = options.dtype

  def init() -> LowRankState:
    square = (lambda dim: jnp.zeros([dim, dim], dtype)) if keeps_full else (lambda dim: None)
    zero = jnp.zeros([], dtype)
    return LowRankState(square(dim_a), square(dim_b),
                        lowrank.empty_eigen(dim_a, options.rank, dtype),
                        lowrank.empty_eigen(dim_b, options.rank, dtype), zero, zero,
                        jax.random.PRNGKey(0), jnp.asarray(False))

  def statistics(rows: LayerStatistics) -> Tuple[jax.Array, jax.Array]:
    if brand:
      return rows.a_rows.astype(dtype), rows.g_rows.astype(dtype)
    return gram(rows.a_rows, 'full', dtype), gram(rows.g_rows, 'full', dtype)

  def compressed(rows: jax.Array, key: jax.Array) -> jax.Array:
    if 0 < options.brand_max_rows < rows.shape[0]:  # Static shapes.
      return lowrank.sketch_rows(rows, options.brand_max_rows, key)
    return rows

  def update(state: LowRankState, stats: Tuple[jax.Array, jax.Array],
             weight: jax.Array) -> LowRankState:
    weight = weight.astype(dtype)

    def average(old, new):
      return (1 - weight) * old + weight * new

    grams = tuple(rows.T @ rows for rows in stats) if brand and keeps_full else stats
    traces = tuple(jnp.sum(jnp.square(rows)) for rows in stats) if brand else tuple(
        jnp.trace(matrix) for matrix in stats)
    new = dict(mean_a=average(state.mean_a, traces[0] / dim_a),
               mean_b=average(state.mean_b, traces[1] / dim_b))
    if keeps_full:
      new.update(factor_a=average(state.factor_a, grams[0]),
                 factor_b=average(state.factor_b, grams[1]))
    if brand:
      key, key_a, key_b = jax.random.split(state.key, 3)
      rows_a, rows_b = (compressed(rows, side_key) for rows, side_key in zip(stats, (key_a, key_b)))
      new.update(eigen_a=lowrank.brand_update(state.eigen_a, rows_a, weight, options.eigh_dtype),
                 eigen_b=lowrank.brand_update(state.eigen_b, rows_b, weight, options.eigh_dtype),
                 decomposed=jnp.asarray(True), key=key)
    return state._replace(**new)

  def invert(state: LowRankState, damping: jax.Array) -> LowRankState:
    del damping  # Enters at apply time.
    if not keeps_full:
      return state
    key, key_a, key_b = jax.random.split(state.key, 3)

    def decompose(eigen, factor, key):
      if refresh == 'correct':
        num_columns = lowrank.correction_columns(eigen.values.shape[0],
                                                 options.correction_fraction)
        return lowrank.corrected(eigen, factor, key, num_columns, options.eigh_dtype)
      return lowrank.randomized_eigh(factor, options.rank, key, options.oversampling,
                                     options.power_iterations, options.eigh_dtype)

    return state._replace(eigen_a=decompose(state.eigen_a, state.factor_a, key_a),
                          eigen_b=decompose(state.eigen_b, state.factor_b, key_b), key=key,
                          decomposed=state.decomposed if brand else jnp.asarray(True))

  def apply(state: LowRankState, grad: jax.Array, damping: jax.Array) -> jax.Array:
    matrix = grad.astype(dtype)
    if damping_form == 'exact':
      result = lowrank.exact_damped_apply(state.eigen_a, state.eigen_b, matrix, damping)
    else:
      damping_a, damping_b = pi_damping(state.mean_a, state.mean_b, damping)
      result = lowrank.pi_damped_apply(state.eigen_a, state.eigen_b, matrix, damping_a, damping_b)
    return jnp.where(state.decomposed, result, matrix).astype(grad.dtype)

  return CurvatureBlock(kind=kind, init=init, statistics=statistics, update=update,
                        invert=invert, apply=apply, additive=not brand)


def make_rsvd_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """RS-KFAC: full averages, randomised rank-`options.rank` eigendecompositions on inverse steps."""
  return _make_lowrank_block('rsvd', dim_a, dim_b, options, brand=False, refresh='rsvd')


def make_brand_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """B-KFAC: rank-`options.rank` decompositions of the averages, Brand-updated from the rows."""
  return _make_lowrank_block('brand', dim_a, dim_b, options, brand=True, refresh=None)


def make_brand_rsvd_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """B-R-KFAC: Brand updates on statistics steps, randomised re-decompositions of the full
  averages on inverse steps."""
  return _make_lowrank_block('brand_rsvd', dim_a, dim_b, options, brand=True, refresh='rsvd')


def make_brand_corrected_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """B-KFAC-c: Brand updates on statistics steps, plus the full averages; on inverse steps a
  random `options.correction_fraction` of each basis' columns (and one more) is corrected by
  Rayleigh-Ritz against the full average (`kfac.lowrank.corrected`)."""
  return _make_lowrank_block('brand_corrected', dim_a, dim_b, options, brand=True,
                             refresh='correct')
