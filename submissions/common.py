"""What every submission here shares: batch sizes, the schedule, the jitted train step and the
AlgoPerf entry points.

Submissions differ only in their optimiser: a submission module builds an
`optax.GradientTransformationExtraArgs` from its hyperparameters and delegates the rest here.
They use only upstream AlgoPerf's Workload and submission API (`model_fn` with `mode`,
`update_batch_norm`, `dropout_rate`; `loss_fn`, `loss_type`, `step_hint`, ...) and upstream's
names (`algoperf.spec`), so each runs unchanged on upstream's runner
(docs/submitting_to_algoperf.md).

Hyperparameters mean what they mean in upstream's baselines
(`algorithms/archived_paper_baselines/nesterov`, `nadamw`): `warmup_factor` is the warmup's
fraction of `step_hint`, and the decay runs over `decay_steps_factor x (step_hint - warmup)` steps.
A schedule planned over a shorter horizon (AlgoPerf's target setting: 0.75 x step_hint; the K-FAC
paper: a further 0.75) is written with smaller factors (tuning_search_spaces/README.md).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

try:  # On upstream's runner: its enums and shardings, which its workloads use.
  from algoperf import jax_sharding_utils, spec
except ImportError:  # Here, without the algoperf package: the same names from the contract.
  from contract import sharding as jax_sharding_utils
  from contract import spec

# Global batch sizes: upstream's base workload names for the full configs (the values of
# upstream's baselines) and this project's variants `<base>_<config>`. A variant not listed
# (`ogbg_paper`) gets its base's size: the runner asks for the variant, then for the base.
BATCH_SIZES: Dict[str, int] = {
    'ogbg': 512, 'ogbg_small': 128, 'ogbg_tiny': 32,
    'imagenet_vit': 1024, 'imagenet_vit_small': 64, 'imagenet_vit_tiny': 32,
    'cifar': 512, 'cifar_small': 64, 'cifar_tiny': 16,
}


def get_batch_size(workload_name: str) -> int:
  """The global batch size of a workload name; ValueError for names not in `BATCH_SIZES`
  (as upstream's submissions raise)."""
  if workload_name not in BATCH_SIZES:
    raise ValueError(f'Unsupported workload name: {workload_name}.')
  return BATCH_SIZES[workload_name]


def _hyperparameter(hyperparameters: Any, name: str, default: Any) -> Any:
  return getattr(hyperparameters, name, default)


def warmup_steps(step_hint: int, hyperparameters: Any) -> int:
  """`int(warmup_factor x step_hint)`, upstream's warmup length."""
  return int(hyperparameters.warmup_factor * step_hint)


def decay_steps(step_hint: int, hyperparameters: Any) -> int:
  """`int(decay_steps_factor x (step_hint - warmup))` (`decay_steps_factor` 1 when absent)."""
  factor = _hyperparameter(hyperparameters, 'decay_steps_factor', 1.0)
  return int(factor * (step_hint - warmup_steps(step_hint, hyperparameters)))


def schedule_hyperparameters(step_hint: int, hyperparameters: Any) -> Dict[str, Any]:
  """The numbers of a trial's warmup + decay schedule: `learning_rate`, `warmup_steps` and
  `decay_steps`, the step counts computed here on the host (upstream's `int` of a float64
  product; in float32 `int(0.29 x 100)` is 29, not 28). Numbers are Python floats and ints, so
  that every trial's optimiser state has the same dtypes (a JSON `0` is not an int32 here)."""
  return {'learning_rate': float(hyperparameters.learning_rate),
          'warmup_steps': warmup_steps(step_hint, hyperparameters),
          'decay_steps': decay_steps(step_hint, hyperparameters)}


def _linear_warmup(count: jax.Array, learning_rate: Any, warmup: Any) -> jax.Array:
  """`optax.linear_schedule(0, learning_rate, max(warmup, 1))` of numbers that may be traced."""
  steps = jnp.maximum(warmup, 1)
  return (0.0 - learning_rate) * (1 - jnp.clip(count, 0, steps) / steps) + learning_rate


def warmup_linear_decay(learning_rate: Any, end_learning_rate: Any, warmup: Any, decay: Any
                        ) -> optax.Schedule:
  """Upstream's Nesterov schedule: linear warmup from 0 to `learning_rate` over `warmup` steps,
  then linear decay to `end_learning_rate` over `decay` steps, constant after. The numbers may be
  traced (a train step's arguments); the formulas are optax's `linear_schedule`,
  `polynomial_schedule` and `join_schedules`, so the values are theirs."""
  def schedule(count):
    steps = jnp.maximum(decay, 1)
    fraction = 1 - jnp.clip(count - warmup, 0, steps) / steps
    decayed = (learning_rate - end_learning_rate) * fraction + end_learning_rate
    return jnp.where(count < warmup, _linear_warmup(count, learning_rate, warmup), decayed)
  return schedule


def warmup_cosine_decay(learning_rate: Any, warmup: Any, decay: Any) -> optax.Schedule:
  """Upstream's NAdamW schedule: linear warmup from 0 to `learning_rate` over `warmup` steps,
  then cosine decay to 0 over `decay` steps, 0 after. The numbers may be traced; the formulas
  are optax's `linear_schedule`, `cosine_decay_schedule` and `join_schedules`."""
  def schedule(count):
    steps = jnp.maximum(decay, 1)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count - warmup, steps) / steps))
    return jnp.where(count < warmup, _linear_warmup(count, learning_rate, warmup),
                     learning_rate * cosine)
  return schedule


