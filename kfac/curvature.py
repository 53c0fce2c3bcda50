"""Curvature state over per-layer blocks: periodic statistics and inverse updates, rejection of
non-finite updates.

Pure functions over a `CurvatureState` NamedTuple. One step of `update_curvature`:

1. when statistics are due (`is_due(step, cov_update_every, warm_start_steps)`), the batch's
   `LayerStatistics` of every layer are computed (by a callable, so that the statistics pass
   only runs on due steps) and each block folds them into its average (`CurvatureBlock.update`);
2. when inverses are due (`inverse_update_every`), each block refreshes its inverse
   (`CurvatureBlock.invert`);
3. `step` advances.

Warm start: on the first `warm_start_steps` steps both updates run on every step. Without it the
inverses of step 0 serve until step `T_inv`; if the first statistics are degenerate (a
zero-initialised classifier head makes every other layer's output-gradient factor `B` zero at
step 0, so its damped inverse is `1 / damping` times the identity), the next `T_inv - 1` updates
are the gradient scaled by `1 / damping`, which diverges for small damping.

Both gates are `lax.cond`s on the traced step counter: the whole update jits, with no host
synchronisation.

EMA weight with a bias correction for the first updates (per layer, `c` = accepted updates so
far): `w = max(1 - ema_decay, 1 / (c + 1))`, passed to the block (`F <- (1 - w) F + w F_batch`):
the first update sets the factor, the next ones average uniformly until `1 / (c + 1)` reaches
`1 - ema_decay` (after 20 updates for 0.95), then it is the usual EMA.

Non-finite safety (per layer): a new block state with a NaN/inf (from the statistics or from the
inverse) is not stored; the last good one stays (initially an identity-like preconditioner).
Each rejection adds one to the layer's `rejected` counter and to its `consecutive_rejected`
counter, which an accepted statistics update resets to 0 (an inverse refreshed from the same old
statistics does not: the layer's curvature is still stale). An inverse is only accepted once the
layer has accepted statistics.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from kfac import defaults, distributed, distributed_statistics
from kfac.blocks import CurvatureBlock, LayerStatistics

LayerPath = Tuple[str, ...]


class CurvatureConfig(NamedTuple):
  """Settings of the curvature state, closed over by jitted code (only `damping` may be traced).

  Attributes:
    blocks: `{layer_path: CurvatureBlock}` of every covered layer.
    damping: Tikhonov damping of every block (`> 0`).
    ema_decay: decay of the statistics' average, in [0, 1).
    cov_update_every: T_cov, statistics are updated on steps `0, T_cov, 2 T_cov, ...`.
    inverse_update_every: T_inv, inverses are refreshed on steps `0, T_inv, 2 T_inv, ...`.
    warm_start_steps: steps `0 .. warm_start_steps - 1` update statistics and inverses.
    mesh: data-parallel devices; with more than one, the statistics of the additive blocks are
      reduced with one all-reduce (`block_statistics`) and each device inverts a share of the
      layers (`kfac.distributed.distributed_invert` along `axis_name`), the same results.
    axis_name: the mesh axis of the batch.
  """

  blocks: Mapping[LayerPath, CurvatureBlock]
  damping: Any = defaults.DAMPING
  ema_decay: float = defaults.EMA_DECAY
  cov_update_every: int = defaults.COV_UPDATE_EVERY
  inverse_update_every: int = defaults.INVERSE_UPDATE_EVERY
  warm_start_steps: int = defaults.WARM_START_STEPS
  mesh: Optional[Mesh] = None
  axis_name: str = 'batch'


class CurvatureState(NamedTuple):
  """State of the curvature estimate (every counter is int32 `[]`).

  Attributes:
    step: curvature steps done so far (gates the periodic updates).
    blocks: `{layer_path: block state}`.
    counts: `{layer_path: accepted statistics updates}` (EMA weights).
    rejected: `{layer_path: non-finite statistics or inverse updates rejected}`.
    consecutive_rejected: `{layer_path: rejections since the last accepted statistics update}`.
  """

  step: jax.Array
  blocks: Dict[LayerPath, Any]
  counts: Dict[LayerPath, jax.Array]
  rejected: Dict[LayerPath, jax.Array]
  consecutive_rejected: Dict[LayerPath, jax.Array]

  @property
  def num_rejected(self) -> jax.Array:
    """Rejected updates over all layers, int32 `[]`."""
    return sum(self.rejected.values(), jnp.zeros([], jnp.int32))


def curvature_states(tree: Any) -> List[CurvatureState]:
  """Every `CurvatureState` in `tree` (e.g. the state of an optax chain holding
  `kfac.precondition`), in tree order."""
  found = jax.tree_util.tree_leaves(tree, is_leaf=lambda node: isinstance(node, CurvatureState))
  return [state for state in found if isinstance(state, CurvatureState)]


def rejections(tree: Any) -> Dict[str, Tuple[jax.Array, jax.Array]]:
  """`{'/'-joined layer path: (rejected, consecutive_rejected)}` of every `CurvatureState` in
  `tree`, for logs and reports."""
  return {'/'.join(path): (state.rejected[path], state.consecutive_rejected[path])
          for state in curvature_states(tree) for path in state.rejected}


def validate_config(config: CurvatureConfig) -> None:
  """Raise `ValueError` with a clear message for a bad setting (Python numbers only)."""
  if isinstance(config.damping, (int, float)) and not config.damping > 0:
    raise ValueError(f'damping must be > 0, got {config.damping}')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f'ema_decay must be in [0, 1), got {config.ema_decay}')
  for name in ('cov_update_every', 'inverse_update_every'):
    value = getattr(config, name)
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
  if not (isinstance(config.warm_start_steps, int) and config.warm_start_steps >= 0):
    raise ValueError(f'warm_start_steps must be an integer >= 0, got {config.warm_start_steps!r}')


def init_curvature_state(config: CurvatureConfig) -> CurvatureState:
  """Every block's initial state (identity-like preconditioners), counters at 0."""
  validate_config(config)
  zeros = {path: jnp.zeros([], jnp.int32) for path in config.blocks}
  return CurvatureState(step=jnp.zeros([], jnp.int32),
                        blocks={path: block.init() for path, block in config.blocks.items()},
                        counts=zeros, rejected=zeros, consecutive_rejected=zeros)


