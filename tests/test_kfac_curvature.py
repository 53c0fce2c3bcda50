"""Curvature state over blocks: EMA math vs a hand loop, T_cov/T_inv gating under jit, rejection
of non-finite updates (per layer, total and consecutive), for every Kronecker block."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kfac import blocks, curvature

LAYER_1, LAYER_2 = ('Dense_0',), ('Block_0', 'Conv_0')
DIMS = {LAYER_1: (4, 3), LAYER_2: (3, 2)}
METHODS = ('eigh', 'pi_eigh', 'cholesky')


def config(method='eigh', **overrides):
  options = {LAYER_1: blocks.BlockOptions(), LAYER_2: blocks.BlockOptions(forms=('full', 'diagonal'))}
  return curvature.CurvatureConfig(
      {path: blocks.make_block(method, *DIMS[path], options[path]) for path in DIMS}, **overrides)


def random_statistics(rng):
  """`{path: LayerStatistics}` with 8 random rows per factor (float32)."""
  return {path: blocks.LayerStatistics(
      jnp.asarray(rng.standard_normal((8, dim_a)) / np.sqrt(8), jnp.float32),
      jnp.asarray(rng.standard_normal((8, dim_b)) / np.sqrt(8), jnp.float32),
      jnp.zeros((dim_a,), jnp.float32)) for path, (dim_a, dim_b) in DIMS.items()}


def statistics_sequence(num_steps):
  rng = np.random.default_rng(0)
  return [random_statistics(rng) for _ in range(num_steps)]


def gram(rows):
  rows = np.asarray(rows, np.float64)
  return rows.T @ rows


def test_ema_matches_hand_loop():
  cfg = config(ema_decay=0.8)
  sequence = statistics_sequence(9)
  state = curvature.init_curvature_state(cfg)
  update = jax.jit(lambda s, f: curvature.update_statistics(s, f, cfg))
  for statistics in sequence:
    state = update(state, statistics)
  by_hand = {LAYER_1: (np.asarray, np.asarray), LAYER_2: (np.asarray, np.diag)}
  for path, forms in by_hand.items():
    for side, field in ((0, 'a_rows'), (1, 'g_rows')):
      expected = None
      for count, statistics in enumerate(sequence):
        new = forms[side](gram(getattr(statistics[path], field)))
        weight = max(1 - 0.8, 1 / (count + 1))  # first sets, then uniform mean, then EMA
        expected = new if expected is None else (1 - weight) * expected + weight * new
      np.testing.assert_allclose(state.blocks[path][side], expected, rtol=1e-5, atol=1e-6)
  assert int(state.counts[LAYER_1]) == 9


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('cov_every,inv_every,warm', [(2, 3, 0), (3, 1, 0), (1, 4, 0), (4, 5, 3)])
def test_gating_under_jit(method, cov_every, inv_every, warm):
  cfg = config(method, cov_update_every=cov_every, inverse_update_every=inv_every,
               warm_start_steps=warm)
  sequence = statistics_sequence(8)
  cov_steps = {t for t in range(8) if t < warm or t % cov_every == 0}
  inv_steps = {t for t in range(8) if t < warm or t % inv_every == 0}
  step = jax.jit(lambda state, statistics: curvature.update_curvature(state, lambda: statistics,
                                                                      cfg))
  block = cfg.blocks[LAYER_1]
  state = curvature.init_curvature_state(cfg)
  inverted_from = None  # the averaged factors the last inverse update saw
  for t, statistics in enumerate(sequence):
    new = step(state, statistics)
    factor_changed = not np.allclose(new.blocks[LAYER_1].factor_a, state.blocks[LAYER_1].factor_a)
    assert factor_changed == (t in cov_steps), t
    if t in inv_steps:
      inverted_from = new.blocks[LAYER_1]
    want = block.invert(inverted_from, cfg.damping).cache
    for got_leaf, want_leaf in zip(jax.tree_util.tree_leaves(new.blocks[LAYER_1].cache),
                                   jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)
    assert int(new.step) == t + 1
    state = new
  assert int(state.counts[LAYER_1]) == len(cov_steps)


def test_statistics_fn_is_not_called_on_skipped_steps():
  cfg = config(cov_update_every=2, warm_start_steps=0)
  calls = []
  statistics = statistics_sequence(1)[0]

  def statistics_fn():
    jax.debug.callback(lambda: calls.append('run'))
    return statistics

  state = curvature.init_curvature_state(cfg)
  step = jax.jit(lambda s: curvature.update_curvature(s, statistics_fn, cfg))
  for _ in range(4):
    state = step(state)
  jax.effects_barrier()
  assert calls.count('run') == 2  # steps 0 and 2


def poisoned(statistics, path):
  """`statistics` with a NaN in the activation rows of `path`."""
  rows = statistics[path]
  return {**statistics, path: rows._replace(a_rows=rows.a_rows.at[0, 0].set(jnp.nan))}


@pytest.mark.parametrize('method', METHODS)
def test_nonfinite_statistics_keep_the_last_good_state_and_are_counted(method):
  cfg = config(method)
  first, second, third = statistics_sequence(3)
  step = jax.jit(lambda s, f: curvature.update_curvature(s, lambda: f, cfg))
  good = step(curvature.init_curvature_state(cfg), first)
  bad = step(good, poisoned(second, LAYER_1))
  worse = step(bad, poisoned(third, LAYER_1))
  for new, old in zip(jax.tree_util.tree_leaves(worse.blocks[LAYER_1]),
                      jax.tree_util.tree_leaves(good.blocks[LAYER_1])):
    np.testing.assert_array_equal(new, old)
  assert int(worse.rejected[LAYER_1]) == 2 and int(worse.consecutive_rejected[LAYER_1]) == 2
  assert int(worse.rejected[LAYER_2]) == 0 and int(worse.num_rejected) == 2
  assert int(worse.counts[LAYER_1]) == 1 and int(worse.counts[LAYER_2]) == 3
  assert not np.allclose(worse.blocks[LAYER_2].factor_a, good.blocks[LAYER_2].factor_a)
  recovered = step(worse, first)
  assert int(recovered.consecutive_rejected[LAYER_1]) == 0 and int(recovered.rejected[LAYER_1]) == 2
  assert curvature.all_finite(recovered.blocks)


@pytest.mark.parametrize('method', METHODS)
def test_nonfinite_inverse_keeps_the_last_good_inverse(method):
  cfg = config(method)
  state = curvature.update_curvature(curvature.init_curvature_state(cfg),
                                     lambda: statistics_sequence(1)[0], cfg)
  block_state = state.blocks[LAYER_2]
  broken = state._replace(blocks={**state.blocks, LAYER_2: block_state._replace(
      factor_a=block_state.factor_a.at[1, 1].set(jnp.inf))})
  updated = jax.jit(lambda s: curvature.update_inverses(s, cfg))(broken)
  assert int(updated.rejected[LAYER_2]) == 1 and int(updated.rejected[LAYER_1]) == 0
  for new, old in zip(jax.tree_util.tree_leaves(updated.blocks[LAYER_2].cache),
                      jax.tree_util.tree_leaves(block_state.cache)):
    np.testing.assert_array_equal(new, old)


def test_first_step_nonfinite_keeps_identity_preconditioner():
  cfg = config('eigh', damping=0.1)
  state = curvature.update_curvature(curvature.init_curvature_state(cfg),
                                     lambda: poisoned(statistics_sequence(1)[0], LAYER_1), cfg)
  grad = jnp.ones((4, 3))
  out = curvature.precondition_layers(state, {LAYER_1: grad}, cfg)
  np.testing.assert_allclose(out[LAYER_1], grad / 1.1, rtol=1e-6)


def test_precondition_layers_matches_dense_solve():
  cfg = config('eigh', damping=0.01)
  statistics = statistics_sequence(1)[0]
  state = curvature.update_curvature(curvature.init_curvature_state(cfg), lambda: statistics, cfg)
  grad = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2)), jnp.float32)
  got = curvature.precondition_layers(state, {LAYER_2: grad}, cfg)[LAYER_2]
  a, b = gram(statistics[LAYER_2].a_rows), np.diag(np.diag(gram(statistics[LAYER_2].g_rows)))
  want = np.linalg.solve(np.kron(a, b) + 0.01 * np.eye(6), np.asarray(grad, np.float64).ravel())
  np.testing.assert_allclose(got, want.reshape(3, 2), rtol=1e-4)


def test_state_dtype_is_float32():
  cfg = config('cholesky')
  state = curvature.update_curvature(curvature.init_curvature_state(cfg),
                                     lambda: statistics_sequence(1)[0], cfg)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state.blocks))


@pytest.mark.parametrize('bad', [dict(damping=0.0), dict(ema_decay=1.0), dict(cov_update_every=0),
                                 dict(inverse_update_every=1.5), dict(warm_start_steps=-1)])
def test_bad_config_is_rejected(bad):
  with pytest.raises(ValueError):
    curvature.init_curvature_state(config(**bad))


def test_is_due():
  assert [curvature.is_due(t, 3, 2) for t in range(7)] == [True, True, False, True, False, False,
                                                           True]


def test_rejections_are_found_inside_an_optax_chain_state():
  cfg = config('eigh')
  state = curvature.update_curvature(curvature.init_curvature_state(cfg),
                                     lambda: poisoned(statistics_sequence(1)[0], LAYER_2), cfg)
  chain_state = (optax.EmptyState(), (state, optax.ScaleByScheduleState(jnp.zeros([]))))
  found = curvature.rejections(chain_state)
  assert {name: (int(total), int(run)) for name, (total, run) in found.items()} == {
      'Dense_0': (0, 0), 'Block_0/Conv_0': (1, 1)}