def warmup_linear_decay_schedule(step_hint: int, hyperparameters: Any) -> optax.Schedule:
  """`warmup_linear_decay` of a trial's hyperparameters: to `learning_rate x end_factor`."""
  values = schedule_hyperparameters(step_hint, hyperparameters)
  return warmup_linear_decay(values['learning_rate'],
                             hyperparameters.learning_rate * hyperparameters.end_factor,
                             values['warmup_steps'], values['decay_steps'])


def warmup_cosine_decay_schedule(step_hint: int, hyperparameters: Any) -> optax.Schedule:
  """`warmup_cosine_decay` of a trial's hyperparameters."""
  values = schedule_hyperparameters(step_hint, hyperparameters)
  return warmup_cosine_decay(values['learning_rate'], values['warmup_steps'],
                             values['decay_steps'])


def traced_hyperparameters(optimizer: Callable[..., optax.GradientTransformation],
                           **values: Any) -> optax.GradientTransformationExtraArgs:
  """`optimizer(**values)` with its numbers held in its state (`optax.inject_hyperparams`:
  float32 scalars, int32 for ints; `None` and non-numbers stay as given), so the jitted train
  step reads them as arguments: the trials of a study, which differ in these values only, lower
  to one HLO and share one compiled step (a hit of the persistent compilation cache)."""
  return optax.inject_hyperparams(optimizer, hyperparam_dtype=jnp.float32)(**values)


def data_selection(workload, input_queue, optimizer_state, current_param_container, model_state,
                   hyperparameters, global_step, rng):
  """AlgoPerf's default: the next batch of the input queue."""
  del workload, optimizer_state, current_param_container, model_state, hyperparameters
  del global_step, rng
  return next(input_queue)


# `extra_args_fn(batch, model_state, rng, dropout_rate)`: the optimiser's extra update arguments
# (K-FAC's statistics pass needs the batch, the model state and rngs), traced inside the step.
# `dropout_rate` is None where the hyperparameters have none (the workload's default applies).
ExtraArgsFn = Callable[[Dict[str, Any], Any, jax.Array, Optional[jax.Array]], Dict[str, Any]]


class StepFunctions(NamedTuple):
  """The functions that own a submission's optimiser state (rebuilt, never checkpointed).

  `init(params) -> opt_state`; `train_step(params, model_state, opt_state, batch, rng,
  dropout_rate, label_smoothing) -> (params, model_state, opt_state, loss)`, jitted.
  """
  init: Callable[[Any], Any]
  train_step: Callable


class TrainState(NamedTuple):
  """A submission's `optimizer_state`: `opt_state` is the optax state, a pytree of arrays only
  (what a checkpoint saves); `functions` the jitted functions that own it and `build(batch)`
  what makes them (from the first batch's shapes for K-FAC). `opt_state` and `functions` are
  None until the first `update_params` when the optimiser needs a batch to be built."""
  opt_state: Any
  functions: Optional[StepFunctions]
  build: Callable[[Optional[Dict[str, Any]]], StepFunctions]


def objective_of_logits(workload, batch: Dict[str, Any], label_smoothing: jax.Array
                        ) -> Callable[[jax.Array], jax.Array]:
  """`logits -> loss`, the training objective: the workload's loss summed over valid entries /
  their number."""
  def objective(logits):
    losses = workload.loss_fn(batch['targets'], logits, batch.get('weights'), label_smoothing)
    return losses['summed'] / jnp.maximum(losses['n_valid_examples'], 1)
  return objective


def mean_loss(workload, params, batch: Dict[str, Any], model_state, rng: jax.Array,
              dropout_rate: Optional[jax.Array], label_smoothing: jax.Array):
  """The training objective of `params` on `batch` and the new model state."""
  logits, new_model_state = workload.model_fn(params, batch, model_state,
                                              spec.ForwardPassMode.TRAIN, rng,
                                              update_batch_norm=True, dropout_rate=dropout_rate)
  return objective_of_logits(workload, batch, label_smoothing)(logits), new_model_state


