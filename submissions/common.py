"""What every submission shares: schedules, the jitted train step, the AlgoPerf entry points.

Submissions differ only in their optimiser (STYLE.md): a submission module builds an
`optax.GradientTransformationExtraArgs` from its hyperparameters and delegates the rest here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

import workloads
from contract.types import ForwardPassMode
from contract.workload import Workload

# AlgoPerf's target-setting runs plan their schedule over 0.75 x step_hint (DESIGN section 3:
# 0.75 x 80,000 = 60,000 "expected steps" on ogbg); the paper's K-FAC runs scale it by a further
# 0.75 (45,000), and their warmup by the same factor.
REFERENCE_HORIZON_FACTOR = 0.75
KFAC_HORIZON_FACTOR = 0.75 * 0.75

ExtraArgsFn = Callable[[Workload, Dict[str, Any], Any, jax.Array], Dict[str, Any]]


def warmup_linear_decay_schedule(peak_learning_rate: float, warmup_steps: int, decay_steps: int,
                                 end_factor: float) -> optax.Schedule:
  """Linear warmup from 0 to the peak over `warmup_steps`, then linear decay to
  `peak * end_factor` over `decay_steps` (AlgoPerf's target-setting Nesterov schedule)."""
  warmup = optax.linear_schedule(0.0, peak_learning_rate, max(warmup_steps, 1))
  decay = optax.polynomial_schedule(init_value=peak_learning_rate,
                                    end_value=peak_learning_rate * end_factor, power=1,
                                    transition_steps=max(decay_steps, 1))
  return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def reference_schedule(step_hint: int, hyperparameters: Any,
                       horizon_factor: float = REFERENCE_HORIZON_FACTOR) -> optax.Schedule:
  """The schedule of `hyperparameters` (learning_rate, warmup_factor, decay_steps_factor,
  end_factor) over a horizon of `horizon_factor * step_hint` steps.

  `warmup_factor` is the warmup's fraction of the horizon: AlgoPerf's 3,000 warmup steps over the
  60,000-step ogbg horizon are `warmup_factor = 0.05`; the decay runs over
  `decay_steps_factor * (horizon - warmup)` steps.
  """
  horizon = int(horizon_factor * step_hint)
  warmup_steps = int(hyperparameters.warmup_factor * horizon)
  decay_steps = int(hyperparameters.decay_steps_factor * (horizon - warmup_steps))
  return warmup_linear_decay_schedule(hyperparameters.learning_rate, warmup_steps, decay_steps,
                                      hyperparameters.end_factor)


def get_batch_size(workload_name: str) -> int:
  """The batch size of the workload variant's config (`ogbg_molpcba`, `ogbg_molpcba_small`)."""
  return workloads.default_batch_size(workload_name)


def data_selection(workload, input_queue, optimizer_state, current_param_container, model_state,
                   hyperparameters, global_step, rng):
  """AlgoPerf's default: the next batch of the input queue."""
  del workload, optimizer_state, current_param_container, model_state, hyperparameters
  del global_step, rng
  return next(input_queue)


class TrainState(NamedTuple):
  """A submission's optimizer_state: the optax state and the jitted step that owns it."""
  opt_state: Any
  train_step: Callable


# `optimizer_fn(model_state, rng)` builds the submission's optimiser for one step. Optax
# transformations are pure, so building one inside the traced step is free; it lets K-FAC's
# statistics pass close over the step's model state (BatchNorm) and dropout rng.
OptimizerFn = Callable[[Any, jax.Array], optax.GradientTransformation]


def mean_loss(workload: Workload, params, batch: Dict[str, Any], model_state, rng: jax.Array,
              label_smoothing: float):
  """The training objective: the workload's loss summed over valid entries / their number."""
  logits, new_model_state = workload.model_fn(params, batch, model_state, ForwardPassMode.TRAIN,
                                              rng, update_batch_norm=True)
  losses = workload.loss_fn(batch['targets'], logits, batch.get('weights'), label_smoothing)
  loss = losses['summed'] / jnp.maximum(losses['n_valid_examples'], 1)
  return loss, new_model_state


def make_train_step(workload: Workload, optimizer_fn: OptimizerFn, label_smoothing: float,
                    extra_args_fn: Optional[ExtraArgsFn] = None) -> Callable:
  """A jitted `(params, model_state, opt_state, batch, rng) -> (params, model_state, opt_state,
  loss)`. `extra_args_fn(workload, batch, model_state, rng)` supplies the optimiser's extra update
  arguments (K-FAC's statistics pass needs the batch and an rng)."""

  def train_step(params, model_state, opt_state, batch, rng):
    grad_fn = jax.value_and_grad(mean_loss, argnums=1, has_aux=True)
    (loss, new_model_state), grads = grad_fn(workload, params, batch, model_state, rng,
                                             label_smoothing)
    optimizer = optax.with_extra_args_support(optimizer_fn(model_state, rng))
    extra = extra_args_fn(workload, batch, model_state, rng) if extra_args_fn else {}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), new_model_state, opt_state, loss

  return jax.jit(train_step)


def init_train_state(workload: Workload, model_params, model_state, optimizer_fn: OptimizerFn,
                     hyperparameters: Any, rng: jax.Array,
                     extra_args_fn: Optional[ExtraArgsFn] = None) -> TrainState:
  """Initialises the optimiser; compiles nothing yet (compilation happens on the first step,
  inside submission time, as in AlgoPerf)."""
  label_smoothing = float(getattr(hyperparameters, 'label_smoothing', 0.0))
  optimizer = optax.with_extra_args_support(optimizer_fn(model_state, rng))
  return TrainState(optimizer.init(model_params),
                    make_train_step(workload, optimizer_fn, label_smoothing, extra_args_fn))


def update_params(workload, current_param_container, current_params_types, model_state,
                  hyperparameters, batch, loss_type, optimizer_state: TrainState, eval_results,
                  global_step, rng, train_state=None):
  """One optimiser step with the submission's jitted train step."""
  del current_params_types, hyperparameters, loss_type, eval_results, global_step, train_state
  params, new_model_state, opt_state, _ = optimizer_state.train_step(
      current_param_container, model_state, optimizer_state.opt_state, batch, rng)
  return optimizer_state._replace(opt_state=opt_state), params, new_model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                     hyperparameters, loss_type, optimizer_state, eval_results, global_step, rng):
  """Evaluates the current parameters as they are."""
  del workload, current_params_types, hyperparameters, loss_type, eval_results, global_step, rng
  return optimizer_state, current_param_container, model_state
