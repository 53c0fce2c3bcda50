"""K-FAC as Optax transformations: `precondition` (the curvature piece) and `kfac_optimizer`.

`precondition(apply_fn, **options)` is an `optax.GradientTransformationExtraArgs` whose update
needs the batch for the curvature statistics:

    preconditioner = kfac.precondition(apply_fn, loss='softmax_cross_entropy',
                                       sample_inputs=batch['inputs'], flavour='reduce')
    state = preconditioner.init(params)
    updates, state = preconditioner.update(grads, state, params, inputs=batch['inputs'],
                                           targets=batch['targets'], mask=None, rng=rng)

It is meant to be chained (`optax.chain(kfac.precondition(...), optax.sgd(...))`, or
`kfac_optimizer`); chained transforms receive the same extra arguments and those that take none
ignore them.

The layer structure (which parameters form which Kronecker block, with which shapes) is found by
tracing the model on `sample_inputs` (shapes only, `jax.eval_shape`), which is why the options
carry them: optax's `init(params)` sees no batch. `sample_inputs` may be a batch or a tree of
`jax.ShapeDtypeStruct`; only its shapes matter, and they must match the training batches (the
update traces the structure again from its own batch, statically, and checks that it agrees).

Each covered layer (`nn.Dense`, `nn.DenseGeneral`, `nn.Conv`; see `kfac.capture`) has the block
`A kron B` on `concat([kernel_2d, bias[None]])`; its gradient matrix `G [P_in(+1), P_out]` is
replaced by the damped-inverse product (see `kfac.inverses`). Every other parameter's gradient
passes through unchanged. A factor with a side above `max_factor_dim` falls back to its diagonal
or a trace-matched identity (`fallback`); `curvature_report` lists every parameter, its block and
every fallback with its reason, and `strict=True` turns any fallback into an error.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from kfac import capture, curvature, factors, inverses, layers, losses

ParamPath = Tuple[str, ...]

# The reason `kfac.capture.layer_report` gives for parameters of modules that are not linear
# layers at all (LayerNorm, Embed, ...): by design, not a fallback.
_NOT_A_LINEAR_LAYER = 'not a Dense/DenseGeneral/Conv layer'


class PreconditionOptions(NamedTuple):
  """Every option of `precondition` (keyword arguments of `precondition` and `kfac_optimizer`).

  Attributes:
    loss: `'softmax_cross_entropy'`, `'sigmoid_cross_entropy'` or `'mse'` (`kfac.losses`).
    sample_inputs: a batch of inputs (or `jax.ShapeDtypeStruct`s) of the training shape, traced
      at init to find the layers.
    flavour: `'reduce'` or `'expand'` for every layer not in `flavour_overrides`.
    fisher_type: `'mc'`, `'type2'` or `'empirical'`.
    damping: Tikhonov damping of each block (`> 0`).
    damping_mode: `'exact'` (`(A kron B + damping I)^-1` in the eigenbasis) or `'pi'`
      (`(A + d_A I)^-1 kron (B + d_B I)^-1`, damping split by pi).
    ema_decay: decay of the factor EMA (the first updates are averaged, see `kfac.curvature`).
    cov_update_every: T_cov, statistics are computed on steps 0, T_cov, 2 T_cov, ...
    inverse_update_every: T_inv, inverses are recomputed on steps 0, T_inv, 2 T_inv, ...
    warm_start_steps: statistics and inverses are also updated on every step below this (the
      first inverses can be degenerate, e.g. behind a zero-initialised head; see
      `kfac.curvature`). 0 turns the warm start off.
    num_samples: MC samples per example (`fisher_type='mc'`).
    flavour_overrides: `{fnmatch pattern on 'A/B/Dense_0': flavour}`, first match wins.
    graph_rows: `{pattern: 'nodes' | 'edges' | 'graphs'}` for ambiguous graph layers.
    max_factor_dim: factors with a larger side fall back (see `fallback`).
    max_factor_dim_overrides: `{pattern: limit}` per layer, first match wins.
    fallback: `'diagonal'` or `'identity'` (trace-matched multiple of I) for factors above
      the limit.
    fallback_overrides: `{pattern: 'diagonal' | 'identity'}` per layer, first match wins.
    strict: raise instead of falling back (oversized factors, or Dense/DenseGeneral/Conv
      modules K-FAC cannot cover, e.g. grouped convolutions).
    state_dtype: dtype of factors and inverses (float32; float64 needs jax x64 mode).
    eigh_dtype: dtype `eigh` runs in (float32; float64 needs jax x64 mode).
    print_report: print `format_curvature_report` when `init` runs.
  """

  loss: str
  sample_inputs: Any
  flavour: str = 'reduce'
  fisher_type: str = 'mc'
  damping: float = 1e-3
  damping_mode: str = 'exact'
  ema_decay: float = 0.95
  cov_update_every: int = 1
  inverse_update_every: int = 10
  warm_start_steps: int = 10
  num_samples: int = 1
  flavour_overrides: Optional[Mapping[str, str]] = None
  graph_rows: Optional[Mapping[str, str]] = None
  max_factor_dim: int = 4096
  max_factor_dim_overrides: Optional[Mapping[str, int]] = None
  fallback: str = 'diagonal'
  fallback_overrides: Optional[Mapping[str, str]] = None
  strict: bool = False
  state_dtype: Any = jnp.float32
  eigh_dtype: Any = jnp.float32
  print_report: bool = False


class ReportRow(NamedTuple):
  """One parameter in the curvature report.

  Attributes:
    parameter: its path in the `'params'` collection, `'/'`-joined.
    shape: its shape.
    block: `'kron'` (kernel or bias of a covered layer) or `'none'` (gradient passed through).
    layer: the module path of its block (`''` for `'none'`).
    flavour: `'expand'` or `'reduce'` (`''` for `'none'`).
    factors: e.g. `'A [65, 65] full, B [10] diagonal'` (`''` for `'none'`).
    fallback: `''`, or what was downgraded and why (also why a parameter is not covered).
  """

  parameter: str
  shape: Tuple[int, ...]
  block: str
  layer: str
  flavour: str
  factors: str
  fallback: str


class LayerPlan(NamedTuple):
  """What the preconditioner does with one covered layer.

  Attributes:
    info: the layer (`kfac.capture.LayerInfo`).
    flavour: `'expand'` or `'reduce'`.
    layout: how its factors are stored (`kfac.curvature.FactorLayout`).
    fallbacks: one message per factor that fell back (empty when none).
  """

  info: capture.LayerInfo
  flavour: str
  layout: curvature.FactorLayout
  fallbacks: Tuple[str, ...]


class Plan(NamedTuple):
  """The static structure of the preconditioner for one model and input shape."""

  layers: Dict[capture.LayerPath, LayerPlan]
  uncovered: Dict[ParamPath, str]


# -- Options and plan (static, at trace time) ------------------------------------------------


def resolve_dtype(name: str, dtype: Any) -> jnp.dtype:
  """`dtype` as jax will use it; warns when float64 is asked for without jax's x64 mode."""
  resolved = jax.dtypes.canonicalize_dtype(dtype)
  if jnp.dtype(dtype) != resolved:
    warnings.warn(f'kfac: {name}={jnp.dtype(dtype).name} needs jax x64 mode '
                  f'(jax.config.update("jax_enable_x64", True)); using {resolved.name}',
                  stacklevel=3)
  return resolved


