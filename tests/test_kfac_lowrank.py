"""Low-rank inverses (kfac.lowrank) and the 'rsvd', 'brand', 'brand_rsvd', 'brand_corrected'
blocks, against dense
float64 numpy: eigh of the same exponential average, dense solves of the damped Kronecker block."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfac
from kfac import lowrank
from kfac.blocks import BlockOptions, LayerStatistics, make_block
from kfac.blocks.lowrank import brand_rows_note, gather_rows_over_devices
from tests.kfac_oracles import fast_compilation, relative_error  # noqa: F401 (fixture)

LOWRANK_KINDS = ('rsvd', 'brand', 'brand_rsvd', 'brand_corrected')
DAMPING = 0.05


def reconstruct(eigen):
  basis, values = np.asarray(eigen.basis, np.float64), np.asarray(eigen.values, np.float64)
  return (basis * values) @ basis.T


def row_batches(rng, dim, rows, count, scale=1.0):
  """`count` batches of rows `[rows, dim]` (float32), with a few large directions."""
  mix = rng.standard_normal((dim, dim)) * np.geomspace(1.0, 1e-2, dim)[None, :] * scale
  return [np.asarray(rng.standard_normal((rows, dim)) @ mix.T / np.sqrt(rows), np.float32)
          for _ in range(count)]


def dense_average(batches, weights):
  """The exponential average `F <- (1 - w) F + w X^T X` in float64."""
  average = 0.0
  for rows, weight in zip(batches, weights):
    rows = np.asarray(rows, np.float64)
    average = (1 - weight) * average + weight * rows.T @ rows
  return average


def ema_weights(count, decay=0.8):
  return [max(1 - decay, 1 / (c + 1)) for c in range(count)]


def dense_pi_solve(factor_a, factor_b, grad, damping):
  """`(A + d_A I)^-1 G (B + d_B I)^-1`, `d_A = pi sqrt(damping)`, `d_B = sqrt(damping) / pi`."""
  pi = np.sqrt((np.trace(factor_a) / len(factor_a)) / (np.trace(factor_b) / len(factor_b)))
  left = np.linalg.solve(factor_a + pi * np.sqrt(damping) * np.eye(len(factor_a)), grad)
  return np.linalg.solve(factor_b + np.sqrt(damping) / pi * np.eye(len(factor_b)), left.T).T


def dense_exact_solve(factor_a, factor_b, grad, damping):
  """`(A kron B + damping I)^-1 vec(G)`, row-major vec."""
  block = np.kron(factor_a, factor_b) + damping * np.eye(grad.size)
  return np.linalg.solve(block, grad.ravel()).reshape(grad.shape)


# -- kfac.lowrank ------------------------------------------------------------------------------


def test_randomized_eigh_recovers_a_low_rank_matrix():
  rng = np.random.default_rng(0)
  factor = rng.standard_normal((60, 6)) * np.array([5, 4, 3, 2, 1, 0.5])
  matrix = factor @ factor.T
  eigen = jax.jit(lowrank.randomized_eigh, static_argnums=(1, 3, 4))(
      jnp.asarray(matrix, jnp.float32), 6, jax.random.PRNGKey(1), 4, 1)
  assert eigen.basis.shape == (60, 6) and eigen.values.shape == (6,)
  assert relative_error(reconstruct(eigen), matrix) < 1e-5
  np.testing.assert_allclose(eigen.values, np.linalg.eigvalsh(matrix)[::-1][:6], rtol=1e-5)


def test_randomized_eigh_truncates_to_the_top_eigenpairs():
  rng = np.random.default_rng(1)
  basis, _ = np.linalg.qr(rng.standard_normal((50, 50)))
  spectrum = np.geomspace(10.0, 1e-4, 50)
  matrix = (basis * spectrum) @ basis.T
  eigen = lowrank.randomized_eigh(jnp.asarray(matrix, jnp.float32), 8, jax.random.PRNGKey(0),
                                  oversampling=8, power_iterations=3)
  np.testing.assert_allclose(eigen.values, spectrum[:8], rtol=1e-3)
  best = (basis[:, :8] * spectrum[:8]) @ basis[:, :8].T
  assert relative_error(reconstruct(eigen), best) < 1e-3


def random_eigen(rng, dim, rank):
  basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
  return lowrank.LowRankEigen(jnp.asarray(basis, jnp.float32),
                              jnp.asarray(np.sort(rng.uniform(0.1, 2.0, rank))[::-1], jnp.float32))


def test_correction_with_every_column_recovers_a_factor_inside_the_span():
  """B-KFAC-c's correction is Rayleigh-Ritz: with all `r` columns drawn and `F = U M U^T`, the
  corrected decomposition is `F`'s (numpy eigh), whatever the stale values were."""
  rng = np.random.default_rng(20)
  eigen = random_eigen(rng, 30, 6)
  inner = rng.standard_normal((6, 6))
  basis = np.asarray(eigen.basis, np.float64)
  factor = basis @ (inner @ inner.T) @ basis.T
  got = jax.jit(lowrank.corrected, static_argnums=3)(eigen, jnp.asarray(factor, jnp.float32),
                                                      jax.random.PRNGKey(0), 6)
  assert np.abs(reconstruct(got) - factor).max() < 1e-5 * np.abs(factor).max()
  top = np.linalg.eigvalsh(factor)[::-1][:6]
  np.testing.assert_allclose(got.values, top, atol=1e-5 * top[0])


