"""Kronecker-factored blocks `A kron B` with an `eigh` inverse: 'eigh', 'pi_eigh', 'diagonal',
'identity' (Martens & Grosse 2015, sections 3 and 6.3).

Every block here keeps the exponential averages of `A = a_rows^T a_rows` and
`B = g_rows^T g_rows`, each in its *form* (`BlockOptions.forms`): the `[d, d]` matrix, its
diagonal `[d]`, or the trace-matched identity `tr F / d` as `[1]` (which keeps the scale of the
curvature, a bare identity would not). What differs is the cache `invert` builds and `apply` uses:

* 'eigh' (exact damping): `(A kron B + damping I)^-1 vec(G)` in the eigenbases
  `A = Q_A diag(lam_A) Q_A^T`, `B = Q_B diag(lam_B) Q_B^T`:
  `Q_A [(Q_A^T G Q_B) / (lam_A lam_B^T + damping)] Q_B^T`; damping enters at `apply`.
* 'pi_eigh' (pi-damping): `(A + d_A I)^-1 G (B + d_B I)^-1` with `d_A = pi sqrt(damping)`,
  `d_B = sqrt(damping) / pi`, `pi = sqrt((tr A / dim A) / (tr B / dim B))`, so `d_A d_B =
  damping`; the cache holds the two damped inverses (computed with `eigh`).
* 'diagonal' / 'identity': 'eigh' with both factors in that form (no decomposition at all).

Numerics: matrices are symmetrised before `eigh`, which runs in float32 at least
(`eigh_dtype`); negative eigenvalues (round-off of a PSD factor) are clipped at 0.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from kfac.blocks.base import FACTOR_FORMS, BlockOptions, CurvatureBlock, LayerStatistics


class KronState(NamedTuple):
  """State of a Kronecker-factored block: the averaged factors (in their forms) and the cache
  `invert` built from them (its type depends on the block)."""

  factor_a: jax.Array
  factor_b: jax.Array
  cache: Any


# -- Factors in their forms --------------------------------------------------------------------


def stored_shape(dim: int, form: str) -> Tuple[int, ...]:
  """Shape of a `[dim, dim]` factor stored in `form`: `[dim, dim]`, `[dim]` or `[1]`."""
  return {'full': (dim, dim), 'diagonal': (dim,), 'identity': (1,)}[form]


def gram(rows: jax.Array, form: str, dtype: Any) -> jax.Array:
  """`rows^T rows` (`rows [n, d]`) in `form`, without forming the matrix for the diagonal ones."""
  rows = rows.astype(dtype)
  if form == 'full':
    return rows.T @ rows
  squares = jnp.sum(jnp.square(rows), axis=0)
  return squares if form == 'diagonal' else jnp.mean(squares, keepdims=True)


def mean_eigenvalue(factor: jax.Array) -> jax.Array:
  """`tr F / d` of a stored factor of any form."""
  return jnp.mean(jnp.diagonal(factor)) if factor.ndim == 2 else jnp.mean(factor)


def left_multiply(matrix_or_diagonal: jax.Array, grad: jax.Array) -> jax.Array:
  """`M @ grad` for a `[d, d]` M, `diag(m) @ grad` for a `[d]` or `[1]` m."""
  if matrix_or_diagonal.ndim == 2:
    return matrix_or_diagonal @ grad
  return matrix_or_diagonal[:, None] * grad


def right_multiply(grad: jax.Array, matrix_or_diagonal: jax.Array) -> jax.Array:
  """`grad @ M` for a `[d, d]` M, `grad @ diag(m)` for a `[d]` or `[1]` m."""
  if matrix_or_diagonal.ndim == 2:
    return grad @ matrix_or_diagonal
  return grad * matrix_or_diagonal[None, :]


def identity_like(dim: int, form: str, dtype: Any) -> jax.Array:
  """The identity in `form`."""
  return jnp.eye(dim, dtype=dtype) if form == 'full' else jnp.ones(stored_shape(dim, form), dtype)


def pi_damping(mean_a: jax.Array, mean_b: jax.Array, damping: jax.Array
               ) -> Tuple[jax.Array, jax.Array]:
  """Split `damping` into `(d_A, d_B) = (pi sqrt(damping), sqrt(damping) / pi)`.

  `pi = sqrt(mean_a / mean_b)` with `mean_X = tr X / dim X` (Martens & Grosse 2015, section
  6.3); where either mean is not positive and finite (e.g. an all-zero factor), `pi = 1`.
  """
  usable = (mean_a > 0) & (mean_b > 0) & jnp.isfinite(mean_a) & jnp.isfinite(mean_b)
  pi = jnp.where(usable, jnp.sqrt(jnp.where(usable, mean_a / mean_b, 1.0)), 1.0)
  root = jnp.sqrt(damping)
  return pi * root, root / pi


# -- Eigendecomposition ------------------------------------------------------------------------


def eigh_compute_dtype(dtype: Any, eigh_dtype: Any) -> jnp.dtype:
  """The dtype `eigh` runs in: the wider of the factor's dtype, `eigh_dtype` and float32."""
  wanted = jnp.promote_types(jnp.promote_types(dtype, eigh_dtype), jnp.float32)
  return jax.dtypes.canonicalize_dtype(wanted)


