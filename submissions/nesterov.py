"""Upstream AlgoPerf's Nesterov baseline, for any workload (the reference).

SGD with Nesterov momentum `1 - one_minus_beta1`; weight decay added to the gradient before the
momentum (L2 style: `optax.add_decayed_weights` then SGD, as upstream's JAX baseline); linear
warmup over `warmup_factor x step_hint` steps, then linear decay to `learning_rate x end_factor`
over `decay_steps_factor x (step_hint - warmup)` steps (`common.warmup_linear_decay_schedule`).
Hyperparameters: `learning_rate`, `one_minus_beta1`, `weight_decay`, `warmup_factor`,
`decay_steps_factor`, `end_factor`, `label_smoothing`, `dropout_rate`: upstream's
`archived_paper_baselines/nesterov` search space runs here unchanged.
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
  """`add_decayed_weights(weight_decay)` then Nesterov SGD on the warmup + linear-decay
  schedule."""
  schedule = common.warmup_linear_decay_schedule(step_hint, hyperparameters)
  return optax.chain(
      optax.add_decayed_weights(hyperparameters.weight_decay),
      optax.sgd(learning_rate=schedule, momentum=1.0 - hyperparameters.one_minus_beta1,
                nesterov=True))


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  del model_state, rng
  optimizer = nesterov_optimizer(workload.step_hint, hyperparameters)
  return common.eager_train_state(model_params,
                                  lambda batch: common.step_functions(workload, optimizer))