def test_correction_rotates_only_the_drawn_columns():
  """With `k < r` columns drawn: the others keep their pairs, the drawn ones span the same space
  and diagonalise the projected factor (brute force in float64); the basis stays orthonormal and
  the values are sorted largest first."""
  rng = np.random.default_rng(21)
  dim, rank, drawn_count = 25, 8, 3
  eigen = random_eigen(rng, dim, rank)
  mix = rng.standard_normal((dim, dim))
  factor = mix @ mix.T / dim
  key = jax.random.PRNGKey(3)
  got = lowrank.corrected(eigen, jnp.asarray(factor, jnp.float32), key, drawn_count)
  new_basis, new_values = np.asarray(got.basis, np.float64), np.asarray(got.values, np.float64)
  old_basis, old_values = np.asarray(eigen.basis, np.float64), np.asarray(eigen.values, np.float64)
  assert np.abs(new_basis.T @ new_basis - np.eye(rank)).max() < 1e-5
  assert np.all(np.diff(new_values) <= 0)
  drawn = np.asarray(jax.random.permutation(key, rank)[:drawn_count])
  kept = [i for i in range(rank) if i not in drawn]
  # Every kept pair is in the result, unchanged (matched by column, up to the re-sorting).
  matches = [int(np.argmax(np.abs(new_basis.T @ old_basis[:, i]))) for i in kept]
  for i, j in zip(kept, matches):
    assert np.abs(np.abs(new_basis[:, j] @ old_basis[:, i]) - 1) < 1e-5
    assert abs(new_values[j] - old_values[i]) < 1e-6
  new_columns = [j for j in range(rank) if j not in matches]
  q_old, q_new = old_basis[:, drawn], new_basis[:, new_columns]
  assert np.abs(q_old @ q_old.T - q_new @ q_new.T).max() < 1e-5  # Same span.
  projected = q_new.T @ factor @ q_new
  np.testing.assert_allclose(projected, np.diag(new_values[new_columns]), atol=1e-5)
  np.testing.assert_allclose(np.sort(new_values[new_columns]),
                             np.linalg.eigvalsh(q_old.T @ factor @ q_old), rtol=1e-5)


def test_brand_update_equals_eigh_while_the_rank_fits():
  rng = np.random.default_rng(2)
  batches = row_batches(rng, dim=40, rows=3, count=5)  # total rank 15 <= r = 16
  weights = ema_weights(len(batches))
  update = jax.jit(lowrank.brand_update)
  eigen = lowrank.empty_eigen(40, 16)
  for rows, weight in zip(batches, weights):
    eigen = update(eigen, jnp.asarray(rows), jnp.float32(weight))
  average = dense_average(batches, weights)
  top = np.linalg.eigvalsh(average)[::-1][:16]
  np.testing.assert_allclose(eigen.values, top, atol=1e-5 * top[0])
  assert np.abs(reconstruct(eigen) - average).max() < 1e-5 * top[0]
  np.testing.assert_allclose(eigen.basis.T @ eigen.basis, np.eye(16), atol=1e-5)