class FactorEigen(NamedTuple):
  """`F = Q diag(values) Q^T` of one stored factor: `basis [d, d]` (None for the diagonal forms,
  whose basis is I) and `values` `[d]` or `[1]`, clipped at 0."""

  basis: Optional[jax.Array]
  values: jax.Array


def factor_eigen(factor: jax.Array, eigh_dtype: Any = jnp.float32) -> FactorEigen:
  """Eigendecomposition of a stored factor (`eigh` of the symmetrised matrix for 'full')."""
  if factor.ndim != 2:
    return FactorEigen(None, jnp.maximum(factor, 0.0))
  compute = factor.astype(eigh_compute_dtype(factor.dtype, eigh_dtype))
  values, vectors = jnp.linalg.eigh(0.5 * (compute + compute.T))
  return FactorEigen(vectors.astype(factor.dtype), jnp.maximum(values, 0.0).astype(factor.dtype))


def damped_inverse(eigen: FactorEigen, damping: jax.Array) -> jax.Array:
  """`(F + damping I)^-1` in F's form from its eigendecomposition."""
  inverse_values = 1.0 / (eigen.values + damping)
  if eigen.basis is None:
    return inverse_values
  return (eigen.basis * inverse_values[None, :]) @ eigen.basis.T


def apply_exact(eigen_a: FactorEigen, eigen_b: FactorEigen, grad: jax.Array,
                damping: jax.Array) -> jax.Array:
  """`(A kron B + damping I)^-1 vec(grad)`: `Q_A [(Q_A^T G Q_B) / (lam_A lam_B^T + d)] Q_B^T`."""
  rotated = grad if eigen_a.basis is None else eigen_a.basis.T @ grad
  rotated = rotated if eigen_b.basis is None else rotated @ eigen_b.basis
  scaled = rotated / (eigen_a.values[:, None] * eigen_b.values[None, :] + damping)
  scaled = scaled if eigen_a.basis is None else eigen_a.basis @ scaled
  return scaled if eigen_b.basis is None else scaled @ eigen_b.basis.T


# -- Blocks ------------------------------------------------------------------------------------


