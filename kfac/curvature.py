"""Curvature state: EMA of Kronecker factors, cached damped inverses, periodic updates.

Pure functions over a `CurvatureState` NamedTuple. One step of `update_curvature`:

1. when `step % cov_update_every == 0`, new factors `{layer_path: (A, B)}` are computed (by a
   callable, so that the statistics pass only runs on due steps) and folded into the EMA;
2. when `step % inverse_update_every == 0`, the damped inverses are recomputed from the EMA;
3. `step` advances.

Warm start: on the first `warm_start_steps` steps both updates run on every step. Without it the
inverses of step 0 serve until step `T_inv`; if the first statistics are degenerate (a
zero-initialised classifier head makes every other layer's output-gradient factor `B` zero at
step 0, so its damped inverse is `1 / damping` times the identity), the next `T_inv - 1` updates
are the gradient scaled by `1 / damping`, which diverges for small damping.

Both gates are `lax.cond`s on the traced step counter: the whole update jits, with no host
synchronisation. Every array of the state has the configured dtype (float32 by default); the
counters are int32.

EMA with a bias correction for the first updates (per layer, `c` = accepted updates so far):
`F <- (1 - w) F + w F_new` with `w = max(1 - ema_decay, 1 / (c + 1))`. The first update sets the
factor, the next ones average uniformly until `1 / (c + 1)` reaches `1 - ema_decay` (after
`1 / (1 - ema_decay)` updates: 20 for 0.95), then it is the usual EMA.

Non-finite safety (per layer): new statistics with a NaN/inf are not folded in (the EMA keeps its
last value) and a non-finite inverse is not stored (the last good inverse stays, initially an
identity-like preconditioner); each rejection adds one to `num_nonfinite`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from kfac import inverses

LayerPath = Tuple[str, ...]
Factors = Dict[LayerPath, Tuple[jax.Array, jax.Array]]


class FactorLayout(NamedTuple):
  """How one layer's factors are stored.

  Attributes:
    dim_a: side of `A`: `P_in`, plus 1 with a bias.
    dim_b: side of `B`: `P_out`.
    kind_a, kind_b: `'full'`, `'diagonal'` or `'identity'` (see `kfac.inverses`).
  """

  dim_a: int
  dim_b: int
  kind_a: str = 'full'
  kind_b: str = 'full'


class CurvatureConfig(NamedTuple):
  """Settings of the curvature state, closed over by jitted code (only `damping` may be traced).

  Attributes:
    layouts: `{layer_path: FactorLayout}` of every covered layer.
    damping: Tikhonov damping added to the curvature block (`> 0`).
    damping_mode: `'exact'` or `'pi'` (see `kfac.inverses`).
    ema_decay: decay of the factor EMA, in [0, 1).
    cov_update_every: factors are updated on steps `0, T_cov, 2 T_cov, ...`.
    inverse_update_every: inverses are recomputed on steps `0, T_inv, 2 T_inv, ...`.
    dtype: dtype of every factor and inverse in the state.
    eigh_dtype: dtype `eigh` runs in (at least float32).
    warm_start_steps: steps `0 .. warm_start_steps - 1` update factors and inverses every step.
  """

  layouts: Mapping[LayerPath, FactorLayout]
  damping: Any = 1e-3
  damping_mode: str = 'exact'
  ema_decay: float = 0.95
  cov_update_every: int = 1
  inverse_update_every: int = 1
  dtype: Any = jnp.float32
  eigh_dtype: Any = jnp.float32
  warm_start_steps: int = 0


class CurvatureState(NamedTuple):
  """State of the curvature estimate.

  Attributes:
    step: int32 `[]`, curvature updates done so far (gates the periodic updates).
    factors: `{layer_path: (A, B)}` EMA factors in their stored forms.
    factor_counts: `{layer_path: int32 []}` accepted factor updates per layer (EMA weights).
    inverses: `{layer_path: cache}` last good damped inverses (`ExactInverse` or `PiInverse`).
    num_nonfinite: int32 `[]`, per-layer factor or inverse updates rejected as non-finite.
  """

  step: jax.Array
  factors: Factors
  factor_counts: Dict[LayerPath, jax.Array]
  inverses: Dict[LayerPath, Any]
  num_nonfinite: jax.Array


def validate_config(config: CurvatureConfig) -> None:
  """Raise `ValueError` with a clear message for a bad setting (Python numbers only)."""
  if isinstance(config.damping, (int, float)) and not config.damping > 0:
    raise ValueError(f'damping must be > 0, got {config.damping}')
  if config.damping_mode not in inverses.DAMPING_MODES:
    raise ValueError(f'damping_mode must be one of {inverses.DAMPING_MODES}, '
                     f'got {config.damping_mode!r}')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f'ema_decay must be in [0, 1), got {config.ema_decay}')
  for name in ('cov_update_every', 'inverse_update_every'):
    value = getattr(config, name)
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
  if not (isinstance(config.warm_start_steps, int) and config.warm_start_steps >= 0):
    raise ValueError(f'warm_start_steps must be an integer >= 0, got {config.warm_start_steps!r}')
  for path, layout in config.layouts.items():
    for kind in (layout.kind_a, layout.kind_b):
      if kind not in inverses.FACTOR_KINDS:
        raise ValueError(f'layer {path}: factor kind must be one of {inverses.FACTOR_KINDS}, '
                         f'got {kind!r}')


def zero_factors(config: CurvatureConfig) -> Factors:
  """All-zero stored factors of every layer in `config.layouts`."""
  def zeros(dim, kind):
    return jnp.zeros(inverses.stored_factor_shape(dim, kind), config.dtype)
  return {path: (zeros(layout.dim_a, layout.kind_a), zeros(layout.dim_b, layout.kind_b))
          for path, layout in config.layouts.items()}


def init_curvature_state(config: CurvatureConfig) -> CurvatureState:
  """Zero factors, identity-like inverses (see `InverseScheme.identity`), counters at 0."""
  validate_config(config)
  scheme = inverses.inverse_scheme(config.damping_mode)
  factors = zero_factors(config)
  return CurvatureState(
      step=jnp.zeros([], jnp.int32),
      factors=factors,
      factor_counts={path: jnp.zeros([], jnp.int32) for path in factors},
      inverses={path: scheme.identity(a, b) for path, (a, b) in factors.items()},
      num_nonfinite=jnp.zeros([], jnp.int32))


def compress_factors(raw_factors: Mapping[LayerPath, Tuple[jax.Array, jax.Array]],
                     config: CurvatureConfig) -> Factors:
  """Full `[d, d]` factors -> stored forms of `config.layouts`, cast to `config.dtype`.

  Raises:
    KeyError: when a layer of `config.layouts` is missing from `raw_factors`.
    ValueError: when a factor's shape disagrees with its layout.
  """
  stored = {}
  for path, layout in config.layouts.items():
    factor_a, factor_b = raw_factors[path]
    for factor, dim in ((factor_a, layout.dim_a), (factor_b, layout.dim_b)):
      if factor.shape != (dim, dim):
        raise ValueError(f'layer {path}: factor of shape {factor.shape}, expected {(dim, dim)}')
    stored[path] = (inverses.compress_factor(factor_a.astype(config.dtype), layout.kind_a),
                    inverses.compress_factor(factor_b.astype(config.dtype), layout.kind_b))
  return stored


def ema_weight(count: jax.Array, ema_decay: float) -> jax.Array:
  """Weight of the new statistics: `max(1 - ema_decay, 1 / (count + 1))` (1 on the first)."""
  return jnp.maximum(1.0 - ema_decay, 1.0 / (count.astype(jnp.float32) + 1.0))


def update_factors(state: CurvatureState,
                   raw_factors: Mapping[LayerPath, Tuple[jax.Array, jax.Array]],
                   config: CurvatureConfig) -> CurvatureState:
  """Fold new full factors into the EMA; layers whose new factors are non-finite keep theirs."""
  new_stored = compress_factors(raw_factors, config)
  factors, counts, rejected = {}, {}, []
  for path, old in state.factors.items():
    new = new_stored[path]
    count = state.factor_counts[path]
    finite = inverses.all_finite(new)
    weight = ema_weight(count, config.ema_decay).astype(config.dtype)
    blended = tuple((1 - weight) * o + weight * n for o, n in zip(old, new))
    factors[path] = tuple(jnp.where(finite, b, o) for b, o in zip(blended, old))
    counts[path] = count + finite.astype(jnp.int32)
    rejected.append(jnp.logical_not(finite))
  return state._replace(factors=factors, factor_counts=counts,
                        num_nonfinite=state.num_nonfinite + _count_true(rejected))


def update_inverses(state: CurvatureState, config: CurvatureConfig) -> CurvatureState:
  """Recompute every layer's damped inverse from the EMA; non-finite ones keep the last good.

  A layer without any accepted factor update yet keeps its identity-like initial inverse.
  """
  scheme = inverses.inverse_scheme(config.damping_mode)
  new_inverses, rejected = {}, []
  for path, (factor_a, factor_b) in state.factors.items():
    old = state.inverses[path]
    new = scheme.compute(factor_a, factor_b, config.damping, config.eigh_dtype)
    finite = inverses.all_finite(new)
    accept = finite & (state.factor_counts[path] > 0)
    new_inverses[path] = jax.tree_util.tree_map(lambda n, o: jnp.where(accept, n, o), new, old)
    rejected.append(jnp.logical_not(finite))
  return state._replace(inverses=new_inverses,
                        num_nonfinite=state.num_nonfinite + _count_true(rejected))


def _count_true(flags: list) -> jax.Array:
  """int32 number of true scalar flags."""
  return jnp.sum(jnp.stack(flags).astype(jnp.int32)) if flags else jnp.zeros([], jnp.int32)


def is_due(step: Any, every: int, warm_start_steps: int = 0) -> Any:
  """Whether a periodic update runs on step `step`: a multiple of `every`, or a warm-start step.
  A Python bool for an int step, a traced bool for a traced one."""
  return (step % every == 0) | (step < warm_start_steps)


def _when_due(every: int, warm_start_steps: int, step: jax.Array,
              update: Callable[[CurvatureState], CurvatureState],
              state: CurvatureState) -> CurvatureState:
  """`update(state)` on steps that are multiples of `every` or below `warm_start_steps` (a
  `lax.cond`; direct for `every == 1`)."""
  if every == 1:
    return update(state)
  return jax.lax.cond(is_due(step, every, warm_start_steps), update,
                      lambda unchanged: unchanged, state)


def update_curvature(state: CurvatureState, factors_fn: Callable[[], Mapping[LayerPath, Any]],
                     config: CurvatureConfig) -> CurvatureState:
  """One curvature step: factors when due, then inverses when due, then `step + 1` (due: see
  `is_due`).

  Args:
    state: the current state.
    factors_fn: `() -> {layer_path: (A [dim_a, dim_a], B [dim_b, dim_b])}`, the statistics of the
      current batch; only called (traced into the due branch) when factors are due.
    config: the static settings.

  Returns:
    The new state.
  """
  step = state.step
  state = _when_due(config.cov_update_every, config.warm_start_steps, step,
                    lambda s: update_factors(s, factors_fn(), config), state)
  state = _when_due(config.inverse_update_every, config.warm_start_steps, step,
                    lambda s: update_inverses(s, config), state)
  return state._replace(step=step + 1)


def precondition_layers(state: CurvatureState, layer_grads: Mapping[LayerPath, jax.Array],
                        config: CurvatureConfig) -> Dict[LayerPath, jax.Array]:
  """Multiply each layer's `[dim_a, dim_b]` gradient matrix by its cached damped inverse."""
  scheme = inverses.inverse_scheme(config.damping_mode)
  return {path: scheme.apply(state.inverses[path], grad.astype(config.dtype), config.damping
                             ).astype(grad.dtype)
          for path, grad in layer_grads.items()}