def test_brand_truncation_error_falls_as_the_rank_grows():
  rng = np.random.default_rng(3)
  batches = row_batches(rng, dim=48, rows=4, count=12)  # total rank 48
  weights = ema_weights(len(batches))
  average = dense_average(batches, weights)
  update = jax.jit(lowrank.brand_update)
  errors = []
  for rank in (4, 8, 16, 32, 48):
    eigen = lowrank.empty_eigen(48, rank)
    for rows, weight in zip(batches, weights):
      eigen = update(eigen, jnp.asarray(rows), jnp.float32(weight))
    errors.append(relative_error(reconstruct(eigen), average))
  assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-5, errors


def test_brand_update_keeps_an_orthonormal_basis_with_rank_deficient_rows():
  rng = np.random.default_rng(4)
  inside = rng.standard_normal((2, 6)) @ rng.standard_normal((6, 30))
  batches = [inside[:, :].astype(np.float32),  # rank 2, then rows repeating the same span,
             np.concatenate([inside, inside]).astype(np.float32),  # then n + r > d
             rng.standard_normal((28, 30)).astype(np.float32)]
  weights = [1.0, 0.5, 0.5]
  eigen = lowrank.empty_eigen(30, 8)
  for rows, weight in zip(batches, weights):
    eigen = lowrank.brand_update(eigen, jnp.asarray(rows), jnp.float32(weight))
    np.testing.assert_allclose(eigen.basis.T @ eigen.basis, np.eye(8), atol=1e-5)
  top = np.linalg.eigvalsh(dense_average(batches, weights))[::-1][:8]
  assert np.all(np.asarray(eigen.values) <= top * (1 + 1e-5) + 1e-6)  # truncation only loses


@pytest.mark.parametrize('rank', [3, 20])
def test_damped_applies_equal_dense_solves(rank):
  """Factors of rank `min(rank, d)` stored as `[d, rank]` bases: the complement of the basis
  gets `1 / damping`."""
  rng = np.random.default_rng(5)
  eigens, factors = [], []
  for dim in (7, 5):
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, :min(rank, dim)]
    values = rng.uniform(0.5, 3.0, basis.shape[1])
    eigens.append(lowrank.LowRankEigen(*(jnp.asarray(x, jnp.float32) for x in (basis, values))))
    factors.append((basis * values) @ basis.T)
  grad = rng.standard_normal((7, 5))
  exact = lowrank.exact_damped_apply(*eigens, jnp.asarray(grad, jnp.float32), DAMPING)
  np.testing.assert_allclose(exact, dense_exact_solve(*factors, grad, DAMPING), rtol=1e-4,
                             atol=1e-4)
  pi = lowrank.pi_damped_apply(*eigens, jnp.asarray(grad, jnp.float32), 0.3, DAMPING / 0.3)
  reference = np.linalg.solve(factors[0] + 0.3 * np.eye(7), grad) @ np.linalg.inv(
      factors[1] + DAMPING / 0.3 * np.eye(5))
  np.testing.assert_allclose(pi, reference, rtol=1e-4, atol=1e-4)


# -- Blocks ------------------------------------------------------------------------------------


def run_block(block, batches_a, batches_b, weights, inverse_every=1):
  """Statistics on every step and inverses every `inverse_every` steps (always on the last)."""
  state = block.init()
  update, invert = jax.jit(block.update), jax.jit(block.invert)
  for step, (rows_a, rows_b, weight) in enumerate(zip(batches_a, batches_b, weights)):
    stats = block.statistics(LayerStatistics(jnp.asarray(rows_a), jnp.asarray(rows_b),
                                             jnp.zeros(rows_a.shape[1])))
    state = update(state, stats, jnp.float32(weight))
    if step % inverse_every == 0 or step == len(weights) - 1:
      state = invert(state, jnp.float32(DAMPING))
  return state


@pytest.mark.parametrize('dim_a, count', [(9, 6), (40, 3)])
@pytest.mark.parametrize('damping_form', ['pi', 'exact'])
@pytest.mark.parametrize('kind', LOWRANK_KINDS)
def test_exact_rank_blocks_equal_dense_solves(kind, damping_form, dim_a, count):
  """Rank 16 >= the factors' rank: `dim_a = 9` (rank >= d; Brand's dense path) and `dim_a = 40`
  fed 3 x 4 rows (Brand's QR path, each update exact)."""
  rng = np.random.default_rng(6)
  dim_b = 6
  batches_a = row_batches(rng, dim_a, rows=4, count=count)
  batches_b = row_batches(rng, dim_b, rows=4, count=count, scale=0.1)
  weights = ema_weights(count)
  options = BlockOptions(rank=16, oversampling=2, power_iterations=1, lowrank_damping=damping_form)
  block = make_block(kind, dim_a, dim_b, options)
  assert block.kind == kind
  state = run_block(block, batches_a, batches_b, weights)
  grad = rng.standard_normal((dim_a, dim_b))
  got = jax.jit(block.apply)(state, jnp.asarray(grad, jnp.float32), jnp.float32(DAMPING))
  solve = dense_pi_solve if damping_form == 'pi' else dense_exact_solve
  expected = solve(dense_average(batches_a, weights), dense_average(batches_b, weights), grad,
                   DAMPING)
  assert relative_error(got, expected) < 1e-4


