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

from kfac import curvature, factors, fused, param_paths
from kfac import plan as planning
from kfac import report


def _shape_signature(params: Any) -> Tuple[Any, ...]:
  """The static structure of a parameter tree: its treedef and every leaf's shape and dtype."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  return (treedef,) + tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


def _plan_cache(apply_fn: Callable[[Any, Any], jax.Array], options: planning.PreconditionOptions
                ) -> Callable[[Any], planning.Plan]:
  """`plan_for(params)`: the plan of `apply_fn(params, inputs) -> output` on
  `options.sample_inputs`, traced once per parameter shape signature (a pure function of
  shapes, cached)."""
  plans: Dict[Tuple[Any, ...], planning.Plan] = {}

  def plan_for(params: Any) -> planning.Plan:
    signature = _shape_signature(params)
    if signature not in plans:
      plans[signature] = planning.make_plan(apply_fn, params, options.sample_inputs, options)
    return plans[signature]

  return plan_for


def _layer_flavours(plan: planning.Plan) -> Dict[Any, str]:
  return {path: layer.flavour for path, layer in plan.layers.items()}


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
    mesh: the data-parallel mesh (axis `'batch'`) of the train step, if any: the statistics
      step sums the layers' Gram matrices with one all-reduce and the inverse step spreads the
      layers' decompositions over its devices (`kfac.curvature.CurvatureConfig`).
    **options: `kfac.plan.PreconditionOptions`; `loss` and `sample_inputs` are required.

  Returns:
    An `optax.GradientTransformationExtraArgs`. `init(params)` traces the plan and builds a
    `kfac.curvature.CurvatureState`; `update(grads, state, params, *, inputs, targets,
    mask=None, rng=None, apply_kwargs=None, statistics=None, damping=None)` updates the
    curvature when due (`rng` is required for `fisher_type='mc'`), then returns the
    preconditioned gradients and the new state. Both jit. `statistics`, when given
    (`gradient_and_statistics` of the same options: the gradient's own forward pass), are used
    on statistics steps instead of a statistics pass of its own (`inputs`, `targets`, ... are
    then not needed). `damping`, when given (a float or a traced scalar `> 0`), replaces the
    configured `damping` for this update (the inverses it computes and the products it
    applies), so that runs differing only in damping share one compiled step.
  """
  options = planning.validate_options(planning.PreconditionOptions(**options))
  init_kwargs = dict(sample_apply_kwargs or {})
  plan_for = _plan_cache(lambda p, x: apply_fn(p, x, **init_kwargs), options)

  def config_for(plan: planning.Plan) -> curvature.CurvatureConfig:
    return planning.curvature_config(plan.layers, options)._replace(mesh=mesh)

  def init_fn(params):
    plan = plan_for(params)
    if options.print_report:
      print(report.format_curvature_report(report.report_rows(plan, params)))
    config = config_for(plan)
    return jax.jit(lambda: curvature.init_curvature_state(config))()  # One compile, not one per op.

  def update_fn(updates, state, params=None, *, inputs=None, targets=None, mask=None, rng=None,
                apply_kwargs=None, statistics=None, damping=None, **unused):
    del unused  # Extra arguments of other transformations in a chain.
    if params is None:
      raise ValueError('kfac.precondition needs params in update(grads, state, params, ...)')
    plan = plan_for(params)
    config = config_for(plan)
    if damping is not None:
      config = config._replace(damping=damping)
    step_kwargs = dict(apply_kwargs or {})
    if statistics is not None and set(statistics) != set(plan.layers):
      raise ValueError(f'statistics given for layers {sorted(statistics)} but the plan covers '
                       f'{sorted(plan.layers)}: build gradient_and_statistics with the options '
                       'of this precondition')
    if statistics is None and inputs is None:
      raise ValueError('kfac.precondition needs inputs= and targets= in update(...) (its '
                       'statistics pass), or statistics= from gradient_and_statistics')

    def statistics_fn():
      if statistics is not None:
        return statistics
      return factors.compute_statistics(
          lambda p, x: apply_fn(p, x, **step_kwargs), params, inputs, targets,
          report=plan.report, flavours=_layer_flavours(plan), loss=options.loss,
          fisher_type=options.fisher_type, rng=rng, mask=mask, num_samples=options.num_samples)

    state = curvature.update_curvature(state, statistics_fn, config)
    infos = {path: layer.info for path, layer in plan.layers.items()}
    preconditioned = curvature.precondition_layers(
        state, param_paths.layer_gradients(infos, updates), config)
    return param_paths.replace_leaves(updates, param_paths.parameter_updates(infos, preconditioned)
                                      ), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