def validate_options(options: PreconditionOptions) -> PreconditionOptions:
  """Check `options` (clear `ValueError`s) and resolve its dtypes."""
  losses.check_loss_and_fisher(options.loss, options.fisher_type)
  if options.flavour not in layers.FLAVOURS:
    raise ValueError(f'flavour must be one of {layers.FLAVOURS}; got {options.flavour!r}')
  fallbacks = [options.fallback, *(options.fallback_overrides or {}).values()]
  for fallback in fallbacks:
    if fallback not in ('diagonal', 'identity'):
      raise ValueError(f"fallback must be 'diagonal' or 'identity'; got {fallback!r}")
  limits = [options.max_factor_dim, *(options.max_factor_dim_overrides or {}).values()]
  for limit in limits:
    if not (isinstance(limit, int) and limit >= 1):
      raise ValueError(f'max_factor_dim must be an integer >= 1; got {limit!r}')
  if not (isinstance(options.num_samples, int) and options.num_samples >= 1):
    raise ValueError(f'num_samples must be an integer >= 1; got {options.num_samples!r}')
  options = options._replace(state_dtype=resolve_dtype('state_dtype', options.state_dtype),
                             eigh_dtype=resolve_dtype('eigh_dtype', options.eigh_dtype))
  curvature.validate_config(curvature_config({}, options))
  return options


