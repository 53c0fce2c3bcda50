"""Low-rank eigendecompositions of Kronecker factors and their damped inverses, linear in `d`.

The fast inverses of Puiu's RS-KFAC (arXiv 2206.15397) and B-KFAC ("Brand New K-FACs", arXiv
2210.08494) approximate a PSD factor `F [d, d]` by `U diag(D) U^T` with `U [d, r]` orthonormal
columns and `D [r] >= 0` (the `r` largest eigenpairs). The pure, jittable pieces:

* `randomized_eigh`: the rank-`r` decomposition of a full factor by a randomised range finder
  with power iterations (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.3): `O(d^2 r)`.
* `corrected`: B-KFAC-c's refresh of some of the basis' columns against the full average.
* `brand_update`: the rank-`r` decomposition of `(1 - w) U D U^T + w X^T X` from the old one and
  the batch's rows `X [n, d]` (Brand 2006's online update, as B-KFAC uses it):
  `O(d (r + n)^2 + (r + n)^3)`, linear in `d`; no `[d, d]` matrix is formed while `r + n < d`.
* `damped_solve_left` / `damped_solve_right` / `pi_damped_apply` / `exact_damped_apply`: the
  damped inverse of a low-rank factor (or of the Kronecker product of two) times a gradient
  matrix, `O(d r)` per column: with the truncated tail of `F` taken as 0,

      (U D U^T + lam I)^-1 v = U (D + lam)^-1 U^T v + (v - U U^T v) / lam
                             = v / lam - U diag(D / (lam (D + lam))) U^T v.

  The second form is what is computed: a column of `U` whose `D` is 0 has weight 0, so columns
  that only pad the rank (a factor of rank `< r`) never enter the result.

Eigenproblems run in at least float32 (`eigh_dtype` may ask for float64 under jax's x64 mode);
results come back in the dtype of the inputs. Eigenvalues are clipped at 0 (round-off).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp


class LowRankEigen(NamedTuple):
  """`F ~ basis diag(values) basis^T`: `basis [d, r]` orthonormal columns, `values [r] >= 0`,
  largest first."""

  basis: jax.Array
  values: jax.Array


def _compute_dtype(dtype: Any, eigh_dtype: Any) -> jnp.dtype:
  """The wider of `dtype`, `eigh_dtype` and float32 (float64 only under jax's x64 mode)."""
  wanted = jnp.promote_types(jnp.promote_types(dtype, eigh_dtype), jnp.float32)
  return jax.dtypes.canonicalize_dtype(wanted)


def _top_eigenpairs(small: jax.Array, rank: int) -> Tuple[jax.Array, jax.Array]:
  """The `rank` largest eigenpairs of the symmetrised `small [k, k]`: vectors `[k, rank]`, values
  `[rank]` clipped at 0, largest first."""
  values, vectors = jnp.linalg.eigh(0.5 * (small + small.T))
  return vectors[:, ::-1][:, :rank], jnp.maximum(values[::-1][:rank], 0.0)


def empty_eigen(dim: int, rank: int, dtype: Any = jnp.float32) -> LowRankEigen:
  """The decomposition of the zero factor: `basis = I[:, :rank]`, `values = 0`."""
  rank = min(rank, dim)
  return LowRankEigen(jnp.eye(dim, rank, dtype=dtype), jnp.zeros([rank], dtype))


def randomized_eigh(matrix: jax.Array, rank: int, key: jax.Array, oversampling: int = 10,
                    power_iterations: int = 2, eigh_dtype: Any = jnp.float32) -> LowRankEigen:
  """Rank-`rank` eigendecomposition of a symmetric PSD `matrix [d, d]` (randomised).

  Halko, Martinsson & Tropp (2011): with `k = min(rank + oversampling, d)` and a Gaussian
  `Omega [d, k]`, `Q = orth(M Omega)`, then `power_iterations` times `Q = orth(M Q)` (subspace
  iteration, re-orthonormalised by QR each time: the error falls like
  `(lam_{k+1} / lam_rank)^(2 q + 1)`); finally Rayleigh-Ritz: `eigh(Q^T M Q) = V diag(D) V^T`,
  `U = Q V` (top `rank` columns). Exact (up to round-off) when `k = d` or `rank M <= k`.

  Args:
    matrix: `[d, d]` symmetric PSD (symmetrised here).
    rank: `r`, clamped to `d`.
    key: PRNG key of the sketch.
    oversampling: extra sketch columns `p`.
    power_iterations: `q`.
    eigh_dtype: dtype of the computation (at least float32).

  Returns:
    `LowRankEigen(basis [d, r], values [r])` in `matrix.dtype`.
  """
  dim = matrix.shape[0]
  rank, sketch = min(rank, dim), min(rank + oversampling, dim)
  compute = _compute_dtype(matrix.dtype, eigh_dtype)
  sym = matrix.astype(compute)
  sym = 0.5 * (sym + sym.T)
  basis, _ = jnp.linalg.qr(sym @ jax.random.normal(key, (dim, sketch), compute))
  for _ in range(power_iterations):
    basis, _ = jnp.linalg.qr(sym @ basis)
  vectors, values = _top_eigenpairs(basis.T @ sym @ basis, rank)
  return LowRankEigen((basis @ vectors).astype(matrix.dtype), values.astype(matrix.dtype))


def brand_update(eigen: LowRankEigen, rows: jax.Array, weight: jax.Array,
                 eigh_dtype: Any = jnp.float32) -> LowRankEigen:
  """Rank-`r` eigendecomposition of `(1 - w) U D U^T + w X^T X` (Brand's online update).

  With `[U, X^T] = Q T` (thin Householder QR, `Q [d, k]` orthonormal, `k = min(d, r + n)`;
  `Q`'s columns beyond `U`'s span the part of `X^T` orthogonal to `U`) and `T = [T_U, T_X]`
  split after `r` columns, the average is `Q S Q^T` with the small

      S = (1 - w) T_U diag(D) T_U^T + w T_X T_X^T        [k, k],

  so `eigh(S) = V diag(L) V^T` gives the new decomposition `U' = Q V`, `D' = L` (top `r`). It is
  exact while the average's rank stays `<= r`; otherwise the smallest eigenpairs are dropped at
  every update, and these truncations accumulate (B-KFAC's drift, cancelled in B-R-KFAC by a
  periodic `randomized_eigh` of the full average). QR of `[U, X^T]` rather than of the projected
  residual `X^T - U U^T X^T` keeps `Q` orthonormal when `X` adds fewer than `n` new directions
  (rank-deficient rows) and re-orthonormalises `U` against round-off at every step.

  When `r + n >= d` (static shapes) `S` would be no smaller than the factor: the average is then
  formed as a `[d, d]` matrix and decomposed by `eigh` (`O(n d^2 + d^3)`, the cost of the 'eigh'
  block; the same result up to round-off).

  Args:
    eigen: the old `U [d, r]`, `D [r]`.
    rows: `X [n, d]`, the batch's factor is `X^T X`.
    weight: `w`, scalar weight of the batch (1 replaces the average by `X^T X`).
    eigh_dtype: dtype of the computation (at least float32).

  Returns:
    The new `LowRankEigen(basis [d, r], values [r])` in `eigen.basis.dtype`.
  """
  dtype = eigen.basis.dtype
  compute = _compute_dtype(dtype, eigh_dtype)
  rank = eigen.values.shape[0]
  basis, values = eigen.basis.astype(compute), eigen.values.astype(compute)
  weight = jnp.asarray(weight, compute)
  rows = rows.astype(compute)
  if rank + rows.shape[0] >= basis.shape[0]:  # Static: S would be no smaller than the factor.
    average = (1.0 - weight) * (basis * values[None, :]) @ basis.T + weight * (rows.T @ rows)
    vectors, new_values = _top_eigenpairs(average, rank)
    return LowRankEigen(vectors.astype(dtype), new_values.astype(dtype))
  q, t = jnp.linalg.qr(jnp.concatenate([basis, rows.T], axis=1))
  t_old, t_new = t[:, :rank], t[:, rank:]
  small = (1.0 - weight) * (t_old * values[None, :]) @ t_old.T + weight * (t_new @ t_new.T)
  vectors, new_values = _top_eigenpairs(small, rank)
  return LowRankEigen((q @ vectors).astype(dtype), new_values.astype(dtype))


def correction_columns(rank: int, fraction: float) -> int:
  """How many of `rank` basis columns B-KFAC-c corrects at a time: `round(fraction rank + 1)`
  (Puiu's B-R-C code), at most `rank`."""
  return min(round(fraction * rank + 1), rank)


def corrected(eigen: LowRankEigen, matrix: jax.Array, key: jax.Array, num_columns: int,
              eigh_dtype: Any = jnp.float32) -> LowRankEigen:
  """B-KFAC-c's correction: `num_columns` columns of the basis, drawn uniformly without
  replacement, replaced by the Rayleigh-Ritz pairs of the full average on their span.

  With `Q_s [d, k]` the drawn columns and `eigh(Q_s^T F Q_s) = V diag(L) V^T`, the columns become
  `Q_s V` and their values `L` (a rotation within their span: the basis stays orthonormal); the
  pairs are re-sorted largest first. On that subspace `U diag(D) U^T` then equals `P_s F P_s`
  (`P_s = Q_s Q_s^T`), cancelling what Brand's truncated updates lost there. With every column
  drawn and `F`'s range inside the basis' span the result is `F`'s decomposition. Cost
  `O(d^2 k + k^3)`, against `O(d^2 (r + p)(q + 1))` for `randomized_eigh` (Puiu's B-R-C code
  refreshes 20 % of the modes every 5 statistics steps).

  Args:
    eigen: the current `U [d, r]`, `D [r]` (Brand-updated).
    matrix: the full average `F [d, d]` (symmetrised here).
    key: PRNG key of the draw.
    num_columns: `k`, clamped to `r`.
    eigh_dtype: dtype of the computation (at least float32).

  Returns:
    `LowRankEigen(basis [d, r], values [r])` in `eigen.basis.dtype`.
  """
  dtype = eigen.basis.dtype
  compute = _compute_dtype(dtype, eigh_dtype)
  rank = eigen.values.shape[0]
  drawn = jax.random.permutation(key, rank)[:min(num_columns, rank)]
  basis, values = eigen.basis.astype(compute), eigen.values.astype(compute)
  sym = matrix.astype(compute)
  sym = 0.5 * (sym + sym.T)
  columns = basis[:, drawn]
  new_values, vectors = jnp.linalg.eigh(columns.T @ sym @ columns)
  basis = basis.at[:, drawn].set(columns @ vectors)
  values = values.at[drawn].set(jnp.maximum(new_values, 0.0))
  order = jnp.argsort(-values)
  return LowRankEigen(basis[:, order].astype(dtype), values[order].astype(dtype))


def sketch_rows(rows: jax.Array, num_rows: int, key: jax.Array) -> jax.Array:
  """`S X [num_rows, d]` for `X [n, d]`, `S [num_rows, n]` with i.i.d. `N(0, 1 / num_rows)`
  entries: an unbiased compression of the batch's factor, `E[(S X)^T (S X)] = X^T X`.

  Keeps Brand's update linear in `d` when a batch has many rows (`n >= d`), at the price of
  sketch noise of relative size about `1 / sqrt(num_rows)` per batch (averaged by the EMA
  over batches). Cost `O(num_rows n d)`.
  """
  sketch = jax.random.normal(key, (num_rows, rows.shape[0]), rows.dtype)
  return (sketch / jnp.sqrt(jnp.asarray(num_rows, rows.dtype))) @ rows


def _inverse_correction(values: jax.Array, damping: jax.Array) -> jax.Array:
  """`1 / (D + lam) - 1 / lam = -D / (lam (D + lam))`, elementwise (no cancellation)."""
  return -values / (damping * (values + damping))


def damped_solve_left(eigen: LowRankEigen, matrix: jax.Array, damping: jax.Array) -> jax.Array:
  """`(U D U^T + lam I)^-1 M` for `M [d, m]`: `M / lam - U diag(D / (lam (D + lam))) U^T M`."""
  coefficients = _inverse_correction(eigen.values, damping)
  return matrix / damping + eigen.basis @ (coefficients[:, None] * (eigen.basis.T @ matrix))


def damped_solve_right(eigen: LowRankEigen, matrix: jax.Array, damping: jax.Array) -> jax.Array:
  """`M (U D U^T + lam I)^-1` for `M [m, d]` (the transpose of `damped_solve_left`)."""
  coefficients = _inverse_correction(eigen.values, damping)
  return matrix / damping + ((matrix @ eigen.basis) * coefficients[None, :]) @ eigen.basis.T


def pi_damped_apply(eigen_a: LowRankEigen, eigen_b: LowRankEigen, grad: jax.Array,
                    damping_a: jax.Array, damping_b: jax.Array) -> jax.Array:
  """`(A + d_A I)^-1 G (B + d_B I)^-1` with `A ~ U_A D_A U_A^T`, `B ~ U_B D_B U_B^T`.

  `G [dim_a, dim_b]`; the row-major `vec` of the result is `(A + d_A I)^-1 kron (B + d_B I)^-1
  vec(G)`. Cost `O(dim_a dim_b (r_A + r_B))`. The split `(d_A, d_B)` is the caller's (pi
  damping: `d_A d_B = damping`).
  """
  return damped_solve_right(eigen_b, damped_solve_left(eigen_a, grad, damping_a), damping_b)


def exact_damped_apply(eigen_a: LowRankEigen, eigen_b: LowRankEigen, grad: jax.Array,
                       damping: jax.Array) -> jax.Array:
  """`(A kron B + lam I)^-1 vec(G)` with `A`, `B` low rank, in the joint eigenbasis.

  `A kron B` has eigenvalues `D_A[i] D_B[j]` on `U_A[:, i] kron U_B[:, j]` and 0 on the rest, so
  with `C = U_A^T G U_B [r_A, r_B]`:

      result = G / lam - U_A [C * D_A D_B^T / (lam (D_A D_B^T + lam))] U_B^T,

  cost `O(dim_a dim_b (r_A + r_B))`. Truncation makes every direction in the tail of either factor
  an eigen-direction of value 0 (weight `1 / lam`), even where the other factor is large.
  """
  core = eigen_a.basis.T @ grad @ eigen_b.basis
  coefficients = _inverse_correction(eigen_a.values[:, None] * eigen_b.values[None, :], damping)
  return grad / damping + eigen_a.basis @ (coefficients * core) @ eigen_b.basis.T
