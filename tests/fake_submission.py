"""Plain SGD through the shared submission machinery, for runner tests."""

import optax

from submissions import common
from submissions.common import data_selection, prepare_for_eval, update_params


def get_batch_size(workload_name):
  return 32


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  optimizer = optax.sgd(hyperparameters.learning_rate)
  return common.init_train_state(workload, model_params, model_state,
                                 lambda model_state, rng: optimizer, hyperparameters, rng)


def step_phase(global_step, hyperparameters):
  return 'even' if global_step % 2 == 0 else 'odd'