def test_brand_block_keeps_no_square_matrix():
  block = make_block('brand', 64, 32, BlockOptions(rank=8))
  shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(block.init())]
  assert (64, 8) in shapes and (32, 8) in shapes
  assert not any(len(shape) == 2 and shape[0] == shape[1] for shape in shapes), shapes


def drifting_batches():
  """10 batches of 6 rows for a 40-wide A and a 5-wide B, their EMA weights and A's dense
  average: at rank 6, Brand's truncated updates drift from the average."""
  rng = np.random.default_rng(7)
  batches_a = row_batches(rng, 40, rows=6, count=10)
  batches_b = row_batches(rng, 5, rows=6, count=10)
  weights = ema_weights(10)
  return batches_a, batches_b, weights, dense_average(batches_a, weights)


def test_brand_rsvd_inverse_cancels_the_truncation_drift():
  batches_a, batches_b, weights, average = drifting_batches()
  best = np.linalg.eigh(average)
  best = (best[1][:, -6:] * best[0][-6:]) @ best[1][:, -6:].T
  options = BlockOptions(rank=6, oversampling=10, power_iterations=3)
  errors = {}
  for kind in ('brand', 'brand_rsvd'):
    state = run_block(make_block(kind, 40, 5, options), batches_a, batches_b, weights,
                      inverse_every=100)
    errors[kind] = relative_error(reconstruct(state.eigen_a), best)
  assert errors['brand_rsvd'] < 1e-3 < errors['brand'], errors


def test_brand_correction_cancels_the_drift_on_the_basis_span():
  """B-KFAC's truncated updates underestimate the average on their own span: `U^T (U D U^T -
  F) U != 0` (F the dense float64 average). The 'brand_corrected' block, its full averages and
  its corrections on inverse steps make it 0 with every column corrected, and smaller with 20 %.
  (Measured here: the damped inverse improves by less than 0.2 %, as the rank-6 truncation of
  the 40-wide factor dominates its error.)"""
  batches_a, batches_b, weights, average = drifting_batches()

  def span_error(kind, fraction):
    state = run_block(make_block(kind, 40, 5, BlockOptions(rank=6, correction_fraction=fraction)),
                      batches_a, batches_b, weights, inverse_every=1)
    basis = np.asarray(state.eigen_a.basis, np.float64)
    return (np.linalg.norm(basis.T @ (reconstruct(state.eigen_a) - average) @ basis)
            / np.linalg.norm(basis.T @ average @ basis))

  drift = span_error('brand', 1.0)
  assert drift > 1e-2
  assert span_error('brand_corrected', 1.0) < 1e-5
  assert span_error('brand_corrected', 0.2) < 0.8 * drift


@pytest.mark.parametrize('kind', LOWRANK_KINDS)
def test_blocks_jit_under_cond_gating(kind):
  rng = np.random.default_rng(8)
  block = make_block(kind, 12, 7, BlockOptions(rank=4))
  stats = block.statistics(LayerStatistics(jnp.asarray(row_batches(rng, 12, 5, 1)[0]),
                                           jnp.asarray(row_batches(rng, 7, 5, 1)[0]),
                                           jnp.zeros(12)))

  @jax.jit
  def step(state, update_due, invert_due):
    state = jax.lax.cond(update_due, lambda s: block.update(s, stats, jnp.float32(1.0)),
                         lambda s: s, state)
    return jax.lax.cond(invert_due, lambda s: block.invert(s, jnp.float32(DAMPING)),
                        lambda s: s, state)

  grad = jnp.asarray(rng.standard_normal((12, 7)), jnp.float32)
  apply = jax.jit(block.apply)
  skipped = apply(step(block.init(), False, False), grad, DAMPING)
  np.testing.assert_allclose(skipped, grad, rtol=1e-6)  # identity before a decomposition
  gated = apply(step(block.init(), True, True), grad, DAMPING)
  direct = apply(jax.jit(block.invert)(jax.jit(block.update)(block.init(), stats, 1.0), DAMPING),
                 grad, DAMPING)
  assert relative_error(gated, direct) < 1e-5
  assert relative_error(gated, grad) > 0.1


