"""Options of the K-FAC preconditioner and its plan: which block serves which layer.

The plan is static: it is made once, when `kfac.precondition`'s `init` traces the model on
`sample_inputs` (shapes only), and every update reuses it. Per covered layer it holds the
flavour, the curvature block chosen by `inverse_method` (+ `inverse_method_overrides`), and every
fallback with its reason, as structured `Fallback` records (the curvature report and strict mode
read them; nothing is matched from message text):

* a side of a Kronecker-factored block ('eigh', 'pi_eigh', 'cholesky') above `max_factor_dim`
  is stored as its diagonal or a trace-matched identity (`fallback`);
* a block whose factory cannot serve a layer (`kfac.blocks.UnsupportedLayer`) is replaced by the
  `fallback` block for the whole layer.

`strict=True` turns every fallback, and every Dense/DenseGeneral/Conv module K-FAC cannot cover
(`LayerReport.refused`), into a `ValueError` at init.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from kfac import blocks, curvature, defaults, factors, layers, losses, tracing
from kfac.blocks.lowrank import brand_rows_note
from kfac.param_paths import LayerPath, ParamPath, match_pattern

# Blocks that store the full `[d, d]` factors, and so honour `max_factor_dim` per side.
DENSE_FACTOR_METHODS = ('eigh', 'pi_eigh', 'cholesky', 'rsvd', 'brand_rsvd', 'brand_corrected')
# Blocks updated from the batch's rows by Brand's update (`LayerPlan.notes` when too many).
BRAND_METHODS = ('brand', 'brand_rsvd', 'brand_corrected')
FALLBACK_METHODS = ('diagonal', 'identity')


class PreconditionOptions(NamedTuple):
  """Every option of `precondition` (keyword arguments of `precondition` and `kfac_optimizer`).

  Attributes:
    loss: `'softmax_cross_entropy'`, `'sigmoid_cross_entropy'` or `'mse'` (`kfac.losses`).
    sample_inputs: a batch of inputs (or `jax.ShapeDtypeStruct`s) of the training shape, traced
      once at init to find the layers.
    flavour: `'reduce'` or `'expand'` for every layer not in `flavour_overrides`.
    fisher_type: `'mc'`, `'type2'` or `'empirical'`.
    damping: Tikhonov damping of each block (`> 0`).
    inverse_method: the block of every layer not in `inverse_method_overrides`
      (`kfac.blocks.BLOCK_FACTORIES`): 'eigh' (`(A kron B + damping I)^-1`), 'pi_eigh' or
      'cholesky' (`(A + d_A I)^-1 kron (B + d_B I)^-1`, damping split by pi), ...
    inverse_method_overrides: `{fnmatch pattern on 'A/B/Dense_0': method}`, first match wins.
    inverse_rank, inverse_oversampling, inverse_power_iterations: low-rank blocks' settings.
    lowrank_damping, brand_max_rows, inverse_correction_fraction: low-rank blocks' damping
      form, Brand's row limit and B-KFAC-c's corrected share (`kfac.blocks.BlockOptions`).
    ema_decay: decay of the statistics' average (the first updates are averaged).
    cov_update_every: T_cov, statistics are computed on steps 0, T_cov, 2 T_cov, ...
    inverse_update_every: T_inv, inverses are refreshed on steps 0, T_inv, 2 T_inv, ...
    warm_start_steps: statistics and inverses are also updated on every step below this.
    num_samples: MC samples per example (`fisher_type='mc'`).
    flavour_overrides: `{pattern: flavour}`, first match wins.
    graph_rows: `{pattern: 'nodes' | 'edges' | 'graphs'}` for ambiguous graph layers.
    max_factor_dim: factor sides above it fall back (see `fallback`).
    max_factor_dim_overrides: `{pattern: limit}` per layer, first match wins.
    fallback: `'diagonal'` or `'identity'` (trace-matched multiple of I).
    fallback_overrides: `{pattern: 'diagonal' | 'identity'}` per layer, first match wins.
    strict: raise instead of falling back (also for modules K-FAC cannot cover).
    state_dtype: dtype of the block states (float32; float64 needs jax x64 mode).
    eigh_dtype: dtype decompositions run in (float32; float64 needs jax x64 mode).
    print_report: print the curvature report when `init` runs.
  """

  loss: str
  sample_inputs: Any
  flavour: str = defaults.FLAVOUR
  fisher_type: str = defaults.FISHER_TYPE
  damping: float = defaults.DAMPING
  inverse_method: str = defaults.INVERSE_METHOD
  inverse_method_overrides: Optional[Mapping[str, str]] = None
  inverse_rank: int = blocks.BlockOptions().rank
  inverse_oversampling: int = blocks.BlockOptions().oversampling
  inverse_power_iterations: int = blocks.BlockOptions().power_iterations
  lowrank_damping: str = blocks.BlockOptions().lowrank_damping
  brand_max_rows: int = blocks.BlockOptions().brand_max_rows
  inverse_correction_fraction: float = blocks.BlockOptions().correction_fraction
  ema_decay: float = defaults.EMA_DECAY
  cov_update_every: int = defaults.COV_UPDATE_EVERY
  inverse_update_every: int = defaults.INVERSE_UPDATE_EVERY
  warm_start_steps: int = defaults.WARM_START_STEPS
  num_samples: int = defaults.NUM_SAMPLES
  flavour_overrides: Optional[Mapping[str, str]] = None
  graph_rows: Optional[Mapping[str, str]] = None
  max_factor_dim: int = defaults.MAX_FACTOR_DIM
  max_factor_dim_overrides: Optional[Mapping[str, int]] = None
  fallback: str = defaults.FALLBACK
  fallback_overrides: Optional[Mapping[str, str]] = None
  strict: bool = False
  state_dtype: Any = jnp.float32
  eigh_dtype: Any = jnp.float32
  print_report: bool = False


class Fallback(NamedTuple):
  """One downgrade of a layer's curvature: `what` ('A', 'B' or 'block') became `kind`, why."""

  what: str
  kind: str
  reason: str

  def __str__(self) -> str:
    return f'{self.what} {self.kind}: {self.reason}'


