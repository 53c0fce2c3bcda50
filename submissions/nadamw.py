"""Upstream AlgoPerf's NAdamW baseline, for any workload (the ViT reference).

NAdam with decoupled weight decay (`optax.nadamw`: b1 `1 - one_minus_beta1`, b2 `beta2`, eps
1e-8), linear warmup from 0 over `warmup_factor x step_hint` steps, then cosine decay to 0 over
`decay_steps_factor x (step_hint - warmup)` steps (`common.warmup_cosine_decay`;
`decay_steps_factor` is ours, optional, default 1: upstream's schedule). Hyperparameters:
`learning_rate`, `one_minus_beta1`, `beta2`, `weight_decay`, `warmup_factor`, `label_smoothing`,
`dropout_rate` (+ `decay_steps_factor`): upstream's `archived_paper_baselines/nadamw` search
space runs here unchanged. `optax.nadamw` corrects the bias of its Nesterov first moment as Dozat
(2016) does; upstream's init2winit fork corrects `b1 mu + (1 - b1) g` as a whole: the two differ
in the first steps only.

ImageNet ViT target setting (tuning_search_spaces/imagenet_vit/nadamw.json): learning rate
8.445e-4, beta1 0.8896, beta2 0.99785, weight decay 0.0814, warmup 6,999 steps and cosine decay
over the remaining 119,000 of the 0.75 x 167,999 = 125,999-step target-setting horizon.
"""

from __future__ import annotations

import optax

from submissions import common
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'nadamw_optimizer', 'nadamw']


def nadamw(learning_rate, warmup_steps, decay_steps, b1, b2, weight_decay
           ) -> optax.GradientTransformation:
  """`optax.nadamw` (eps 1e-8) on the warmup + cosine-decay schedule
  (`common.warmup_cosine_decay`); every argument may be traced."""
  return optax.nadamw(learning_rate=common.warmup_cosine_decay(learning_rate, warmup_steps,
                                                               decay_steps),
                      b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay)


def nadamw_optimizer(step_hint: int, hyperparameters) -> optax.GradientTransformationExtraArgs:
  """`nadamw` of a trial's hyperparameters, the numbers in its state
  (`common.traced_hyperparameters`: one compiled step for all trials)."""
  return common.traced_hyperparameters(
      nadamw, b1=float(1.0 - hyperparameters.one_minus_beta1), b2=float(hyperparameters.beta2),
      weight_decay=float(hyperparameters.weight_decay),
      **common.schedule_hyperparameters(step_hint, hyperparameters))


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
  del model_state, rng
  optimizer = nadamw_optimizer(workload.step_hint, hyperparameters)
  return common.eager_train_state(model_params,
                                  lambda batch: common.step_functions(workload, optimizer))