def _factor_kind(path: capture.LayerPath, side: str, dim: int, options: PreconditionOptions
                 ) -> Tuple[str, Optional[str]]:
  """`(kind, fallback message or None)` of one factor of the layer at `path`."""
  limit = capture.match_pattern(path, options.max_factor_dim_overrides) or options.max_factor_dim
  if dim <= limit:
    return 'full', None
  kind = capture.match_pattern(path, options.fallback_overrides) or options.fallback
  return kind, f'{side} {kind}: dimension {dim} > max_factor_dim {limit}'


def layer_plan(info: capture.LayerInfo, flavour: str, options: PreconditionOptions) -> LayerPlan:
  """Flavour, factor layout and fallbacks of one covered layer."""
  dim_a, dim_b = info.p_in + int(info.has_bias), info.p_out
  kind_a, fallback_a = _factor_kind(info.path, 'A', dim_a, options)
  kind_b, fallback_b = _factor_kind(info.path, 'B', dim_b, options)
  return LayerPlan(info=info, flavour=flavour,
                   layout=curvature.FactorLayout(dim_a, dim_b, kind_a, kind_b),
                   fallbacks=tuple(f for f in (fallback_a, fallback_b) if f is not None))


def make_plan(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
              options: PreconditionOptions) -> Plan:
  """Trace the model (shapes only) and decide every layer's block; raise in strict mode."""
  report = capture.layer_report(apply_fn, params, inputs, graph_rows=options.graph_rows)
  flavours = factors.layer_flavours(report, options.flavour, options.flavour_overrides)
  plan = Plan(layers={path: layer_plan(info, flavours[path], options)
                      for path, info in report.layers.items()},
              uncovered=dict(report.uncovered))
  if options.strict:
    problems = [f'{"/".join(path)}: {message}' for path, layer in plan.layers.items()
                for message in layer.fallbacks]
    problems += [f'{"/".join(path)}: not covered ({reason})'
                 for path, reason in plan.uncovered.items()
                 if not reason.endswith(_NOT_A_LINEAR_LAYER)]
    if problems:
      raise ValueError('kfac strict mode: fallbacks are not allowed:\n  ' + '\n  '.join(problems))
  return plan


def curvature_config(layouts: Mapping[capture.LayerPath, curvature.FactorLayout],
                     options: PreconditionOptions) -> curvature.CurvatureConfig:
  """The `CurvatureConfig` of `options` for these layer layouts."""
  return curvature.CurvatureConfig(
      layouts=layouts, damping=options.damping, damping_mode=options.damping_mode,
      ema_decay=options.ema_decay, cov_update_every=options.cov_update_every,
      inverse_update_every=options.inverse_update_every, dtype=options.state_dtype,
      eigh_dtype=options.eigh_dtype, warm_start_steps=options.warm_start_steps)


# -- The curvature report --------------------------------------------------------------------


def _stored_description(side: str, dim: int, kind: str) -> str:
  shape = ', '.join(str(d) for d in inverses.stored_factor_shape(dim, kind))
  return f'{side} [{shape}] {kind}'


def report_rows(plan: Plan, params: Any) -> List[ReportRow]:
  """One `ReportRow` per parameter leaf, in the order of the parameter tree."""
  covered = {}
  for path, layer in plan.layers.items():
    layout = layer.layout
    description = (f'{_stored_description("A", layout.dim_a, layout.kind_a)}, '
                   f'{_stored_description("B", layout.dim_b, layout.kind_b)}')
    for param_path in (layer.info.kernel_path, layer.info.bias_path):
      if param_path is not None:
        covered[param_path] = ('kron', '/'.join(path), layer.flavour, description,
                               '; '.join(layer.fallbacks))
  rows = []
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(capture.param_collection(params)):
    param_path = _param_path(key_path)
    block = covered.get(param_path)
    if block is None:
      reason = plan.uncovered.get(param_path, 'not covered')
      block = ('none', '', '', '', f'passed through: {reason}')
    rows.append(ReportRow('/'.join(param_path), tuple(leaf.shape), *block))
  return rows