class LayerPlan(NamedTuple):
  """What the preconditioner does with one covered layer.

  Attributes:
    info: the layer (`kfac.tracing.LayerInfo`).
    flavour: `'expand'` or `'reduce'`.
    method: the kind of the block that serves it (after any fallback).
    forms: `(form of A, form of B)` of the Kronecker-factored blocks.
    block: the `kfac.blocks.CurvatureBlock`.
    fallbacks: every fallback (empty when none).
    notes: what the report should say about the block's cost (a Brand block fed more rows
      per batch than pays off, `kfac.blocks.lowrank.brand_rows_note`); empty when none.
  """

  info: tracing.LayerInfo
  flavour: str
  method: str
  forms: Tuple[str, str]
  block: blocks.CurvatureBlock
  fallbacks: Tuple[Fallback, ...]
  notes: Tuple[str, ...] = ()


class Plan(NamedTuple):
  """The static structure of the preconditioner for one model and input shape: the traced
  `report` (reused by every statistics pass) and the `LayerPlan` of every covered layer."""

  report: tracing.LayerReport
  layers: Dict[LayerPath, LayerPlan]

  @property
  def uncovered(self) -> Dict[ParamPath, str]:
    """Every parameter outside a covered layer, with the reason (`LayerReport.uncovered`)."""
    return self.report.uncovered


def resolve_dtype(name: str, dtype: Any) -> jnp.dtype:
  """`dtype` as jax will use it; warns when float64 is asked for without jax's x64 mode."""
  resolved = jax.dtypes.canonicalize_dtype(dtype)
  if jnp.dtype(dtype) != resolved:
    warnings.warn(f'kfac: {name}={jnp.dtype(dtype).name} needs jax x64 mode '
                  f'(jax.config.update("jax_enable_x64", True)); using {resolved.name}',
                  stacklevel=3)
  return resolved


def _positive_ints(name: str, values) -> None:
  for value in values:
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f'{name} must be an integer >= 1; got {value!r}')


def validate_options(options: PreconditionOptions) -> PreconditionOptions:
  """Check `options` (clear `ValueError`s) and resolve its dtypes."""
  losses.check_loss_and_fisher(options.loss, options.fisher_type)
  if options.flavour not in layers.FLAVOURS:
    raise ValueError(f'flavour must be one of {layers.FLAVOURS}; got {options.flavour!r}')
  for fallback in (options.fallback, *(options.fallback_overrides or {}).values()):
    if fallback not in FALLBACK_METHODS:
      raise ValueError(f'fallback must be one of {FALLBACK_METHODS}; got {fallback!r}')
  for method in (options.inverse_method, *(options.inverse_method_overrides or {}).values()):
    if method not in blocks.BLOCK_FACTORIES:
      raise ValueError(f'inverse_method must be one of {sorted(blocks.BLOCK_FACTORIES)}; '
                       f'got {method!r}')
  _positive_ints('max_factor_dim', [options.max_factor_dim,
                                    *(options.max_factor_dim_overrides or {}).values()])
  _positive_ints('num_samples', [options.num_samples])
  options = options._replace(state_dtype=resolve_dtype('state_dtype', options.state_dtype),
                             eigh_dtype=resolve_dtype('eigh_dtype', options.eigh_dtype))
  curvature.validate_config(curvature_config({}, options))
  return options


def _side_form(path: LayerPath, side: str, dim: int, options: PreconditionOptions
               ) -> Tuple[str, Optional[Fallback]]:
  """`(form, fallback or None)` of one factor side of a Kronecker-factored block."""
  limit = match_pattern(path, options.max_factor_dim_overrides) or options.max_factor_dim
  if dim <= limit:
    return 'full', None
  kind = match_pattern(path, options.fallback_overrides) or options.fallback
  return kind, Fallback(side, kind, f'dimension {dim} > max_factor_dim {limit}')


