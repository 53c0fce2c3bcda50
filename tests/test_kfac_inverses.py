"""Damped Kronecker inverses against dense solves built with `jnp.kron` and `jnp.linalg.solve`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac import inverses

DIM_A, DIM_B = 5, 4
DAMPING = 0.05


def random_spd(rng, dim, scale=1.0):
  """A random SPD `[dim, dim]` matrix, eigenvalues in about [0.1, 3] * scale."""
  m = rng.standard_normal((dim, 2 * dim)) / np.sqrt(2 * dim)
  return jnp.asarray(scale * (m @ m.T + 0.1 * np.eye(dim)), jnp.float32)


def factors_and_grad(seed=0, scale_a=1.0, scale_b=1.0):
  """Random SPD `A [5, 5]`, `B [4, 4]` and a gradient `G [5, 4]` (float32)."""
  rng = np.random.default_rng(seed)
  return (random_spd(rng, DIM_A, scale_a), random_spd(rng, DIM_B, scale_b),
          jnp.asarray(rng.standard_normal((DIM_A, DIM_B)), jnp.float32))


def dense_solve(block, grad):
  """Solve `block x = vec(grad)` on the row-major flattening and reshape back."""
  return jnp.linalg.solve(block, grad.reshape(-1)).reshape(grad.shape)


def dense_factor(factor, kind):
  """The `[d, d]` matrix a fallback kind stands for, built independently of the library."""
  if kind == 'full':
    return factor
  if kind == 'diagonal':
    return jnp.diag(jnp.diag(factor))
  return jnp.trace(factor) / factor.shape[0] * jnp.eye(factor.shape[0])


def test_exact_damping_matches_dense_solve():
  a, b, grad = factors_and_grad(0, 2.0, 0.3)
  cache = inverses.exact_inverse(a, b, DAMPING)
  got = inverses.apply_exact_inverse(cache, grad, DAMPING)
  want = dense_solve(jnp.kron(a, b) + DAMPING * jnp.eye(DIM_A * DIM_B), grad)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_pi_damping_matches_dense_solve():
  a, b, grad = factors_and_grad(1, 2.0, 0.3)
  pi = np.sqrt((np.trace(a) / DIM_A) / (np.trace(b) / DIM_B))
  damping_a, damping_b = pi * np.sqrt(DAMPING), np.sqrt(DAMPING) / pi
  cache = inverses.pi_inverse(a, b, DAMPING)
  got = inverses.apply_pi_inverse(cache, grad, DAMPING)
  block = jnp.kron(a + damping_a * jnp.eye(DIM_A), b + damping_b * jnp.eye(DIM_B))
  np.testing.assert_allclose(got, dense_solve(block, grad), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize('kind_a,kind_b', [
    pair for pair in itertools.product(inverses.FACTOR_KINDS, repeat=2)
    if pair != ('full', 'full')])
@pytest.mark.parametrize('mode', inverses.DAMPING_MODES)
def test_fallback_kinds_match_dense_solve(kind_a, kind_b, mode):
  a, b, grad = factors_and_grad(2, 1.5, 0.5)
  stored_a, stored_b = inverses.compress_factor(a, kind_a), inverses.compress_factor(b, kind_b)
  assert stored_a.shape == inverses.stored_factor_shape(DIM_A, kind_a)
  scheme = inverses.inverse_scheme(mode)
  got = scheme.apply(scheme.compute(stored_a, stored_b, DAMPING), grad, DAMPING)
  dense_a, dense_b = dense_factor(a, kind_a), dense_factor(b, kind_b)
  if mode == 'exact':
    block = jnp.kron(dense_a, dense_b) + DAMPING * jnp.eye(DIM_A * DIM_B)
  else:
    pi = jnp.sqrt((jnp.trace(dense_a) / DIM_A) / (jnp.trace(dense_b) / DIM_B))
    block = jnp.kron(dense_a + pi * np.sqrt(DAMPING) * jnp.eye(DIM_A),
                     dense_b + np.sqrt(DAMPING) / pi * jnp.eye(DIM_B))
  np.testing.assert_allclose(got, dense_solve(block, grad), rtol=2e-4, atol=1e-5)


def indefinite_and_clipped(seed=3):
  """A symmetric matrix with negative eigenvalues and its PSD projection (clipped at 0)."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((DIM_A, DIM_A)))
  values = np.array([-0.5, -1e-3, 0.2, 1.0, 2.0])
  return (jnp.asarray((q * values) @ q.T, jnp.float32),
          jnp.asarray((q * np.maximum(values, 0)) @ q.T, jnp.float32))


def test_negative_eigenvalues_are_clipped():
  indefinite, clipped = indefinite_and_clipped()
  values, _ = inverses.symmetric_eigh(indefinite)
  np.testing.assert_allclose(values, [0.0, 0.0, 0.2, 1.0, 2.0], atol=1e-5)
  _, b, grad = factors_and_grad(4)
  for mode in inverses.DAMPING_MODES:
    scheme = inverses.inverse_scheme(mode)
    got = scheme.apply(scheme.compute(indefinite, b, DAMPING), grad, DAMPING)
    want = scheme.apply(scheme.compute(clipped, b, DAMPING), grad, DAMPING)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(got))


def test_eigh_symmetrises_its_input():
  a, _, _ = factors_and_grad(5)
  skew = jnp.asarray(np.random.default_rng(6).standard_normal(a.shape), jnp.float32)
  values, vectors = inverses.symmetric_eigh(a + (skew - skew.T))
  np.testing.assert_allclose((vectors * values) @ vectors.T, a, rtol=1e-4, atol=1e-5)


def test_pi_is_one_for_a_zero_factor():
  damping_a, damping_b = inverses.pi_damping(jnp.zeros([]), jnp.ones([]), 0.04)
  np.testing.assert_allclose([damping_a, damping_b], [0.2, 0.2], rtol=1e-6)


def test_float64_eigh_falls_back_to_float32_without_x64():
  assert inverses.eigh_compute_dtype(jnp.float32, jnp.float64) == jnp.float32
  assert inverses.eigh_compute_dtype(jnp.bfloat16, jnp.float32) == jnp.float32


def test_float64_eigh_with_x64():
  with jax.enable_x64(True):
    assert inverses.eigh_compute_dtype(jnp.float32, jnp.float64) == jnp.float64
    a, b, grad = factors_and_grad(7)
    cache = inverses.exact_inverse(a, b, DAMPING, jnp.float64)
    got = inverses.apply_exact_inverse(cache, grad, DAMPING)
    assert got.dtype == jnp.float32
    a64, b64, grad64 = (x.astype(jnp.float64) for x in (a, b, grad))
    want = dense_solve(jnp.kron(a64, b64) + DAMPING * jnp.eye(DIM_A * DIM_B), grad64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('mode', inverses.DAMPING_MODES)
def test_identity_cache(mode):
  a, b, grad = factors_and_grad(8)
  scheme = inverses.inverse_scheme(mode)
  got = scheme.apply(scheme.identity(a, inverses.compress_factor(b, 'diagonal')), grad, DAMPING)
  want = grad / (1 + DAMPING) if mode == 'exact' else grad
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_all_finite():
  assert bool(inverses.all_finite({'a': jnp.ones(3), 'b': (jnp.zeros(2), None)}))
  assert not bool(inverses.all_finite({'a': jnp.ones(3), 'b': jnp.array([0.0, jnp.inf])}))
