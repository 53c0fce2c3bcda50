"""Curvature state: EMA math vs a hand loop, T_cov/T_inv gating under jit, non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac import curvature, inverses

LAYER_1, LAYER_2 = ('Dense_0',), ('Block_0', 'Conv_0')
LAYOUTS = {LAYER_1: curvature.FactorLayout(4, 3),
           LAYER_2: curvature.FactorLayout(3, 2, 'full', 'diagonal')}


def random_factors(rng):
  """Full SPD factors `{path: (A, B)}` matching `LAYOUTS` (float32)."""
  factors = {}
  for path, layout in LAYOUTS.items():
    ma = rng.standard_normal((layout.dim_a, 8))
    mb = rng.standard_normal((layout.dim_b, 8))
    factors[path] = (jnp.asarray(ma @ ma.T / 8, jnp.float32),
                     jnp.asarray(mb @ mb.T / 8, jnp.float32))
  return factors


def factor_sequence(num_steps):
  rng = np.random.default_rng(0)
  return [random_factors(rng) for _ in range(num_steps)]


def config(**overrides):
  return curvature.CurvatureConfig(LAYOUTS, **overrides)


def test_ema_matches_hand_loop():
  cfg = config(ema_decay=0.8)
  sequence = factor_sequence(9)
  state = curvature.init_curvature_state(cfg)
  update = jax.jit(lambda s, f: curvature.update_factors(s, f, cfg))
  for factors in sequence:
    state = update(state, factors)
  stored_by_hand = {LAYER_1: (np.asarray, np.asarray), LAYER_2: (np.asarray, np.diag)}
  for path, compress_by_hand in stored_by_hand.items():
    for side in (0, 1):
      expected = None
      for count, factors in enumerate(sequence):
        new = compress_by_hand[side](np.asarray(factors[path][side], np.float64))
        weight = max(1 - 0.8, 1 / (count + 1))  # first sets, then uniform mean, then EMA
        expected = new if expected is None else (1 - weight) * expected + weight * new
      np.testing.assert_allclose(state.factors[path][side], expected, rtol=1e-5)
  assert int(state.factor_counts[LAYER_1]) == 9


def test_first_update_sets_the_factor_then_averages():
  cfg = config(ema_decay=0.95)
  first, second = factor_sequence(2)
  state = curvature.update_factors(curvature.init_curvature_state(cfg), first, cfg)
  np.testing.assert_allclose(state.factors[LAYER_1][0], first[LAYER_1][0], rtol=1e-6)
  np.testing.assert_allclose(state.factors[LAYER_2][1], jnp.diag(first[LAYER_2][1]), rtol=1e-6)
  state = curvature.update_factors(state, second, cfg)
  np.testing.assert_allclose(state.factors[LAYER_1][0],
                             (first[LAYER_1][0] + second[LAYER_1][0]) / 2,
                             rtol=1e-6)


def test_state_dtype_is_float32():
  state = curvature.init_curvature_state(config(damping_mode='pi'))
  state = curvature.update_curvature(state, lambda: factor_sequence(1)[0],
                                     config(damping_mode='pi'))
  for leaf in jax.tree_util.tree_leaves((state.factors, state.inverses)):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize('cov_every,inv_every,warm', [(2, 3, 0), (3, 1, 0), (1, 4, 0), (4, 5, 3)])
def test_gating_under_jit(cov_every, inv_every, warm):
  cfg = config(cov_update_every=cov_every, inverse_update_every=inv_every, damping_mode='pi',
               warm_start_steps=warm)
  sequence = factor_sequence(8)
  cov_steps = {t for t in range(8) if t < warm or t % cov_every == 0}
  inv_steps = {t for t in range(8) if t < warm or t % inv_every == 0}

  @jax.jit
  def step(state, factors):
    return curvature.update_curvature(state, lambda: factors, cfg)

  scheme = inverses.inverse_scheme('pi')
  state = curvature.init_curvature_state(cfg)
  inverse_source = None  # the EMA factors (A, B) the last inverse update saw
  for t, factors in enumerate(sequence):
    new = step(state, factors)
    factor_changed = not np.allclose(new.factors[LAYER_1][0], state.factors[LAYER_1][0])
    assert factor_changed == (t in cov_steps), t
    inverse_changed = False
    if t in inv_steps:
      inverse_changed = (inverse_source is None
                         or not np.allclose(new.factors[LAYER_1][0], inverse_source[0]))
      inverse_source = new.factors[LAYER_1]
    changed = not np.allclose(new.inverses[LAYER_1].a, state.inverses[LAYER_1].a)
    assert changed == inverse_changed, t
    expected = scheme.compute(*inverse_source, cfg.damping)
    np.testing.assert_allclose(new.inverses[LAYER_1].a, expected.a, rtol=1e-5, atol=1e-6)
    assert int(new.step) == t + 1
    state = new
  assert int(state.factor_counts[LAYER_1]) == len(cov_steps)


def test_factors_fn_is_not_called_on_skipped_steps():
  cfg = config(cov_update_every=2)
  calls = []
  factors = factor_sequence(1)[0]

  def factors_fn():
    jax.debug.callback(lambda: calls.append('run'))
    return factors

  state = curvature.init_curvature_state(cfg)
  step = jax.jit(lambda s: curvature.update_curvature(s, factors_fn, cfg))
  for _ in range(4):
    state = step(state)
  jax.effects_barrier()
  assert calls.count('run') == 2  # steps 0 and 2


def poisoned(factors, path):
  """`factors` with a NaN in the `A` factor of `path`."""
  a, b = factors[path]
  return {**factors, path: (a.at[0, 0].set(jnp.nan), b)}


def test_nonfinite_factors_keep_the_last_good_inverse():
  cfg = config(damping_mode='exact')
  first, second = factor_sequence(2)
  step = jax.jit(lambda s, f: curvature.update_curvature(s, lambda: f, cfg))
  good = step(curvature.init_curvature_state(cfg), first)
  bad = step(good, poisoned(second, LAYER_1))
  assert int(bad.num_nonfinite) == 1
  for new, old in zip(jax.tree_util.tree_leaves(bad.inverses[LAYER_1]),
                      jax.tree_util.tree_leaves(good.inverses[LAYER_1])):
    np.testing.assert_array_equal(new, old)
  np.testing.assert_array_equal(bad.factors[LAYER_1][0], good.factors[LAYER_1][0])
  assert int(bad.factor_counts[LAYER_1]) == 1 and int(bad.factor_counts[LAYER_2]) == 2
  assert not np.allclose(bad.factors[LAYER_2][0], good.factors[LAYER_2][0])  # other layer moved on
  assert inverses.all_finite(bad.inverses)


def test_nonfinite_inverse_keeps_the_last_good_inverse():
  cfg = config(damping_mode='pi')
  state = curvature.update_curvature(curvature.init_curvature_state(cfg),
                                     lambda: factor_sequence(1)[0], cfg)
  a, b = state.factors[LAYER_2]
  broken = state._replace(factors={**state.factors, LAYER_2: (a.at[1, 1].set(jnp.inf), b)})
  updated = jax.jit(lambda s: curvature.update_inverses(s, cfg))(broken)
  assert int(updated.num_nonfinite) == 1
  np.testing.assert_array_equal(updated.inverses[LAYER_2].a, state.inverses[LAYER_2].a)


def test_first_step_nonfinite_keeps_identity_preconditioner():
  cfg = config(damping_mode='exact', damping=0.1)
  state = curvature.update_curvature(curvature.init_curvature_state(cfg),
                                     lambda: poisoned(factor_sequence(1)[0], LAYER_1), cfg)
  grad = jnp.ones((4, 3))
  out = curvature.precondition_layers(state, {LAYER_1: grad}, cfg)
  np.testing.assert_allclose(out[LAYER_1], grad / 1.1, rtol=1e-6)


def test_precondition_layers_matches_dense_solve():
  cfg = config(damping_mode='exact', damping=0.01)
  factors = factor_sequence(1)[0]
  state = curvature.update_curvature(curvature.init_curvature_state(cfg), lambda: factors, cfg)
  grad = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2)), jnp.float32)
  got = curvature.precondition_layers(state, {LAYER_2: grad}, cfg)[LAYER_2]
  a, b = factors[LAYER_2]
  block = jnp.kron(a, jnp.diag(jnp.diag(b))) + 0.01 * jnp.eye(6)
  want = jnp.linalg.solve(block, grad.reshape(-1)).reshape(3, 2)
  np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize('bad', [dict(damping=0.0), dict(damping_mode='tikhonov'),
                                 dict(ema_decay=1.0), dict(cov_update_every=0),
                                 dict(inverse_update_every=1.5), dict(warm_start_steps=-1)])
def test_bad_config_is_rejected(bad):
  with pytest.raises(ValueError):
    curvature.init_curvature_state(config(**bad))


def test_wrong_factor_shape_is_rejected():
  cfg = config()
  factors = factor_sequence(1)[0]
  factors[LAYER_1] = (jnp.eye(5), factors[LAYER_1][1])
  with pytest.raises(ValueError, match='expected'):
    curvature.update_factors(curvature.init_curvature_state(cfg), factors, cfg)
