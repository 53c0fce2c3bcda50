"""K-FAC as Optax transformations: `precondition` (the curvature piece) and `kfac_optimizer`.

`precondition(apply_fn, **options)` is an `optax.GradientTransformationExtraArgs` whose update
needs the batch for the curvature statistics:

    preconditioner = kfac.precondition(apply_fn, loss='softmax_cross_entropy',
                                       sample_inputs=batch['inputs'], flavour='reduce')
    state = preconditioner.init(params)
    updates, state = preconditioner.update(
        grads, state, params, inputs=batch['inputs'], targets=batch['targets'], mask=None,
        rng=rng, apply_kwargs={'model_state': model_state, 'dropout_rng': dropout_rng})

It is meant to be chained (`optax.chain(kfac.precondition(...), optax.sgd(...))`, or
`kfac_optimizer`); chained transforms receive the same extra arguments and those that take none
ignore them.

The plan (which parameters form which block, with which shapes; `kfac.plan`) is traced ONCE,
from `sample_inputs` (shapes only, `jax.eval_shape`; optax's `init(params)` sees no batch), and
every update reuses it: the statistics pass probes the traced layers without tracing the model
again. `sample_inputs` may be a batch or a tree of `jax.ShapeDtypeStruct`; its shapes must be the
training batches' (build the transform from the first batch when they are only known then).

Per-step arguments of the model (model state, dropout rng, train flag) go in `apply_kwargs`: the
statistics pass calls `apply_fn(params, inputs, **apply_kwargs)`, so the transform is built once
and not per step. `sample_apply_kwargs` (an option) are those of the trace at init.

Each covered layer's gradient matrix `G [P_in(+1), P_out]` (`kfac.param_paths`) is replaced by
its block's damped-inverse product (`kfac.blocks`); every other parameter's gradient passes
through unchanged. `kfac.report.curvature_report` lists every parameter, its block and every
fallback with its reason.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import optax
from jax.sharding import Mesh

from kfac import curvature, factors, param_paths
from kfac import plan as planning
from kfac import report


def _shape_signature(params: Any) -> Tuple[Any, ...]:
  """The static structure of a parameter tree: its treedef and every leaf's shape and dtype."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  return (treedef,) + tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


def precondition(apply_fn: Callable[..., jax.Array], *,
                 sample_apply_kwargs: Optional[Mapping[str, Any]] = None,
                 mesh: Optional[Mesh] = None, **options: Any
                 ) -> optax.GradientTransformationExtraArgs:
  """K-FAC preconditioning of the gradients of every Dense/DenseGeneral/Conv layer.

  Eschenhagen et al. 2023 (K-FAC-expand and K-FAC-reduce); Martens & Grosse 2015 (damping, EMA).

  Args:
    apply_fn: `apply_fn(params, inputs, **apply_kwargs) -> output [N, ...]`, an unmodified
      (unjitted) Flax apply over the same parameter tree the optimiser updates.
    sample_apply_kwargs: `apply_kwargs` for the trace at init (arrays or shapes), if `apply_fn`
      needs any.
    mesh: the data-parallel mesh (axis `'batch'`) of the train step, if any: the inverse step
      spreads the layers' decompositions over its devices (`kfac.curvature.CurvatureConfig`).
    **options: `kfac.plan.PreconditionOptions`; `loss` and `sample_inputs` are required.

  Returns:
    An `optax.GradientTransformationExtraArgs`. `init(params)` traces the plan and builds a
    `kfac.curvature.CurvatureState`; `update(grads, state, params, *, inputs, targets,
    mask=None, rng=None, apply_kwargs=None)` updates the curvature when due (`rng` is required
    for `fisher_type='mc'`), then returns the preconditioned gradients and the new state. Both
    jit.
  """
  options = planning.validate_options(planning.PreconditionOptions(**options))
  init_kwargs = dict(sample_apply_kwargs or {})
  plans: Dict[Tuple[Any, ...], planning.Plan] = {}  # A cache of a pure function of shapes.

  def plan_for(params: Any) -> planning.Plan:
    signature = _shape_signature(params)
    if signature not in plans:
      plans[signature] = planning.make_plan(
          lambda p, x: apply_fn(p, x, **init_kwargs), params, options.sample_inputs, options)
    return plans[signature]

  def config_for(plan: planning.Plan) -> curvature.CurvatureConfig:
    return planning.curvature_config(plan.layers, options)._replace(mesh=mesh)

  def init_fn(params):
    plan = plan_for(params)
    if options.print_report:
      print(report.format_curvature_report(report.report_rows(plan, params)))
    config = config_for(plan)
    return jax.jit(lambda: curvature.init_curvature_state(config))()  # One compile, not one per op.

  def update_fn(updates, state, params=None, *, inputs, targets, mask=None, rng=None,
                apply_kwargs=None, **unused):
    del unused  # Extra arguments of other transformations in a chain.
    if params is None:
      raise ValueError('kfac.precondition needs params in update(grads, state, params, ...)')
    plan = plan_for(params)
    config = config_for(plan)
    step_kwargs = dict(apply_kwargs or {})

    def statistics_fn():
      return factors.compute_statistics(
          lambda p, x: apply_fn(p, x, **step_kwargs), params, inputs, targets,
          report=plan.report, flavours={path: layer.flavour for path, layer in plan.layers.items()},
          loss=options.loss, fisher_type=options.fisher_type, rng=rng, mask=mask,
          num_samples=options.num_samples)

    state = curvature.update_curvature(state, statistics_fn, config)
    infos = {path: layer.info for path, layer in plan.layers.items()}
    preconditioned = curvature.precondition_layers(
        state, param_paths.layer_gradients(infos, updates), config)
    return param_paths.replace_leaves(updates, param_paths.parameter_updates(infos, preconditioned)
                                      ), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kfac_optimizer(apply_fn: Callable[..., jax.Array], *,
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
    **precondition_options: the keyword arguments of `precondition`.

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update` takes the extra arguments of
    `precondition` (`inputs`, `targets`, `mask`, `rng`, `apply_kwargs`).
  """
  pieces = [precondition(apply_fn, **precondition_options),
            optax.add_decayed_weights(weight_decay),
            optax.trace(decay=momentum, nesterov=nesterov)]
  if clip_update_norm is not None:
    pieces.append(optax.clip_by_global_norm(clip_update_norm))
  pieces.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*pieces)