def all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every element of every array leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def ema_weight(count: jax.Array, ema_decay: float) -> jax.Array:
  """Weight of the new statistics: `max(1 - ema_decay, 1 / (count + 1))` (1 on the first)."""
  return jnp.maximum(1.0 - ema_decay, 1.0 / (count.astype(jnp.float32) + 1.0))


def _accept_or_keep(state: CurvatureState, new_blocks: Mapping[LayerPath, Any],
                    accept: Mapping[LayerPath, jax.Array], reject: Mapping[LayerPath, jax.Array],
                    reset_consecutive: bool) -> CurvatureState:
  """Store each layer's new block state where `accept`, count it where `reject`; an accepted
  update resets the consecutive count when `reset_consecutive`."""
  blocks, rejected, consecutive = {}, {}, {}
  for path, old in state.blocks.items():
    blocks[path] = jax.tree_util.tree_map(lambda n, o, ok=accept[path]: jnp.where(ok, n, o),
                                          new_blocks[path], old)
    bad = reject[path].astype(jnp.int32)
    rejected[path] = state.rejected[path] + bad
    consecutive[path] = state.consecutive_rejected[path] + bad
    if reset_consecutive:
      consecutive[path] = jnp.where(accept[path], 0, consecutive[path])
  return state._replace(blocks=blocks, rejected=rejected, consecutive_rejected=consecutive)


def block_statistics(statistics: Mapping[LayerPath, LayerStatistics], config: CurvatureConfig
                     ) -> Dict[LayerPath, Any]:
  """`{layer: block.statistics(rows)}`. With a mesh of several devices, the additive blocks'
  (Gram matrices) are computed from each device's chunk of the rows and summed with one
  all-reduce for all layers (`kfac.distributed_statistics.summed_over_devices`); the others
  (rows for Brand updates, mean activations) from the whole rows, as XLA partitions them."""
  blocks = config.blocks
  summed = []
  if config.mesh is not None and config.mesh.size > 1:
    devices = config.mesh.shape[config.axis_name]
    summed = [path for path, block in blocks.items()
              if block.additive and distributed_statistics.rows_divide(statistics[path], devices)]
  result = {path: block.statistics(statistics[path]) for path, block in blocks.items()
            if path not in summed}
  if summed:
    result.update(distributed_statistics.summed_over_devices(
        {path: blocks[path].statistics for path in summed},
        {path: statistics[path] for path in summed}, config.mesh, config.axis_name))
  return result