def curvature_report(apply_fn: Callable[[Any, Any], jax.Array], params: Any,
                     **options: Any) -> List[ReportRow]:
  """The curvature report: every parameter, its block kind, flavour, factor shapes, fallback.

  Args:
    apply_fn: as for `precondition`.
    params: the model parameters (arrays or `jax.ShapeDtypeStruct`s).
    **options: the keyword arguments of `precondition` (`PreconditionOptions`).

  Returns:
    A list of `ReportRow`; `format_curvature_report` prints it.
  """
  options = validate_options(PreconditionOptions(**options))
  return report_rows(make_plan(apply_fn, params, options.sample_inputs, options), params)


def format_curvature_report(rows: List[ReportRow]) -> str:
  """A plain-text table of `rows`, one line per parameter."""
  header = ReportRow('parameter', 'shape', 'block', 'layer', 'flavour', 'factors', 'fallback')
  cells = [[str(value) for value in header]]
  cells += [[row.parameter, 'x'.join(map(str, row.shape)) or 'scalar', *row[2:]] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
  lines = ['  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
           for line in cells]
  lines.insert(1, '  '.join('-' * width for width in widths))
  return '\n'.join(lines)


# -- Gradients of covered layers as matrices -------------------------------------------------


def _param_path(key_path: Tuple[Any, ...]) -> ParamPath:
  """The string path of a leaf from its jax key path (dict keys, as `kfac.capture` names them)."""
  return tuple(str(getattr(key, 'key', key)) for key in key_path)


def _leaves_by_param_path(tree: Any) -> Dict[ParamPath, jax.Array]:
  """`{param_path: leaf}` of the `'params'` collection of `tree`."""
  leaves = jax.tree_util.tree_leaves_with_path(capture.param_collection(tree))
  return {_param_path(key_path): leaf for key_path, leaf in leaves}


def _replace_leaves(tree: Any, replacements: Mapping[ParamPath, jax.Array]) -> Any:
  """`tree` with the leaves at `replacements`' param paths replaced (same tree structure)."""
  has_collection = capture.param_collection(tree) is not tree

  def replace(key_path, leaf):
    path = _param_path(key_path)[1:] if has_collection else _param_path(key_path)
    return replacements.get(path, leaf)

  return jax.tree_util.tree_map_with_path(replace, tree)


def layer_gradients(plan: Plan, grads: Any) -> Dict[capture.LayerPath, jax.Array]:
  """`{layer_path: G [P_in(+1), P_out]}`: each covered layer's kernel and bias gradients."""
  leaves = _leaves_by_param_path(grads)
  return {path: capture.kernel_matrix(layer.info, leaves[layer.info.kernel_path],
                                      leaves[layer.info.bias_path] if layer.info.has_bias else None)
          for path, layer in plan.layers.items()}


def parameter_updates(plan: Plan, matrices: Mapping[capture.LayerPath, jax.Array]
                      ) -> Dict[ParamPath, jax.Array]:
  """Split each layer's `[P_in(+1), P_out]` matrix back into `{kernel_path: .., bias_path: ..}`."""
  updates = {}
  for path, matrix in matrices.items():
    info = plan.layers[path].info
    kernel, bias = capture.split_kernel_matrix(info, matrix)
    updates[info.kernel_path] = kernel
    if info.has_bias:
      updates[info.bias_path] = bias
  return updates


# -- The transformations ---------------------------------------------------------------------


def precondition(apply_fn: Callable[[Any, Any], jax.Array], **options: Any
                 ) -> optax.GradientTransformationExtraArgs:
  """K-FAC preconditioning of the gradients of every Dense/DenseGeneral/Conv layer.

  Eschenhagen et al. 2023 (K-FAC-expand and K-FAC-reduce); Martens & Grosse 2015 (damping, EMA).

  Args:
    apply_fn: `apply_fn(params, inputs) -> output [N, ...]`, an unmodified Flax apply over the
      same parameter tree the optimiser updates (close over model state, train mode, dropout).
    **options: `PreconditionOptions`; `loss` and `sample_inputs` are required.

  Returns:
    An `optax.GradientTransformationExtraArgs`. `init(params)` builds a
    `kfac.curvature.CurvatureState`; `update(grads, state, params, *, inputs, targets,
    mask=None, rng=None)` updates the curvature when due (`rng` is required for
    `fisher_type='mc'`), then returns the preconditioned gradients and the new state. Both jit.
  """
  options = validate_options(PreconditionOptions(**options))

  def init_fn(params):
    plan = make_plan(apply_fn, params, options.sample_inputs, options)
    if options.print_report:
      print(format_curvature_report(report_rows(plan, params)))
    layouts = {path: layer.layout for path, layer in plan.layers.items()}
    config = curvature_config(layouts, options)
    return jax.jit(lambda: curvature.init_curvature_state(config))()  # One compile, not one per op.

  def update_fn(updates, state, params=None, *, inputs, targets, mask=None, rng=None, **unused):
    del unused  # Extra arguments of other transformations in a chain.
    if params is None:
      raise ValueError('kfac.precondition needs params in update(grads, state, params, ...)')
    plan = make_plan(apply_fn, params, inputs, options)
    layouts = {path: layer.layout for path, layer in plan.layers.items()}
    if set(layouts) != set(state.factors):
      raise ValueError(f'layers of this batch {sorted(layouts)} differ from those at init '
                       f'{sorted(state.factors)}: sample_inputs must have the training shapes')
    config = curvature_config(layouts, options)

    def factors_fn():
      return factors.compute_factors(
          apply_fn, params, inputs, targets, loss=options.loss, flavour=options.flavour,
          fisher_type=options.fisher_type, rng=rng, mask=mask, num_samples=options.num_samples,
          flavour_overrides=options.flavour_overrides, graph_rows=options.graph_rows)

    state = curvature.update_curvature(state, factors_fn, config)
    preconditioned = curvature.precondition_layers(state, layer_gradients(plan, updates), config)
    return _replace_leaves(updates, parameter_updates(plan, preconditioned)), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kfac_optimizer(apply_fn: Callable[[Any, Any], jax.Array], *,
                   learning_rate: optax.ScalarOrSchedule,
                   momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
                   clip_update_norm: Optional[float] = None, **precondition_options: Any
                   ) -> optax.GradientTransformationExtraArgs:
  """K-FAC with weight decay, (Nesterov) momentum, a learning-rate schedule and optional clipping.

  `optax.chain` of: `precondition` -> `add_decayed_weights(weight_decay)` ->
  `trace(momentum, nesterov)` -> `clip_by_global_norm(clip_update_norm)` (if given) ->
  `scale_by_learning_rate(learning_rate)`.

  Weight decay is added to the *preconditioned* gradient, before momentum: the same place as
  in AlgoPerf's Nesterov reference (`add_decayed_weights` before SGD), so a tuned reference
  weight decay carries over with its meaning. Added before preconditioning, it would be scaled
  by the inverse curvature (up to `1 / damping` in flat directions). Clipping bounds the
  global norm of the momentum direction, so no step moves the parameters by more than
  `learning_rate * clip_update_norm`.

  Args:
    apply_fn: as for `precondition`.
    learning_rate: a float or an optax schedule of the step count.
    momentum: momentum decay (0 for none).
    nesterov: Nesterov momentum.
    weight_decay: L2 coefficient added to the preconditioned gradient.
    clip_update_norm: maximum global norm of the update direction, or None.
    **precondition_options: `PreconditionOptions` of `precondition`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update` takes the extra arguments of
    `precondition` (`inputs`, `targets`, `mask`, `rng`).
  """
  pieces = [precondition(apply_fn, **precondition_options),
            optax.add_decayed_weights(weight_decay),
            optax.trace(decay=momentum, nesterov=nesterov)]
  if clip_update_norm is not None:
    pieces.append(optax.clip_by_global_norm(clip_update_norm))
  pieces.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*pieces)