def make_kron_block(kind: str, dim_a: int, dim_b: int, options: BlockOptions,
                    initial_cache: Any, invert_factors: Callable[[jax.Array, jax.Array, Any], Any],
                    apply_cache: Callable[[Any, jax.Array, jax.Array], jax.Array]
                    ) -> CurvatureBlock:
  """A Kronecker-factored block: EMA of `A` and `B` in their forms, plus a method's cache.

  Args:
    kind: the block's tag.
    dim_a, dim_b: sides of `A` and `B`.
    options: `forms` and `dtype` are used here.
    initial_cache: the cache before the first inverse (an identity-like preconditioner).
    invert_factors: `(A, B, damping) -> cache` (stored forms).
    apply_cache: `(cache, grad, damping) -> preconditioned grad`.
  """
  form_a, form_b = options.forms
  for form in options.forms:
    if form not in FACTOR_FORMS:
      raise ValueError(f'factor form must be one of {FACTOR_FORMS}; got {form!r}')

  def init() -> KronState:
    return KronState(jnp.zeros(stored_shape(dim_a, form_a), options.dtype),
                     jnp.zeros(stored_shape(dim_b, form_b), options.dtype), initial_cache)

  def statistics(rows: LayerStatistics) -> Tuple[jax.Array, jax.Array]:
    return gram(rows.a_rows, form_a, options.dtype), gram(rows.g_rows, form_b, options.dtype)

  def update(state: KronState, stats: Tuple[jax.Array, jax.Array], weight: jax.Array) -> KronState:
    weight = weight.astype(options.dtype)
    return state._replace(factor_a=(1 - weight) * state.factor_a + weight * stats[0],
                          factor_b=(1 - weight) * state.factor_b + weight * stats[1])

  def invert(state: KronState, damping: jax.Array) -> KronState:
    return state._replace(cache=invert_factors(state.factor_a, state.factor_b, damping))

  def apply(state: KronState, grad: jax.Array, damping: jax.Array) -> jax.Array:
    return apply_cache(state.cache, grad.astype(options.dtype), damping).astype(grad.dtype)

  return CurvatureBlock(kind=kind, init=init, statistics=statistics, update=update,
                        invert=invert, apply=apply, additive=True)


def make_eigh_block(dim_a: int, dim_b: int, options: BlockOptions, kind: str = 'eigh'
                    ) -> CurvatureBlock:
  """Exact damping `(A kron B + damping I)^-1` through the eigendecompositions of A and B.

  Before the first inverse: unit eigenvalues, so `apply` divides by `1 + damping`.
  """
  def identity_eigen(dim: int, form: str) -> FactorEigen:
    basis = jnp.eye(dim, dtype=options.dtype) if form == 'full' else None
    return FactorEigen(basis, jnp.ones(stored_shape(dim, form)[:1], options.dtype))

  def invert_factors(factor_a, factor_b, damping):
    del damping  # Enters at apply time.
    return (factor_eigen(factor_a, options.eigh_dtype), factor_eigen(factor_b, options.eigh_dtype))

  def apply_cache(cache, grad, damping):
    return apply_exact(cache[0], cache[1], grad, damping)

  initial = (identity_eigen(dim_a, options.forms[0]), identity_eigen(dim_b, options.forms[1]))
  return make_kron_block(kind, dim_a, dim_b, options, initial, invert_factors, apply_cache)


def make_pi_eigh_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """Pi-damping `(A + d_A I)^-1 G (B + d_B I)^-1`, the damped inverses computed with `eigh`.

  `pi` uses the traces of the clipped factors (their PSD projections). Before the first
  inverse: the identity.
  """
  def invert_factors(factor_a, factor_b, damping):
    eigen_a = factor_eigen(factor_a, options.eigh_dtype)
    eigen_b = factor_eigen(factor_b, options.eigh_dtype)
    damping_a, damping_b = pi_damping(jnp.mean(eigen_a.values), jnp.mean(eigen_b.values), damping)
    return (damped_inverse(eigen_a, damping_a).astype(options.dtype),
            damped_inverse(eigen_b, damping_b).astype(options.dtype))

  def apply_cache(cache, grad, damping):
    del damping  # Split into the cache.
    return right_multiply(left_multiply(cache[0], grad), cache[1])

  initial = (identity_like(dim_a, options.forms[0], options.dtype),
             identity_like(dim_b, options.forms[1], options.dtype))
  return make_kron_block('pi_eigh', dim_a, dim_b, options, initial, invert_factors, apply_cache)


def make_diagonal_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """`(diag A kron diag B + damping I)^-1`: elementwise, no decomposition."""
  return make_eigh_block(dim_a, dim_b, options._replace(forms=('diagonal', 'diagonal')),
                         kind='diagonal')


def make_identity_block(dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """`((tr A / dim_a)(tr B / dim_b) + damping)^-1 G`: the trace-matched identity."""
  return make_eigh_block(dim_a, dim_b, options._replace(forms=('identity', 'identity')),
                         kind='identity')