def update_statistics(state: CurvatureState, statistics: Mapping[LayerPath, LayerStatistics],
                      config: CurvatureConfig) -> CurvatureState:
  """Fold one batch's statistics into every block; non-finite new states are rejected."""
  new_blocks, finite = {}, {}
  stats = block_statistics(statistics, config)
  for path, block in config.blocks.items():
    weight = ema_weight(state.counts[path], config.ema_decay)
    new_blocks[path] = block.update(state.blocks[path], stats[path], weight)
    finite[path] = all_finite(new_blocks[path])
  state = _accept_or_keep(state, new_blocks, finite,
                          {path: jnp.logical_not(ok) for path, ok in finite.items()},
                          reset_consecutive=True)
  counts = {path: count + finite[path].astype(jnp.int32) for path, count in state.counts.items()}
  return state._replace(counts=counts)


def update_inverses(state: CurvatureState, config: CurvatureConfig) -> CurvatureState:
  """Refresh every block's inverse; non-finite ones keep the last good. A layer without
  accepted statistics yet keeps its identity-like initial inverse."""
  inverts = {path: block.invert for path, block in config.blocks.items()}
  if config.mesh is None or config.mesh.size == 1:
    new_blocks = {path: invert(state.blocks[path], config.damping)
                  for path, invert in inverts.items()}
  else:
    new_blocks = distributed.distributed_invert(inverts, state.blocks, config.mesh,
                                                config.axis_name, jnp.asarray(config.damping))
  accept, reject = {}, {}
  for path in config.blocks:
    finite = all_finite(new_blocks[path])
    accept[path] = finite & (state.counts[path] > 0)
    reject[path] = jnp.logical_not(finite)
  return _accept_or_keep(state, new_blocks, accept, reject, reset_consecutive=False)


def is_due(step: Any, every: int, warm_start_steps: int = 0) -> Any:
  """Whether a periodic update runs on step `step`: a multiple of `every`, or a warm-start step.
  A Python bool for an int step, a traced bool for a traced one."""
  return (step % every == 0) | (step < warm_start_steps)


def _when_due(every: int, warm_start_steps: int, step: jax.Array,
              update: Callable[[CurvatureState], CurvatureState],
              state: CurvatureState) -> CurvatureState:
  """`update(state)` on due steps (a `lax.cond`; direct for `every == 1`)."""
  if every == 1:
    return update(state)
  return jax.lax.cond(is_due(step, every, warm_start_steps), update,
                      lambda unchanged: unchanged, state)


def update_curvature(state: CurvatureState,
                     statistics_fn: Callable[[], Mapping[LayerPath, LayerStatistics]],
                     config: CurvatureConfig) -> CurvatureState:
  """One curvature step: statistics when due, then inverses when due, then `step + 1`.

  Args:
    state: the current state.
    statistics_fn: `() -> {layer_path: LayerStatistics}` of the current batch; only called
      (traced into the due branch) when statistics are due.
    config: the static settings.

  Returns:
    The new state.
  """
  step = state.step
  state = _when_due(config.cov_update_every, config.warm_start_steps, step,
                    lambda s: update_statistics(s, statistics_fn(), config), state)
  state = _when_due(config.inverse_update_every, config.warm_start_steps, step,
                    lambda s: update_inverses(s, config), state)
  return state._replace(step=step + 1)


def precondition_layers(state: CurvatureState, layer_grads: Mapping[LayerPath, jax.Array],
                        config: CurvatureConfig) -> Dict[LayerPath, jax.Array]:
  """Multiply each layer's `[dim_a, dim_b]` gradient matrix by its block's damped inverse."""
  return {path: config.blocks[path].apply(state.blocks[path], grad, config.damping)
          for path, grad in layer_grads.items()}
