"""AlgoPerf's NAdamW target-setting algorithm, for any workload (the ViT reference).

NAdam with decoupled weight decay (`optax.nadamw`), linear warmup from 0 over
`warmup_factor x horizon` steps then cosine decay to 0 at the horizon `0.75 x step_hint`
(AlgoPerf target setting). ImageNet ViT target setting (DESIGN section 3): learning rate
8.445e-4, beta1 0.8896, beta2 0.99785, warmup 6,999 steps of the 125,999-step horizon
(warmup_factor 0.05555), weight decay 0.0814.
"""

from __future__ import annotations

import optax

from submissions import common
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'nadamw_optimizer']


def nadamw_optimizer(step_hint: int, hyperparameters) -> optax.GradientTransformation:
  horizon = int(common.REFERENCE_HORIZON_FACTOR * step_hint)
  warmup_steps = int(hyperparameters.warmup_factor * horizon)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=hyperparameters.learning_rate, warmup_steps=max(warmup_steps, 1),
      decay_steps=max(horizon, warmup_steps + 1), end_value=0.0)
  return optax.nadamw(learning_rate=schedule, b1=1.0 - hyperparameters.one_minus_beta1,
                      b2=1.0 - hyperparameters.one_minus_beta2, eps=1e-8,
                      weight_decay=hyperparameters.weight_decay)


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  optimizer = nadamw_optimizer(workload.step_hint, hyperparameters)
  return common.init_train_state(workload, model_params, model_state,
                                 lambda model_state, rng: optimizer, hyperparameters, rng)