def test_brand_rows_note_says_when_rows_outnumber_the_factor():
  assert brand_rows_note(dim=1024, rank=64, rows=128) is None
  assert 'dense eigh' in brand_rows_note(dim=577, rank=64, rows=128 * 64)
  assert 'hardly cheaper' in brand_rows_note(dim=256, rank=64, rows=128)


def test_brand_update_with_more_rows_than_the_factor_side_is_eigh_truncated():
  rng = np.random.default_rng(9)
  old, rows = row_batches(rng, dim=20, rows=30, count=2)  # r + n = 36 >= d = 20
  eigen = lowrank.brand_update(lowrank.empty_eigen(20, 6), jnp.asarray(old), jnp.float32(1.0))
  values, vectors = np.linalg.eigh(dense_average([old], [1.0]))
  kept = (vectors[:, -6:] * values[-6:]) @ vectors[:, -6:].T
  eigen = lowrank.brand_update(eigen, jnp.asarray(rows), jnp.float32(0.3))
  average = 0.7 * kept + 0.3 * np.asarray(rows, np.float64).T @ rows
  values = np.linalg.eigvalsh(average)[::-1][:6]
  np.testing.assert_allclose(eigen.values, values, rtol=1e-4)
  np.testing.assert_allclose(eigen.basis.T @ eigen.basis, np.eye(6), atol=1e-5)


def test_bench_inverses_quick_prints_json_rows_last(tmp_path):
  repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  completed = subprocess.run(
      [sys.executable, os.path.join(repository, 'scripts', 'bench_inverses.py'), '--quick',
       f'--output_dir={tmp_path}'], cwd=repository, capture_output=True, text=True, timeout=600,
      check=True)
  rows = json.loads(completed.stdout.strip().splitlines()[-1])
  methods = {row['method'] for row in rows}
  assert methods == {'eigh', 'cholesky', 'rsvd', 'brand', 'correction'}
  for row in rows:
    assert {'method', 'd', 'rank', 'rows', 'seconds'} <= set(row)
    assert row['seconds'] > 0 and row['d'] > 0 and row['rows'] > 0
    assert (row['rank'] is None) == (row['method'] in ('eigh', 'cholesky'))
  assert len({row['d'] for row in rows}) >= 2
  assert (tmp_path / 'bench_inverses.md').read_text().startswith('# Inverse schemes')
  assert (tmp_path / 'bench_inverses.png').stat().st_size > 0


