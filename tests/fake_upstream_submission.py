"""A submission written the way upstream AlgoPerf's JAX baselines are (the same imports, names and
calls: `from algoperf import jax_sharding_utils, spec`, `param_shapes` leaves' `.shape_tuple`,
jitted steps with NamedShardings, `spec.TrainingCompleteError`), Adam on any workload. It has no
`prepare_for_eval` (optional since upstream v0.6): the contract's pass-through is used.

Our own code; for tests that upstream-style submissions run here unchanged. `CALLS` records the
workload names `get_batch_size` was asked about.
"""

import functools
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from algoperf import jax_sharding_utils, spec

CALLS: List[str] = []
KNOWN_BATCH_SIZES = {'fake': 32}


def get_batch_size(workload_name: str) -> int:
  CALLS.append(workload_name)
  if workload_name not in KNOWN_BATCH_SIZES:
    raise ValueError(f'Unsupported workload name: {workload_name}.')
  return KNOWN_BATCH_SIZES[workload_name]


def init_optimizer_state(workload: spec.Workload, model_params: spec.ParameterContainer,
                         model_state: spec.ModelAuxiliaryState,
                         hyperparameters: spec.Hyperparameters,
                         rng: spec.RandomState) -> spec.OptimizerState:
  del model_params, model_state, rng
  optimizer = optax.adam(hyperparameters.learning_rate)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape_tuple), workload.param_shapes)
  return jax_sharding_utils.replicate(optimizer.init(zeros)), optimizer.update


def _loss(workload, params, model_state, batch, rng, dropout_rate):
  logits, new_state = workload.model_fn(params, batch, model_state, spec.ForwardPassMode.TRAIN,
                                        rng, update_batch_norm=True, dropout_rate=dropout_rate)
  losses = workload.loss_fn(batch['targets'], logits)
  return losses['summed'] / losses['n_valid_examples'], new_state


@functools.partial(jax.jit, static_argnums=(0, 1))
def train_step(workload, update_fn, optimizer_state, params, model_state, batch, rng,
               dropout_rate):
  (loss, new_state), grads = jax.value_and_grad(
      functools.partial(_loss, workload), has_aux=True)(params, model_state, batch, rng,
                                                        dropout_rate)
  updates, optimizer_state = update_fn(grads, optimizer_state, params)
  return optimizer_state, optax.apply_updates(params, updates), new_state, loss


def update_params(workload: spec.Workload, current_param_container: spec.ParameterContainer,
                  current_params_types: spec.ParameterTypeTree,
                  model_state: spec.ModelAuxiliaryState, hyperparameters: spec.Hyperparameters,
                  batch: Dict[str, spec.Tensor], loss_type: spec.LossType,
                  optimizer_state: spec.OptimizerState,
                  eval_results: List[Tuple[int, float]], global_step: int,
                  rng: spec.RandomState,
                  train_state: Optional[Dict[str, Any]] = None) -> spec.UpdateReturn:
  del current_params_types, loss_type, eval_results, train_state
  if global_step >= hyperparameters.stop_after_steps:
    raise spec.TrainingCompleteError
  state, update_fn = optimizer_state
  batch = jax_sharding_utils.shard_along_batch_dim(batch)
  state, params, model_state, _ = train_step(
      workload, update_fn, state, current_param_container, model_state, batch, rng,
      hyperparameters.dropout_rate)
  return (state, update_fn), params, model_state


def data_selection(workload, input_queue: Iterator[Dict[str, spec.Tensor]], *args
                   ) -> Dict[str, spec.Tensor]:
  del workload, args  # optimizer_state, params, model_state, hyperparameters, step, rng
  return next(input_queue)