def layer_plan(info: tracing.LayerInfo, flavour: str, options: PreconditionOptions) -> LayerPlan:
  """Flavour, block and fallbacks of one covered layer."""
  dim_a, dim_b = info.dims
  method = match_pattern(info.path, options.inverse_method_overrides) or options.inverse_method
  forms, fallbacks = ((method, method) if method in FALLBACK_METHODS else ('full', 'full')), ()
  if method in DENSE_FACTOR_METHODS:
    (form_a, fallback_a), (form_b, fallback_b) = (_side_form(info.path, 'A', dim_a, options),
                                                  _side_form(info.path, 'B', dim_b, options))
    forms, fallbacks = (form_a, form_b), tuple(f for f in (fallback_a, fallback_b) if f)
  block_options = blocks.BlockOptions(
      dtype=options.state_dtype, eigh_dtype=options.eigh_dtype, rank=options.inverse_rank,
      oversampling=options.inverse_oversampling,
      power_iterations=options.inverse_power_iterations, forms=forms,
      lowrank_damping=options.lowrank_damping, brand_max_rows=options.brand_max_rows,
      correction_fraction=options.inverse_correction_fraction)
  try:
    block = blocks.make_block(method, dim_a, dim_b, block_options)
  except blocks.UnsupportedLayer as error:
    kind = match_pattern(info.path, options.fallback_overrides) or options.fallback
    fallbacks += (Fallback('block', kind, f'{method}: {error}'),)
    method, forms = kind, (kind, kind)
    block = blocks.make_block(kind, dim_a, dim_b, block_options._replace(forms=forms))
  return LayerPlan(info=info, flavour=flavour, method=method, forms=forms, block=block,
                   fallbacks=fallbacks)


def statistics_rows(info: tracing.LayerInfo, flavour: str, num_examples: int,
                    options: PreconditionOptions) -> Tuple[int, Optional[int]]:
  """Rows per batch of the layer's `a_rows` and `g_rows` (`kfac.layers`): reduce `N`, expand
  `sum_calls T R`; `g_rows` has `M` times as many (`M` = `num_samples` for 'mc', 1 for
  'empirical'; None for 'type2', whose `M` is the output's width)."""
  if flavour == 'reduce':
    rows_a = num_examples
  else:
    rows_a = sum(call.num_rows * layers.num_positions(info, call) for call in info.calls)
  columns = {'mc': options.num_samples, 'empirical': 1}.get(options.fisher_type)
  return rows_a, None if columns is None else rows_a * columns


def brand_notes(layer: LayerPlan, num_examples: int, options: PreconditionOptions
                ) -> Tuple[str, ...]:
  """`brand_rows_note` of each side of a Brand block fed too many rows (else empty)."""
  if layer.method not in BRAND_METHODS:
    return ()
  rows = statistics_rows(layer.info, layer.flavour, num_examples, options)
  notes = [(side, brand_rows_note(dim, options.inverse_rank, side_rows, options.brand_max_rows))
           for side, dim, side_rows in zip('AB', layer.info.dims, rows) if side_rows is not None]
  return tuple(f'{side}: {note}' for side, note in notes if note)


def strict_problems(plan: Plan) -> Tuple[str, ...]:
  """Every fallback and every refused module of `plan`, one line each (structured fields)."""
  problems = [f'{"/".join(path)}: {fallback}' for path, layer in plan.layers.items()
              for fallback in layer.fallbacks]
  problems += [f'{"/".join(path)}: not covered ({reason})'
               for path, reason in plan.report.refused.items()]
  return tuple(problems)


def make_plan(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
              options: PreconditionOptions) -> Plan:
  """Trace the model (shapes only) and decide every layer's block; raise in strict mode."""
  report = tracing.layer_report(apply_fn, params, inputs, graph_rows=options.graph_rows)
  flavours = factors.layer_flavours(report, options.flavour, options.flavour_overrides)
  planned = {path: layer_plan(info, flavours[path], options)
             for path, info in report.layers.items()}
  plan = Plan(report=report, layers={
      path: layer._replace(notes=brand_notes(layer, report.num_examples, options))
      for path, layer in planned.items()})
  problems = strict_problems(plan)
  if options.strict and problems:
    raise ValueError('kfac strict mode: fallbacks are not allowed:\n  ' + '\n  '.join(problems))
  return plan


def curvature_config(plan_layers: Mapping[LayerPath, LayerPlan], options: PreconditionOptions
                     ) -> curvature.CurvatureConfig:
  """The `CurvatureConfig` of `options` for these planned layers."""
  return curvature.CurvatureConfig(
      blocks={path: layer.block for path, layer in plan_layers.items()},
      damping=options.damping, ema_decay=options.ema_decay,
      cov_update_every=options.cov_update_every,
      inverse_update_every=options.inverse_update_every,
      warm_start_steps=options.warm_start_steps)
