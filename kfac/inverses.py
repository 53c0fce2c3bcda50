"""Damped inverses of Kronecker factors and their product with a layer's gradient.

A covered layer has the curvature block `A kron B` on the row-major flattening of its gradient
`G[P_in(+1), P_out]` (DESIGN section 2). This module caches a damped inverse of that block and
multiplies `G` by it, in one of two damping modes (Martens & Grosse 2015, section 6.3):

* **exact**: `(A kron B + damping I)^-1 vec(G)`, computed in the eigenbases
  `A = Q_A diag(lam_A) Q_A^T`, `B = Q_B diag(lam_B) Q_B^T` as
  `Q_A [ (Q_A^T G Q_B) / (lam_A lam_B^T + damping) ] Q_B^T` (elementwise division).
  The cache holds the eigenbases and the eigenvalues; damping enters at application time.
* **pi**: `(A + d_A I)^-1 G (B + d_B I)^-1` with `d_A = pi sqrt(damping)`,
  `d_B = sqrt(damping) / pi` and `pi = sqrt((tr A / dim A) / (tr B / dim B))`, so that
  `d_A d_B = damping`. The cache holds the two damped inverse matrices (two matmuls per step).

A factor is stored in one of three *kinds* (chosen per factor by the optimiser, e.g. when a
factor is above a size limit), told apart by the stored array's rank:

* `'full'`: the `[d, d]` matrix;
* `'diagonal'`: its diagonal `[d]` (the eigenbasis is the identity);
* `'identity'`: its mean eigenvalue `tr F / d`, shape `[1]`: the trace-matched multiple of the
  identity, which keeps the scale of the curvature (a bare identity would not).

Numerics: every matrix is symmetrised before `eigh`; `eigh` runs in float32 at least (float64 on
request, when jax's x64 mode is on); negative eigenvalues (round-off of a PSD factor) are clipped
at 0.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

FACTOR_KINDS = ('full', 'diagonal', 'identity')
DAMPING_MODES = ('exact', 'pi')


# -- Factors of each kind ----------------------------------------------------------------------


def compress_factor(factor: jax.Array, kind: str) -> jax.Array:
  """The stored form of a `[d, d]` factor: `[d, d]` (full), `[d]` (diagonal) or `[1]` (identity)."""
  if kind == 'full':
    return factor
  if kind == 'diagonal':
    return jnp.diagonal(factor)
  if kind == 'identity':
    return jnp.mean(jnp.diagonal(factor), keepdims=True)
  raise ValueError(f'unknown factor kind {kind!r}; expected one of {FACTOR_KINDS}')


def stored_factor_shape(dim: int, kind: str) -> Tuple[int, ...]:
  """Shape of the stored form of a `[dim, dim]` factor of `kind` (see `compress_factor`)."""
  return {'full': (dim, dim), 'diagonal': (dim,), 'identity': (1,)}[kind]


def identity_factor(factor: jax.Array) -> jax.Array:
  """The identity in the stored form (and dtype) of `factor`."""
  if factor.ndim == 2:
    return jnp.eye(factor.shape[0], dtype=factor.dtype)
  return jnp.ones_like(factor)


# -- Eigendecomposition ------------------------------------------------------------------------


def eigh_compute_dtype(dtype: Any, eigh_dtype: Any) -> jnp.dtype:
  """The dtype `eigh` runs in: the wider of the factor's dtype, `eigh_dtype` and float32.

  Float64 needs jax's x64 mode; without it the result is float32 (the optimiser warns once at
  construction, see `optimizer.resolve_dtype`).
  """
  wanted = jnp.promote_types(jnp.promote_types(dtype, eigh_dtype), jnp.float32)
  return jax.dtypes.canonicalize_dtype(wanted)


class FactorEigen(NamedTuple):
  """Eigendecomposition `F = Q diag(values) Q^T` of one stored factor (clipped at 0).

  `basis` is `[d, d]` for a full factor and `None` for a diagonal or identity factor (basis = I);
  `values` is `[d]` (full, diagonal) or `[1]` (identity, broadcast over the dimension).
  """

  basis: Optional[jax.Array]
  values: jax.Array


def symmetric_eigh(matrix: jax.Array, eigh_dtype: Any = jnp.float32) -> Tuple[jax.Array, jax.Array]:
  """Eigenvalues `[d]` (clipped at 0) and eigenvectors `[d, d]` of the symmetrised `matrix`.

  `eigh` runs in `eigh_compute_dtype(matrix.dtype, eigh_dtype)`; results come back in
  `matrix.dtype`.
  """
  compute = matrix.astype(eigh_compute_dtype(matrix.dtype, eigh_dtype))
  values, vectors = jnp.linalg.eigh(0.5 * (compute + compute.T))
  values = jnp.maximum(values, 0.0)
  return values.astype(matrix.dtype), vectors.astype(matrix.dtype)


def factor_eigen(factor: jax.Array, eigh_dtype: Any = jnp.float32) -> FactorEigen:
  """Eigendecomposition of a stored factor of any kind (diagonal kinds need no `eigh`)."""
  if factor.ndim == 2:
    values, basis = symmetric_eigh(factor, eigh_dtype)
    return FactorEigen(basis, values)
  return FactorEigen(None, jnp.maximum(factor, 0.0))


def damped_inverse(eigen: FactorEigen, damping: jax.Array) -> jax.Array:
  """`(F + damping I)^-1` from `F`'s eigendecomposition: `[d, d]`, or the diagonal `[d]` / `[1]`."""
  inverse_values = 1.0 / (eigen.values + damping)
  if eigen.basis is None:
    return inverse_values
  return (eigen.basis * inverse_values[None, :]) @ eigen.basis.T


