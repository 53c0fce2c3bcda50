"""Curvature blocks against dense solves built with `jnp.kron` and `jnp.linalg.solve`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac import blocks

DIM_A, DIM_B = 5, 4
DAMPING = 0.05


def rows_and_grad(seed=0, scale_a=1.0, scale_b=1.0):
  """Random rows (`A = a_rows^T a_rows` SPD `[5, 5]`, `B` `[4, 4]`) and a gradient `[5, 4]`."""
  rng = np.random.default_rng(seed)
  a_rows = np.sqrt(scale_a) * rng.standard_normal((2 * DIM_A, DIM_A)) / np.sqrt(2 * DIM_A)
  g_rows = np.sqrt(scale_b) * rng.standard_normal((2 * DIM_B, DIM_B)) / np.sqrt(2 * DIM_B)
  stats = blocks.LayerStatistics(jnp.asarray(a_rows, jnp.float32), jnp.asarray(g_rows, jnp.float32),
                                 jnp.asarray(a_rows.mean(0), jnp.float32))
  return stats, jnp.asarray(rng.standard_normal((DIM_A, DIM_B)), jnp.float32)


def dense_factor(rows, form):
  """The `[d, d]` matrix a factor form stands for, from the rows (float64, by hand)."""
  full = np.asarray(rows, np.float64).T @ np.asarray(rows, np.float64)
  if form == 'full':
    return full
  if form == 'diagonal':
    return np.diag(np.diag(full))
  return np.trace(full) / full.shape[0] * np.eye(full.shape[0])


def dense_solve(block, grad):
  """Solve `block x = vec(grad)` on the row-major flattening and reshape back."""
  return np.linalg.solve(block, np.asarray(grad, np.float64).reshape(-1)).reshape(grad.shape)


def expected(method, stats, grad, forms):
  """The preconditioned gradient of `method` by a dense solve (the blocks' docstrings' math)."""
  if method in ('diagonal', 'identity'):
    forms = (method, method)
  a, b = dense_factor(stats.a_rows, forms[0]), dense_factor(stats.g_rows, forms[1])
  if method in ('eigh', 'diagonal', 'identity'):
    return dense_solve(np.kron(a, b) + DAMPING * np.eye(DIM_A * DIM_B), grad)
  pi = np.sqrt((np.trace(a) / DIM_A) / (np.trace(b) / DIM_B))
  return dense_solve(np.kron(a + pi * np.sqrt(DAMPING) * np.eye(DIM_A),
                             b + np.sqrt(DAMPING) / pi * np.eye(DIM_B)), grad)


def preconditioned(method, stats, grad, forms=('full', 'full')):
  block = blocks.make_block(method, DIM_A, DIM_B, blocks.BlockOptions(forms=forms))
  state = block.update(block.init(), block.statistics(stats), jnp.asarray(1.0))
  state = jax.jit(block.invert)(state, jnp.asarray(DAMPING))
  return block, jax.jit(block.apply)(state, grad, jnp.asarray(DAMPING))


@pytest.mark.parametrize('method', ['eigh', 'pi_eigh', 'cholesky', 'diagonal', 'identity'])
def test_block_matches_dense_solve(method):
  stats, grad = rows_and_grad(0, 2.0, 0.3)
  block, got = preconditioned(method, stats, grad)
  assert block.kind == method
  np.testing.assert_allclose(got, expected(method, stats, grad, ('full', 'full')),
                             rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize('forms', [f for f in itertools.product(blocks.FACTOR_FORMS, repeat=2)
                                   if f != ('full', 'full')])
@pytest.mark.parametrize('method', ['eigh', 'pi_eigh', 'cholesky'])
def test_fallback_forms_match_dense_solve(method, forms):
  stats, grad = rows_and_grad(2, 1.5, 0.5)
  _, got = preconditioned(method, stats, grad, forms)
  np.testing.assert_allclose(got, expected(method, stats, grad, forms), rtol=2e-4, atol=1e-5)


def test_cholesky_equals_pi_eigh():
  stats, grad = rows_and_grad(3, 4.0, 0.1)
  np.testing.assert_allclose(preconditioned('cholesky', stats, grad)[1],
                             preconditioned('pi_eigh', stats, grad)[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('method,scale', [('eigh', 1 / (1 + DAMPING)), ('pi_eigh', 1.0),
                                          ('cholesky', 1.0)])
def test_initial_state_is_identity_like(method, scale):
  block = blocks.make_block(method, DIM_A, DIM_B, blocks.BlockOptions())
  grad = jnp.ones((DIM_A, DIM_B))
  np.testing.assert_allclose(block.apply(block.init(), grad, DAMPING), scale * grad, rtol=1e-6)


def test_ema_update_blends_the_factors():
  first, _ = rows_and_grad(4)
  second, _ = rows_and_grad(5)
  block = blocks.make_block('eigh', DIM_A, DIM_B, blocks.BlockOptions())
  state = block.update(block.init(), block.statistics(first), jnp.asarray(1.0))
  state = block.update(state, block.statistics(second), jnp.asarray(0.25))
  want = 0.75 * dense_factor(first.a_rows, 'full') + 0.25 * dense_factor(second.a_rows, 'full')
  np.testing.assert_allclose(state.factor_a, want, rtol=1e-5)


def test_unknown_method_is_rejected():
  with pytest.raises(ValueError, match='unknown inverse_method'):
    blocks.make_block('svd', DIM_A, DIM_B, blocks.BlockOptions())
