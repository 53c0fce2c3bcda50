"""Plain SGD written against the contract alone (no shared submission code), for runner tests.

Optional hyperparameters make the runner's rules observable: `init_sleep_sec` (in
`init_optimizer_state`), `step_sleep_sec` (in every `update_params`), `prepare_sleep_sec` (in
`prepare_for_eval`), `complete_at_step` (raise TrainingCompleteError at that step). Every
`update_params` call appends its `eval_results` and `train_state` to `RECEIVED`.
"""

import time

import jax

from contract.errors import TrainingCompleteError
from contract.types import ForwardPassMode

SELF_TUNING_LEARNING_RATE = 0.05  # Under self-tuning (hyperparameters None).
RECEIVED = []  # [(global_step, eval_results, train_state)], for tests that inspect the calls.


def get_batch_size(workload_name):
  return 32


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  del workload, model_params, model_state, rng
  time.sleep(getattr(hyperparameters, 'init_sleep_sec', 0.0))
  return None


def update_params(workload, current_param_container, current_params_types, model_state,
                  hyperparameters, batch, loss_type, optimizer_state, eval_results, global_step,
                  rng, train_state=None):
  RECEIVED.append((global_step, eval_results, train_state))
  if global_step == getattr(hyperparameters, 'complete_at_step', -1):
    raise TrainingCompleteError
  time.sleep(getattr(hyperparameters, 'step_sleep_sec', 0.0))

  def loss(params):
    logits, _ = workload.model_fn(params, batch, model_state, ForwardPassMode.TRAIN, rng, True)
    losses = workload.loss_fn(batch['targets'], logits)
    return losses['summed'] / losses['n_valid_examples']

  grads = jax.grad(loss)(current_param_container)
  learning_rate = getattr(hyperparameters, 'learning_rate', SELF_TUNING_LEARNING_RATE)
  params = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g,
                                  current_param_container, grads)
  return optimizer_state, params, model_state


def data_selection(workload, input_queue, optimizer_state, current_param_container, model_state,
                   hyperparameters, global_step, rng):
  return next(input_queue)


def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                     hyperparameters, loss_type, optimizer_state, eval_results, global_step, rng):
  time.sleep(getattr(hyperparameters, 'prepare_sleep_sec', 0.0))
  return optimizer_state, current_param_container, model_state


def step_phase(global_step, hyperparameters):
  return 'even' if global_step % 2 == 0 else 'odd'