def pi_damping(mean_a: jax.Array, mean_b: jax.Array, damping: jax.Array
               ) -> Tuple[jax.Array, jax.Array]:
  """Split `damping` into `(d_A, d_B) = (pi sqrt(damping), sqrt(damping) / pi)`.

  `pi = sqrt(mean_a / mean_b)` with `mean_X = tr X / dim X` (Martens & Grosse 2015, section
  6.3); where either mean eigenvalue is not positive and finite (e.g. an all-zero factor), `pi = 1`.
  """
  usable = (mean_a > 0) & (mean_b > 0) & jnp.isfinite(mean_a) & jnp.isfinite(mean_b)
  pi = jnp.where(usable, jnp.sqrt(jnp.where(usable, mean_a / mean_b, 1.0)), 1.0)
  root = jnp.sqrt(damping)
  return pi * root, root / pi


# -- Cached inverses of a Kronecker block ------------------------------------------------------


class ExactInverse(NamedTuple):
  """Cache of exact damping: the eigendecompositions of `A` and `B`."""

  a: FactorEigen
  b: FactorEigen


class PiInverse(NamedTuple):
  """Cache of pi-damping: `(A + d_A I)^-1` and `(B + d_B I)^-1` in their stored forms."""

  a: jax.Array
  b: jax.Array


def exact_inverse(factor_a: jax.Array, factor_b: jax.Array, damping: jax.Array,
                  eigh_dtype: Any = jnp.float32) -> ExactInverse:
  """The exact-damping cache of `A kron B` (damping is applied in `apply_exact_inverse`)."""
  del damping
  return ExactInverse(factor_eigen(factor_a, eigh_dtype), factor_eigen(factor_b, eigh_dtype))


def pi_inverse(factor_a: jax.Array, factor_b: jax.Array, damping: jax.Array,
               eigh_dtype: Any = jnp.float32) -> PiInverse:
  """The pi-damping cache of `A kron B`: the two damped factor inverses.

  `pi` uses the traces of the clipped factors, so the cache is that of their PSD projections.
  """
  eigen_a, eigen_b = factor_eigen(factor_a, eigh_dtype), factor_eigen(factor_b, eigh_dtype)
  damping_a, damping_b = pi_damping(jnp.mean(eigen_a.values), jnp.mean(eigen_b.values), damping)
  return PiInverse(damped_inverse(eigen_a, damping_a).astype(factor_a.dtype),
                   damped_inverse(eigen_b, damping_b).astype(factor_b.dtype))


