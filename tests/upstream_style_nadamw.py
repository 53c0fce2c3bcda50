"""An NAdamW submission written the way upstream AlgoPerf's JAX baselines are.

Modelled on upstream's `algorithms/archived_paper_baselines/nadamw/jax/submission.py`
(mlcommons/algorithmic-efficiency, commit 2c90454), written here: the same imports
(`from algoperf import jax_sharding_utils, spec`), the same uses of the Workload
(`param_shapes` leaves' `.shape_tuple`, `model_fn` with `dropout_rate` inside `jit`, `loss_fn`,
`metrics_logger`), upstream's hyperparameter names (`one_minus_beta1`, `beta2`, `warmup_factor`:
warmup over `warmup_factor x step_hint`, cosine to 0 over the rest) and a batch-size table of
upstream's base workload names only. Its search space is `upstream_style_nadamw.json`.
"""

from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from algoperf import jax_sharding_utils, spec

# Upstream's base workload names; `cifar` as upstream's development CIFAR submission.
BATCH_SIZES = {'ogbg': 512, 'imagenet_vit': 1024, 'cifar': 128}


def get_batch_size(workload_name: str) -> int:
  if workload_name not in BATCH_SIZES:
    raise ValueError(f'Unsupported workload name: {workload_name}.')
  return BATCH_SIZES[workload_name]


class NadamState(NamedTuple):
  count: chex.Array  # [] int32
  first_moment: optax.Updates
  second_moment: optax.Updates


def scale_by_nadam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """NAdam without momentum decay (Dozat 2016 as in arXiv:1910.05446, Table 1): with
  m_t = b1 m + (1 - b1) g and v_t = b2 v + (1 - b2) g^2, the direction is
  ((b1 m_t + (1 - b1) g) / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)."""

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return NadamState(jnp.zeros([], jnp.int32), zeros, zeros)

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    first = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.first_moment)
    second = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.second_moment)
    first_correction, second_correction = 1 - b1**count, 1 - b2**count

    def direction(g, m, v):
      nesterov_first = (b1 * m + (1 - b1) * g) / first_correction
      return nesterov_first / (jnp.sqrt(v / second_correction) + eps)

    return (jax.tree.map(direction, updates, first, second),
            NadamState(count, first, second))

  return optax.GradientTransformation(init_fn, update_fn)


def warmup_cosine(step_hint: int, hyperparameters) -> optax.Schedule:
  warmup_steps = int(hyperparameters.warmup_factor * step_hint)
  warmup = optax.linear_schedule(0.0, hyperparameters.learning_rate, warmup_steps)
  cosine = optax.cosine_decay_schedule(hyperparameters.learning_rate,
                                       max(step_hint - warmup_steps, 1))
  return optax.join_schedules([warmup, cosine], [warmup_steps])


def init_optimizer_state(workload: spec.Workload, model_params: spec.ParameterContainer,
                         model_state: spec.ModelAuxiliaryState,
                         hyperparameters: spec.Hyperparameters,
                         rng: spec.RandomState) -> spec.OptimizerState:
  del model_params, model_state, rng
  schedule = warmup_cosine(workload.step_hint, hyperparameters)
  optimizer = optax.chain(
      scale_by_nadam(1.0 - hyperparameters.one_minus_beta1, hyperparameters.beta2, 1e-8),
      optax.add_decayed_weights(hyperparameters.weight_decay),
      optax.scale_by_schedule(lambda count: -schedule(count)))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape_tuple), workload.param_shapes)
  return optimizer.init(zeros), optimizer.update


def train_step(workload, update_fn, model_state, optimizer_state, params, batch, rng,
               label_smoothing, dropout_rate):

  def summed_loss(params):
    logits, new_model_state = workload.model_fn(
        params, batch, model_state, spec.ForwardPassMode.TRAIN, rng, update_batch_norm=True,
        dropout_rate=dropout_rate)
    losses = workload.loss_fn(label_batch=batch['targets'], logits_batch=logits,
                              mask_batch=batch.get('weights'), label_smoothing=label_smoothing)
    return losses['summed'], (losses['n_valid_examples'], new_model_state)

  (summed, (n_valid, new_model_state)), grad = jax.value_and_grad(
      summed_loss, has_aux=True)(params)
  grad = jax.tree.map(lambda g: g / n_valid, grad)
  updates, new_optimizer_state = update_fn(grad, optimizer_state, params)
  return new_optimizer_state, optax.apply_updates(params, updates), new_model_state, (
      summed / n_valid)


def update_params(workload: spec.Workload, current_param_container: spec.ParameterContainer,
                  current_params_types: spec.ParameterTypeTree,
                  model_state: spec.ModelAuxiliaryState, hyperparameters: spec.Hyperparameters,
                  batch: Dict[str, spec.Tensor], loss_type: spec.LossType,
                  optimizer_state: spec.OptimizerState, eval_results: List[Tuple[int, float]],
                  global_step: int, rng: spec.RandomState,
                  train_state: Optional[Dict[str, Any]] = None) -> spec.UpdateReturn:
  del current_params_types, loss_type, eval_results, train_state
  optimizer_state, update_fn = optimizer_state
  replicated = jax_sharding_utils.get_replicate_sharding()
  sharded = jax_sharding_utils.get_batch_dim_sharding()
  jitted = jax.jit(
      train_step, static_argnums=(0, 1),
      in_shardings=(replicated, replicated, replicated, sharded, replicated, replicated,
                    replicated),
      out_shardings=(replicated, replicated, replicated, replicated))
  new_optimizer_state, new_params, new_model_state, loss = jitted(
      workload, update_fn, model_state, optimizer_state, current_param_container, batch, rng,
      hyperparameters.label_smoothing, hyperparameters.dropout_rate)
  if global_step % 100 == 0 and workload.metrics_logger is not None:
    workload.metrics_logger.append_scalar_metrics({'loss': float(loss)}, global_step)
  return (new_optimizer_state, update_fn), new_params, new_model_state


def prepare_for_eval(workload: spec.Workload, current_param_container: spec.ParameterContainer,
                     current_params_types: spec.ParameterTypeTree,
                     model_state: spec.ModelAuxiliaryState,
                     hyperparameters: spec.Hyperparameters, loss_type: spec.LossType,
                     optimizer_state: spec.OptimizerState,
                     eval_results: List[Tuple[int, float]], global_step: int,
                     rng: spec.RandomState) -> spec.UpdateReturn:
  del workload, current_params_types, hyperparameters, loss_type, eval_results, global_step, rng
  return optimizer_state, current_param_container, model_state


def data_selection(workload: spec.Workload, input_queue: Iterator[Dict[str, spec.Tensor]],
                   optimizer_state: spec.OptimizerState,
                   current_param_container: spec.ParameterContainer,
                   model_state: spec.ModelAuxiliaryState, hyperparameters: spec.Hyperparameters,
                   global_step: int, rng: spec.RandomState) -> Dict[str, spec.Tensor]:
  del workload, optimizer_state, current_param_container, model_state, hyperparameters
  del global_step, rng
  return next(input_queue)