GradientAndStatisticsFn = Callable[..., Tuple[Tuple[jax.Array, Any], Any, Any]]


def gradient_and_statistics(apply_fn: Callable[..., Tuple[jax.Array, Any]], *,
                            sample_apply_kwargs: Optional[Mapping[str, Any]] = None,
                            **options: Any) -> GradientAndStatisticsFn:
  """The loss gradient and, on statistics steps, K-FAC's statistics from the same forward pass.

  For a train step that hands `statistics` to `precondition` (or `kfac_optimizer`) built with
  the same `options`, so a statistics step runs the model forward once (`kfac.fused`):

      fused = kfac.gradient_and_statistics(apply_fn, **options)
      optimizer = kfac.kfac_optimizer(lambda p, x, **kw: apply_fn(p, x, **kw)[0], **options, ...)
      (loss, aux), grads, statistics = fused(loss_fn, params, opt_state, inputs=x, targets=y,
                                             rng=rng, apply_kwargs=...)
      updates, opt_state = optimizer.update(grads, opt_state, params, statistics=statistics)

  Args:
    apply_fn: `apply_fn(params, inputs, **apply_kwargs) -> (output [N, ...], aux)`, an
      unmodified Flax apply (`aux`: e.g. the new batch-norm statistics).
    sample_apply_kwargs: `apply_kwargs` of the trace of the plan, as for `precondition`.
    **options: those of `precondition` (`loss`, `sample_inputs`, `flavour`, `fisher_type`,
      `num_samples`, `cov_update_every`, `warm_start_steps`, ... : the same plan).

  Returns:
    `fn(loss_fn, params, opt_state, *, inputs, targets, mask=None, rng=None, apply_kwargs=None)
    -> ((loss, aux), grads, statistics)` with `loss_fn(output) -> []`. The forward pass and the
    loss gradient run on every step; the sampled backward passes and the rows only on
    statistics steps (by `opt_state`'s curvature step counter, T_cov and the warm start; a
    `lax.cond` around them alone), zero statistics otherwise. Jittable.
  """
  options = planning.validate_options(planning.PreconditionOptions(**options))
  init_kwargs = dict(sample_apply_kwargs or {})
  plan_for = _plan_cache(lambda p, x: apply_fn(p, x, **init_kwargs)[0], options)

  def fn(loss_fn, params, opt_state, *, inputs, targets, mask=None, rng=None, apply_kwargs=None):
    plan = plan_for(params)
    step_kwargs = dict(apply_kwargs or {})
    model = lambda p, x: apply_fn(p, x, **step_kwargs)  # noqa: E731

    states = curvature.curvature_states(opt_state)
    if len(states) != 1:
      raise ValueError(f'opt_state holds {len(states)} kfac.precondition states; '
                       'gradient_and_statistics needs exactly one')
    due = (True if options.cov_update_every == 1 else
           curvature.is_due(states[0].step, options.cov_update_every, options.warm_start_steps))
    return fused.value_grad_and_statistics(
        loss_fn, model, params, inputs, targets, report=plan.report,
        flavours=_layer_flavours(plan), loss=options.loss, fisher_type=options.fisher_type,
        rng=rng, mask=mask, num_samples=options.num_samples, statistics_due=due)

  return fn


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
  return chain_after(precondition(apply_fn, **precondition_options), learning_rate=learning_rate,
                     momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                     clip_update_norm=clip_update_norm)


def chain_after(preconditioner: optax.GradientTransformationExtraArgs, *,
                learning_rate: optax.ScalarOrSchedule, momentum: Any = 0.9,
                nesterov: bool = True, weight_decay: Any = 0.0,
                clip_update_norm: Optional[Any] = None) -> optax.GradientTransformationExtraArgs:
  """`kfac_optimizer`'s chain around a built `preconditioner` (e.g. `precondition` with its
  `update` bound to a traced `damping`): the same pieces and state. The numbers may be traced
  (e.g. `optax.inject_hyperparams` values); `clip_update_norm=None` leaves clipping out."""
  pieces = [preconditioner, optax.add_decayed_weights(weight_decay),
            optax.trace(decay=momentum, nesterov=nesterov)]
  if clip_update_norm is not None:
    pieces.append(optax.clip_by_global_norm(clip_update_norm))
  pieces.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*pieces)