def _left_multiply(matrix_or_diagonal: jax.Array, grad: jax.Array) -> jax.Array:
  """`M @ grad` for a `[d, d]` M, `diag(m) @ grad` for a `[d]` or `[1]` m."""
  if matrix_or_diagonal.ndim == 2:
    return matrix_or_diagonal @ grad
  return matrix_or_diagonal[:, None] * grad


def _right_multiply(grad: jax.Array, matrix_or_diagonal: jax.Array) -> jax.Array:
  """`grad @ M` for a `[d, d]` M, `grad @ diag(m)` for a `[d]` or `[1]` m."""
  if matrix_or_diagonal.ndim == 2:
    return grad @ matrix_or_diagonal
  return grad * matrix_or_diagonal[None, :]


def apply_exact_inverse(cache: ExactInverse, grad: jax.Array, damping: jax.Array) -> jax.Array:
  """`(A kron B + damping I)^-1 vec(grad)` as a `[P_in(+1), P_out]` matrix.

  `Q_A [ (Q_A^T grad Q_B) / (lam_A lam_B^T + damping) ] Q_B^T`.
  """
  rotated = grad
  if cache.a.basis is not None:
    rotated = cache.a.basis.T @ rotated
  if cache.b.basis is not None:
    rotated = rotated @ cache.b.basis
  scaled = rotated / (cache.a.values[:, None] * cache.b.values[None, :] + damping)
  if cache.a.basis is not None:
    scaled = cache.a.basis @ scaled
  if cache.b.basis is not None:
    scaled = scaled @ cache.b.basis.T
  return scaled


def apply_pi_inverse(cache: PiInverse, grad: jax.Array, damping: jax.Array) -> jax.Array:
  """`(A + d_A I)^-1 grad (B + d_B I)^-1` (damping was split into the cache)."""
  del damping
  return _right_multiply(_left_multiply(cache.a, grad), cache.b)


def identity_exact_inverse(factor_a: jax.Array, factor_b: jax.Array) -> ExactInverse:
  """Exact-damping cache of identity factors: its product divides by `1 + damping`."""
  def eigen(factor):
    basis = identity_factor(factor) if factor.ndim == 2 else None
    return FactorEigen(basis, jnp.ones(factor.shape[:1], factor.dtype))
  return ExactInverse(eigen(factor_a), eigen(factor_b))


def identity_pi_inverse(factor_a: jax.Array, factor_b: jax.Array) -> PiInverse:
  """Pi-damping cache whose product is the identity."""
  return PiInverse(identity_factor(factor_a), identity_factor(factor_b))


class InverseScheme(NamedTuple):
  """How a damped Kronecker inverse is cached and applied (one per damping mode).

  Attributes:
    compute: `(factor_a, factor_b, damping, eigh_dtype) -> cache`.
    apply: `(cache, grad [P_in(+1), P_out], damping) -> preconditioned grad`, same shape.
    identity: `(factor_a, factor_b) -> cache` used before the first good inverse (from shapes).
  """

  compute: Callable[..., Any]
  apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
  identity: Callable[[jax.Array, jax.Array], Any]


def inverse_scheme(damping_mode: str) -> InverseScheme:
  """The `InverseScheme` of `damping_mode`: `'exact'` or `'pi'`."""
  if damping_mode == 'exact':
    return InverseScheme(exact_inverse, apply_exact_inverse, identity_exact_inverse)
  if damping_mode == 'pi':
    return InverseScheme(pi_inverse, apply_pi_inverse, identity_pi_inverse)
  raise ValueError(f'unknown damping_mode {damping_mode!r}; expected one of {DAMPING_MODES}')


def all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every element of every array leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
