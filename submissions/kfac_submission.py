"""K-FAC (expand or reduce) behind the AlgoPerf submission API, for any workload.

The optimiser is `kfac_optimizer`, `kfac.kfac_optimizer`'s chain: K-FAC preconditioning of every
Dense/DenseGeneral/Conv layer (norm parameters and embeddings pass through), weight decay added
to the preconditioned gradient, Nesterov momentum `1 - one_minus_beta1`, and the Nesterov
reference's warmup + linear-decay schedule (`common.warmup_linear_decay`). Its numbers (the
schedule's, momentum, weight decay, damping, the clipping norm) are held in the optimiser state
(`common.traced_hyperparameters`), so a study's trials share one compiled train step; the damping
reaches `kfac.precondition`'s update as its `damping` argument. The paper runs K-FAC on the
reference's schedule with warmup and horizon scaled by 0.75 (Eschenhagen et al. 2023, section 4):
the search spaces write that scaling into `warmup_factor` and `decay_steps_factor`.

Hyperparameters (JSON search spaces): the Nesterov reference's (`learning_rate`,
`one_minus_beta1`, `weight_decay`, `warmup_factor`, `decay_steps_factor`, `end_factor`,
`label_smoothing`, `dropout_rate`) plus `damping` and, optionally, `cov_update_every` (T_cov),
`inverse_update_every` (T_inv), `ema_decay`, `clip_update_norm`, `num_samples`,
`inverse_method`, `inverse_rank`, `lowrank_damping`, `brand_max_rows`,
`inverse_correction_fraction`, `warm_start_steps`
(statistics and inverses on every step before it): `clip_update_norm` and `OPTIONAL_SETTINGS`.
Absent ones take `kfac.defaults`.

The optimiser is built from the first batch `update_params` sees (its input shapes; no second
input pipeline), once: its layer plan is traced then and reused. The curvature statistics come
from the gradient's own forward pass (`kfac.gradient_and_statistics`, `fused_gradient_fn`): the
workload's `model_fn(params, batch, model_state, ForwardPassMode.TRAIN, rng,
update_batch_norm=True, dropout_rate=...)` is run once, its pullback taken with the loss
cotangent (the gradient) and, on statistics steps, with labels sampled from the model (MC
Fisher). Its loss is scaled to the
training objective: the workload's loss is `summed / n_valid_examples`, K-FAC's the mean over
examples of the per-example sum, so the mask handed to K-FAC is the label mask times
`examples / sum(mask)` (1 for per-example masks).

`diagnostics(optimizer_state)` (the runner's optional hook) gives the curvature report of the
built optimiser and every layer's rejected (non-finite) curvature updates.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

import kfac
from kfac import defaults
from submissions import common, nesterov
from submissions.common import spec

KFAC_LOSSES = {
    spec.LossType.SOFTMAX_CROSS_ENTROPY: 'softmax_cross_entropy',
    spec.LossType.SIGMOID_CROSS_ENTROPY: 'sigmoid_cross_entropy',
    spec.LossType.MEAN_SQUARED_ERROR: 'mse',
}
# The stream of the step's rng that samples the MC-Fisher labels (the step's rng itself is the
# dropout rng of both the gradient and the curvature pass).
LABEL_SAMPLING_STREAM = 1
# Hyperparameters handed to `kfac.precondition` when the search space has them (with their
# types); absent ones take `kfac.defaults`.
OPTIONAL_SETTINGS = {'num_samples': int, 'inverse_method': str, 'inverse_rank': int,
                     'ema_decay': float, 'cov_update_every': int, 'inverse_update_every': int,
                     'warm_start_steps': int, 'lowrank_damping': str, 'brand_max_rows': int,
                     'inverse_correction_fraction': float}


def kfac_loss_name(loss_type: spec.LossType) -> str:
  if loss_type not in KFAC_LOSSES:
    raise ValueError(f'K-FAC supports losses {sorted(l.name for l in KFAC_LOSSES)}, '
                     f'not {loss_type.name}')
  return KFAC_LOSSES[loss_type]


def curvature_extra_args(batch: Dict[str, Any], model_state, rng: jax.Array,
                         dropout_rate: Optional[jax.Array]) -> Dict[str, Any]:
  """The extra update arguments of `kfac.precondition` for one training batch."""
  weights = batch.get('weights')
  return {'inputs': batch['inputs'], 'targets': batch['targets'],
          'mask': None if weights is None else kfac.losses.objective_mask(jnp.asarray(weights)),
          'rng': jax.random.fold_in(rng, LABEL_SAMPLING_STREAM),
          'apply_kwargs': {'model_state': model_state, 'rng': rng, 'dropout_rate': dropout_rate}}


def _setting(hyperparameters, name: str, default: Any) -> Any:
  return getattr(hyperparameters, name, default)


def training_logits_and_state(workload):
  """`apply_fn(params, inputs, *, model_state, rng, dropout_rate) -> (logits, new_model_state)`:
  the gradient pass's training forward pass (`common.mean_loss`), batch norm on the batch's
  statistics, so the curvature is that of the function whose gradient is taken."""

  def apply_fn(params, inputs, *, model_state, rng, dropout_rate):
    return workload.model_fn(params, {'inputs': inputs}, model_state, spec.ForwardPassMode.TRAIN,
                             rng, update_batch_norm=True, dropout_rate=dropout_rate)

  return apply_fn


def training_logits(workload):
  """`apply_fn(params, inputs, *, model_state, rng, dropout_rate) -> logits` of
  `kfac.precondition`: the logits of `training_logits_and_state` (the new model state is the
  gradient pass's to return)."""
  apply_with_state = training_logits_and_state(workload)

  def apply_fn(params, inputs, **kwargs):
    return apply_with_state(params, inputs, **kwargs)[0]

  return apply_fn


def fused_gradient_fn(workload, preconditioner: Dict[str, Any]) -> common.GradientFn:
  """The train step's `gradient_fn` (`common.step_functions`): the loss gradient, the new model
  state and, on statistics steps, the curvature statistics from one forward pass
  (`kfac.gradient_and_statistics` with the optimiser's `preconditioner` options), handed to the
  optimiser's update as `statistics`."""
  gradient_and_statistics = kfac.gradient_and_statistics(training_logits_and_state(workload),
                                                         **preconditioner)

  def gradient_fn(params, model_state, opt_state, batch, rng, dropout_rate, label_smoothing):
    extra = curvature_extra_args(batch, model_state, rng, dropout_rate)
    (loss, new_model_state), grads, statistics = gradient_and_statistics(
        common.objective_of_logits(workload, batch, label_smoothing), params, opt_state,
        **{name: extra[name] for name in ('inputs', 'targets', 'mask', 'rng', 'apply_kwargs')})
    return (loss, new_model_state), grads, {'statistics': statistics}

  return gradient_fn


def precondition_arguments(workload, hyperparameters, flavour: str, sample_inputs: Any,
                           sample_model_state: Any) -> Dict[str, Any]:
  """The keyword arguments of `kfac.precondition` (beside `apply_fn`; also those of
  `kfac.gradient_and_statistics` and `kfac.curvature_report`), its layers traced on
  `sample_inputs` (a batch's inputs or their shapes) and `sample_model_state`. `damping` is the
  trial's (checked, reported); the train step hands it to every update (`kfac_optimizer`)."""
  dropout_rate = _setting(hyperparameters, 'dropout_rate', None)
  options = {name: cast(getattr(hyperparameters, name))
             for name, cast in OPTIONAL_SETTINGS.items() if hasattr(hyperparameters, name)}
  return dict(
      sample_apply_kwargs={'model_state': sample_model_state, 'rng': jax.random.PRNGKey(0),
                           'dropout_rate': dropout_rate},
      loss=kfac_loss_name(workload.loss_type),
      sample_inputs=sample_inputs,
      flavour=flavour,
      damping=hyperparameters.damping,
      **options)


def kfac_hyperparameters(step_hint: int, hyperparameters) -> Dict[str, Any]:
  """The numbers of `kfac_optimizer` of a trial's hyperparameters: the Nesterov reference's,
  `damping` and `clip_update_norm` (None: no clipping)."""
  clip = _setting(hyperparameters, 'clip_update_norm', None)
  return dict(nesterov.nesterov_hyperparameters(step_hint, hyperparameters),
              damping=float(hyperparameters.damping),
              clip_update_norm=None if clip is None else float(clip))


def kfac_optimizer(preconditioner: optax.GradientTransformationExtraArgs, learning_rate,
                   end_learning_rate, warmup_steps, decay_steps, momentum, weight_decay, damping,
                   clip_update_norm=None) -> optax.GradientTransformationExtraArgs:
  """`kfac.kfac_optimizer`'s chain (the same pieces, the same state) around a built
  `preconditioner` (`kfac.precondition`), of numbers that may be traced: `preconditioner`
  (every update with `damping`) -> `add_decayed_weights(weight_decay)` -> Nesterov
  `trace(momentum)` -> `clip_by_global_norm(clip_update_norm)` (if not None) ->
  `scale_by_learning_rate` of the warmup + linear-decay schedule."""
  return kfac.transform.chain_after(
      optax.GradientTransformationExtraArgs(
          preconditioner.init, functools.partial(preconditioner.update, damping=damping)),
      learning_rate=common.warmup_linear_decay(learning_rate, end_learning_rate, warmup_steps,
                                               decay_steps),
      momentum=momentum, nesterov=True, weight_decay=weight_decay,
      clip_update_norm=clip_update_norm)


class KfacStepFunctions(NamedTuple):
  """`common.StepFunctions` and `report()`: the built optimiser's curvature report, computed
  when first asked (off the clock, by `diagnostics`). Rebuilt with the functions, never saved."""
  init: Callable[[Any], Any]
  train_step: Callable
  report: Callable[[], List[kfac.ReportRow]]


def input_shapes(batch: Dict[str, Any]) -> Any:
  """The shapes and dtypes of a batch's inputs (all K-FAC's plan needs of them)."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
                                batch['inputs'])


LayerOverrides = Callable[[Callable[[Any, Any], jax.Array], Any, Any], Dict[str, Any]]


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng, *,
                         flavour: str, inverse_method: Optional[str] = None,
                         layer_overrides: Optional[LayerOverrides] = None,
                         fused_statistics: Optional[bool] = None) -> common.TrainState:
  """A TrainState whose K-FAC optimiser is built from the first training batch (lazily).

  `inverse_method` is the submission's block where the hyperparameters name none;
  `layer_overrides(apply_fn, param_shapes, sample_inputs)` (once, at the build) gives per-layer
  options (e.g. MAC's `inverse_method_overrides` and `flavour_overrides` of the input layers)
  for `apply_fn(params, inputs)`, the traced training forward pass. `fused_statistics`: True,
  the statistics come from the gradient's forward pass (`fused_gradient_fn`); False,
  `kfac.precondition`'s own statistics pass runs after the gradient pass; None (default): fused
  when statistics are due on every step (`cov_update_every` 1), separate otherwise.

  Why the default (docs/bench_full_step.md, full configs at CPU batch sizes, T_cov = 2): the
  fused pass saves a forward pass on statistics steps (ogbg 737 vs 816 ms, WRN-16-4 6.57 vs
  6.68 s, ViT-S/16 4.07 vs 4.12 s), but its plain steps run the probed forward and keep the
  statistics' operands alive for the `lax.cond`: 7-10 % slower plain steps (ViT 3.12 vs
  2.85 s) and a larger XLA peak (ViT 3.3 vs 2.4 GiB). With statistics every few steps the plain
  steps dominate.
  """
  del rng
  param_shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                        model_params)

  if fused_statistics is None:
    fused_statistics = int(_setting(hyperparameters, 'cov_update_every',
                                    defaults.COV_UPDATE_EVERY)) == 1

  def build(batch: Dict[str, Any]) -> KfacStepFunctions:
    arguments = precondition_arguments(workload, hyperparameters, flavour, input_shapes(batch),
                                       model_state)
    if inverse_method is not None:
      arguments.setdefault('inverse_method', inverse_method)
    if layer_overrides is not None:
      sample_kwargs = arguments['sample_apply_kwargs']
      arguments.update(layer_overrides(
          lambda p, x: training_logits(workload)(p, x, **sample_kwargs), param_shapes,
          arguments['sample_inputs']))
    # The train step's mesh: the inverse step spreads the layers' decompositions over it.
    mesh = common.jax_sharding_utils.get_replicate_sharding().mesh
    preconditioner = kfac.precondition(training_logits(workload), mesh=mesh, **arguments)
    optimizer = common.traced_hyperparameters(
        functools.partial(kfac_optimizer, preconditioner),
        **kfac_hyperparameters(workload.step_hint, hyperparameters))
    functions = common.step_functions(
        workload, optimizer, extra_args_fn=curvature_extra_args,
        gradient_fn=fused_gradient_fn(workload, arguments) if fused_statistics else None)
    report = functools.lru_cache(maxsize=None)(
        lambda: kfac.curvature_report(training_logits(workload), param_shapes, **arguments))
    return KfacStepFunctions(*functions, report=report)

  return common.lazy_train_state(build)


def diagnostics(optimizer_state: common.TrainState) -> Dict[str, Any]:
  """The curvature report (text and rows) once the optimiser is built (after the first step),
  and every layer's rejected (non-finite) curvature updates, in total and since its last
  accepted statistics update (`kfac.curvature.rejections`); `{}` before the first step."""
  if optimizer_state.functions is None or optimizer_state.opt_state is None:
    return {}
  rows = optimizer_state.functions.report()
  counts = kfac.curvature.rejections(optimizer_state.opt_state)
  return {'curvature_report': kfac.format_curvature_report(rows),
          'curvature_report_rows': [dict(zip(kfac.report.PRINTED_COLUMNS, row)) for row in rows],
          'rejected_updates': {layer: int(total) for layer, (total, _) in counts.items()},
          'consecutive_rejected_updates': {layer: int(run) for layer, (_, run) in counts.items()}}


def step_phase(global_step: int, hyperparameters) -> str:
  """Which curvature work step `global_step` does: 'plain', 'statistics', 'inverse' or
  'statistics+inverse' (the runner times each phase separately)."""
  t_cov = int(_setting(hyperparameters, 'cov_update_every', defaults.COV_UPDATE_EVERY))
  t_inv = int(_setting(hyperparameters, 'inverse_update_every', defaults.INVERSE_UPDATE_EVERY))
  warm = int(_setting(hyperparameters, 'warm_start_steps', defaults.WARM_START_STEPS))
  statistics = kfac.curvature.is_due(global_step, t_cov, warm)
  inverse = kfac.curvature.is_due(global_step, t_inv, warm)
  if inverse:
    return 'statistics+inverse' if statistics else 'inverse'
  return 'statistics' if statistics else 'plain'