# `gradient_fn(params, model_state, opt_state, batch, rng, dropout_rate, label_smoothing)
#  -> ((loss, new_model_state), grads, extra update arguments)`: an optimiser's own gradient pass
# (K-FAC's: the loss gradient and the curvature statistics from one forward pass), traced inside
# the step in place of `jax.value_and_grad(mean_loss)` and `extra_args_fn`.
GradientFn = Callable[..., Any]


def step_functions(workload, optimizer: optax.GradientTransformation,
                   extra_args_fn: Optional[ExtraArgsFn] = None,
                   gradient_fn: Optional[GradientFn] = None) -> StepFunctions:
  """`optimizer`'s init and a jitted train step on the workload's mean training loss.

  Data-parallel as upstream's baselines: jitted over the mesh of all devices
  (`jax_sharding_utils`), the batch split along its leading dimension, everything else (params,
  model and optimiser state, rng, the loss) replicated; XLA partitions the step and sums the
  gradient over devices. One device: a plain `jit`. The dropout rate and the label smoothing are
  traced arguments, as upstream's baselines pass them, so a change of either does not recompile;
  the optimiser's numbers are arguments too where its state holds them
  (`traced_hyperparameters`).
  The gradient is `jax.value_and_grad(mean_loss)` and the update's extra arguments
  `extra_args_fn`'s, or both `gradient_fn`'s when given.
  """
  optimizer = optax.with_extra_args_support(optimizer)

  def train_step(params, model_state, opt_state, batch, rng, dropout_rate, label_smoothing):
    if gradient_fn is not None:
      (loss, new_model_state), grads, extra = gradient_fn(
          params, model_state, opt_state, batch, rng, dropout_rate, label_smoothing)
    else:
      grad_fn = jax.value_and_grad(mean_loss, argnums=1, has_aux=True)
      (loss, new_model_state), grads = grad_fn(workload, params, batch, model_state, rng,
                                               dropout_rate, label_smoothing)
      extra = extra_args_fn(batch, model_state, rng, dropout_rate) if extra_args_fn else {}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), new_model_state, opt_state, loss

  replicated = jax_sharding_utils.get_replicate_sharding()
  sharded = jax_sharding_utils.get_batch_dim_sharding()
  return StepFunctions(
      init=jax.jit(optimizer.init, out_shardings=replicated),
      train_step=jax.jit(train_step,
                         in_shardings=(replicated, replicated, replicated, sharded, replicated,
                                       replicated, replicated),
                         out_shardings=replicated))


def eager_train_state(model_params, build: Callable[[Optional[Dict[str, Any]]], StepFunctions]
                      ) -> TrainState:
  """A TrainState whose optimiser needs no batch: built and initialised now (outside the
  clock, in `init_optimizer_state`)."""
  functions = build(None)
  return TrainState(functions.init(model_params), functions, build)


def lazy_train_state(build: Callable[[Optional[Dict[str, Any]]], StepFunctions]) -> TrainState:
  """A TrainState built and initialised from the first batch `update_params` sees."""
  return TrainState(None, None, build)


def update_params(workload, current_param_container, current_params_types, model_state,
                  hyperparameters, batch, loss_type, optimizer_state: TrainState, eval_results,
                  global_step, rng, train_state=None):
  """One optimiser step with the submission's jitted train step (built first if needed)."""
  del workload, current_params_types, loss_type, eval_results, global_step, train_state
  state = optimizer_state
  if state.functions is None:
    state = state._replace(functions=state.build(batch))
  if state.opt_state is None:
    state = state._replace(opt_state=state.functions.init(current_param_container))
  dropout_rate = _hyperparameter(hyperparameters, 'dropout_rate', None)  # None: the workload's.
  # Replicated as the step returns them (a no-op for a runner that replicates, as ours), so that
  # the first step and the later ones run one compiled program.
  replicated = jax_sharding_utils.get_replicate_sharding()
  params, new_model_state, opt_state, _ = state.functions.train_step(
      *jax.device_put((current_param_container, model_state), replicated), state.opt_state,
      batch, rng,
      None if dropout_rate is None else jnp.float32(dropout_rate),
      jnp.float32(_hyperparameter(hyperparameters, 'label_smoothing', 0.0)))
  return state._replace(opt_state=opt_state), params, new_model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                     hyperparameters, loss_type, optimizer_state, eval_results, global_step, rng):
  """Evaluates the current parameters as they are."""
  del workload, current_params_types, hyperparameters, loss_type, eval_results, global_step, rng
  return optimizer_state, current_param_container, model_state
