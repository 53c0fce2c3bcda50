"""The AlgoPerf target-setting Nesterov algorithm, for any workload.

SGD with Nesterov momentum `1 - one_minus_beta1`; weight decay added to the gradient before the
momentum (L2 style: `optax.add_decayed_weights` then SGD, as AlgoPerf's JAX target setting);
linear warmup then linear decay to `learning_rate * end_factor` (submissions.common).
Per-workload modules (`submissions/<workload>/nesterov.py`) re-export these functions and carry
the workload's search space next to them in `tuning_search_spaces/<workload>/nesterov.json`.
"""

from __future__ import annotations

import optax

from submissions import common
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'nesterov_optimizer']


def nesterov_optimizer(step_hint: int, hyperparameters) -> optax.GradientTransformation:
  """`add_decayed_weights(weight_decay)` then Nesterov SGD on the reference schedule."""
  schedule = common.reference_schedule(step_hint, hyperparameters)
  return optax.chain(
      optax.add_decayed_weights(hyperparameters.weight_decay),
      optax.sgd(learning_rate=schedule, momentum=1.0 - hyperparameters.one_minus_beta1,
                nesterov=True))


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  optimizer = nesterov_optimizer(workload.step_hint, hyperparameters)
  return common.init_train_state(workload, model_params, model_state,
                                 lambda model_state, rng: optimizer, hyperparameters, rng)
