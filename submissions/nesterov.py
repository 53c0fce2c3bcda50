"""Upstream AlgoPerf's Nesterov baseline, for any workload (the reference).

SGD with Nesterov momentum `1 - one_minus_beta1`; weight decay added to the gradient before the
momentum (L2 style: `optax.add_decayed_weights` then SGD, as upstream's JAX baseline); linear
warmup over `warmup_factor x step_hint` steps, then linear decay to `learning_rate x end_factor`
over `decay_steps_factor x (step_hint - warmup)` steps (`common.warmup_linear_decay`). The
numbers are held in the optimiser state (`common.traced_hyperparameters`), so a study's trials
share one compiled train step.
Hyperparameters: `learning_rate`, `one_minus_beta1`, `weight_decay`, `warmup_factor`,
`decay_steps_factor`, `end_factor`, `label_smoothing`, `dropout_rate`: upstream's
`archived_paper_baselines/nesterov` search space runs here unchanged.
Per-workload modules (`submissions/<workload>/nesterov.py`) re-export these functions and carry
the workload's search space next to them in `tuning_search_spaces/<workload>/nesterov.json`.
"""

from __future__ import annotations

from typing import Any, Dict

import optax

from submissions import common
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'nesterov_optimizer', 'nesterov', 'nesterov_hyperparameters']


def nesterov_hyperparameters(step_hint: int, hyperparameters) -> Dict[str, Any]:
  """The numbers of `nesterov` (the optimiser's arguments) of a trial's hyperparameters,
  computed on the host as upstream's baseline computes them."""
  return dict(common.schedule_hyperparameters(step_hint, hyperparameters),
              end_learning_rate=float(hyperparameters.learning_rate * hyperparameters.end_factor),
              momentum=float(1.0 - hyperparameters.one_minus_beta1),
              weight_decay=float(hyperparameters.weight_decay))


def nesterov(learning_rate, end_learning_rate, warmup_steps, decay_steps, momentum,
             weight_decay) -> optax.GradientTransformation:
  """`add_decayed_weights(weight_decay)` then Nesterov SGD on the warmup + linear-decay
  schedule (`common.warmup_linear_decay`); every argument may be traced."""
  schedule = common.warmup_linear_decay(learning_rate, end_learning_rate, warmup_steps,
                                        decay_steps)
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate=schedule, momentum=momentum, nesterov=True))


def nesterov_optimizer(step_hint: int, hyperparameters) -> optax.GradientTransformationExtraArgs:
  """`nesterov` of a trial's hyperparameters, the numbers in its state
  (`common.traced_hyperparameters`: one compiled step for all trials)."""
  return common.traced_hyperparameters(nesterov,
                                       **nesterov_hyperparameters(step_hint, hyperparameters))


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  del model_state, rng
  optimizer = nesterov_optimizer(workload.step_hint, hyperparameters)
  return common.eager_train_state(model_params,
                                  lambda batch: common.step_functions(workload, optimizer))