class ConvNet(nn.Module):
  """Conv -> relu -> spatial mean -> Dense, on `[N, 5, 5, 2]` images."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding='SAME')(x))
    return nn.Dense(3)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize('flavour', ['reduce', pytest.param('expand', marks=pytest.mark.slow)])
def test_full_rank_low_rank_methods_precondition_like_pi_eigh(flavour):
  """Through `kfac.precondition` (reduce: N rows per batch; expand: N R rows, Brand's dense
  path): at rank >= d the low-rank methods' updates are 'pi_eigh''s ('brand_rsvd' combines the
  two, through the same block code: its block is tested above)."""
  rng = np.random.default_rng(10)
  images = [rng.standard_normal((6, 5, 5, 2)).astype(np.float32) for _ in range(3)]
  labels = [rng.integers(0, 3, 6).astype(np.int32) for _ in range(3)]
  model = ConvNet()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), images[0])
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates = {}
  for method in ('pi_eigh', 'rsvd', 'brand'):
    transform = kfac.precondition(model.apply, loss='softmax_cross_entropy',
                                  sample_inputs=images[0], flavour=flavour, fisher_type='type2',
                                  damping=DAMPING, inverse_method=method, inverse_rank=64,
                                  strict=True)
    step = jax.jit(lambda g, s, x, y, t=transform: t.update(g, s, params, inputs=x, targets=y))
    state = transform.init(params)
    for x, y in zip(images, labels):
      update, state = step(grads, state, x, y)
    updates[method] = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(update)])
  for method in ('rsvd', 'brand'):
    assert relative_error(updates[method], updates['pi_eigh']) < 1e-4, method


@pytest.mark.parametrize('kind', LOWRANK_KINDS)
def test_non_finite_rows_keep_the_last_good_state_under_gating(kind):
  """Through `kfac.curvature` (T_cov = T_inv = 2, lax.cond gating): NaN rows on step 2 are
  rejected and counted, and the preconditioner stays that of step 0."""
  rng = np.random.default_rng(11)
  block = make_block(kind, 10, 4, BlockOptions(rank=3))
  config = kfac.CurvatureConfig(blocks={('Dense_0',): block}, damping=DAMPING,
                                cov_update_every=2, inverse_update_every=2, warm_start_steps=0)
  good = LayerStatistics(*(jnp.asarray(rows) for rows in (row_batches(rng, 10, 5, 1)[0],
                                                          row_batches(rng, 4, 5, 1)[0])),
                         jnp.zeros(10))
  bad = good._replace(a_rows=good.a_rows.at[0, 0].set(jnp.nan))
  step = jax.jit(lambda state, stats: kfac.curvature.update_curvature(
      state, lambda: {('Dense_0',): stats}, config))
  grad = jnp.asarray(rng.standard_normal((10, 4)), jnp.float32)
  apply = jax.jit(lambda state: block.apply(state.blocks[('Dense_0',)], grad, DAMPING))
  state = step(kfac.curvature.init_curvature_state(config), good)
  after_good = apply(state)
  for stats in (good, bad):  # step 1: not due; step 2: due, rejected
    state = step(state, stats)
  assert int(state.rejected[('Dense_0',)]) == 1 and int(state.counts[('Dense_0',)]) == 1
  # rsvd re-decomposes the same average on step 2, from a new sketch (exact here: d <= r + p).
  assert relative_error(apply(state), after_good) < 1e-5
  assert relative_error(after_good, grad) > 0.1


def test_gathered_rows_give_the_weighted_mean_factor():
  """Four emulated devices (`vmap` with an axis name) with 5, 2, 0, 3 valid examples."""
  rng = np.random.default_rng(12)
  rows = rng.standard_normal((4, 6, 7)).astype(np.float32)
  num_valid = np.array([5, 2, 0, 3], np.int32)
  gathered = jax.vmap(lambda x, n: gather_rows_over_devices(x, n, 'devices'),
                      axis_name='devices')(jnp.asarray(rows), jnp.asarray(num_valid))
  assert gathered.shape == (4, 24, 7)
  rows64 = rows.astype(np.float64)
  expected = sum(n * x.T @ x for n, x in zip(num_valid, rows64)) / num_valid.sum()
  np.testing.assert_allclose(gathered[0].T @ gathered[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gathered[3], gathered[0])


def test_sketched_rows_are_unbiased():
  rng = np.random.default_rng(13)
  rows = jnp.asarray(row_batches(rng, dim=8, rows=50, count=1)[0])
  grams = jax.vmap(lambda key: (lambda x: x.T @ x)(lowrank.sketch_rows(rows, 10, key)))(
      jax.random.split(jax.random.PRNGKey(0), 4000))
  exact = np.asarray(rows, np.float64).T @ np.asarray(rows, np.float64)
  assert grams.shape == (4000, 8, 8)
  assert relative_error(np.mean(np.asarray(grams, np.float64), axis=0), exact) < 0.02
  assert relative_error(grams[0], exact) > 0.05  # one sketch is noisy


def test_brand_block_sketches_many_rows_and_keeps_exact_traces():
  rng = np.random.default_rng(14)
  batches_a, batches_b = row_batches(rng, 24, 60, 40), row_batches(rng, 5, 60, 40)
  weights = ema_weights(40, decay=0.9)
  options = BlockOptions(rank=6, brand_max_rows=12)
  state = run_block(make_block('brand', 24, 5, options), batches_a, batches_b, weights)
  average = dense_average(batches_a, weights)
  np.testing.assert_allclose(state.mean_a, np.trace(average) / 24, rtol=1e-5)
  values, vectors = np.linalg.eigh(average)
  best = (vectors[:, -6:] * values[-6:]) @ vectors[:, -6:].T
  assert relative_error(reconstruct(state.eigen_a), best) < 0.25  # 0.008 unsketched; noise
  assert brand_rows_note(dim=1537, rank=64, rows=1024) is not None
  assert brand_rows_note(dim=1537, rank=64, rows=1024, max_rows=64) is None
