"""K-FAC (expand or reduce) behind the AlgoPerf submission API, for any workload.

The optimiser is `kfac.kfac_optimizer`: K-FAC preconditioning of every Dense/DenseGeneral/Conv
layer (norm parameters and embeddings pass through), weight decay added to the preconditioned
gradient, Nesterov momentum `1 - one_minus_beta1`, and the reference warmup + linear-decay
schedule over `KFAC_HORIZON_FACTOR x step_hint` steps (the paper scales the reference's warmup
and expected steps by 0.75; Eschenhagen et al. 2023, section 4). The learning rate and the damping
are the tuned hyperparameters.

Hyperparameters (JSON search spaces): the Nesterov reference's (`learning_rate`,
`one_minus_beta1`, `weight_decay`, `warmup_factor`, `decay_steps_factor`, `end_factor`,
`label_smoothing`, `dropout_rate`) plus `damping` and, optionally, `cov_update_every` (T_cov),
`inverse_update_every` (T_inv), `ema_decay`, `clip_update_norm`, `num_samples`, `damping_mode`, `warm_start_steps` (statistics and inverses
on every step before it; default `DEFAULT_WARM_START_STEPS`).

The curvature pass runs the workload's training-mode forward pass (`Workload.kfac_model_fn`)
with the step's model state and dropout rng, on the step's batch, with labels sampled from the
model (MC Fisher). Its loss is scaled to the training objective: the workload's loss is
`summed / n_valid_examples`, K-FAC's the mean over examples of the per-example sum, so the mask
handed to K-FAC is the label mask times `examples / sum(mask)` (1 for per-example masks).
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp

import kfac
from contract.types import LossType
from submissions import common

DEFAULT_COV_UPDATE_EVERY = 1
DEFAULT_INVERSE_UPDATE_EVERY = 10
DEFAULT_EMA_DECAY = 0.95
# Statistics and inverses on every one of the first steps: the ViT's zero-initialised head makes
# the step-0 curvature of every other layer zero, and with T_inv = 10 its `1 / damping` inverse
# would scale the next nine updates (measured: divergence within 4 steps on imagenet_vit small).
DEFAULT_WARM_START_STEPS = 10
KFAC_LOSSES = {
    LossType.SOFTMAX_CROSS_ENTROPY: 'softmax_cross_entropy',
    LossType.SIGMOID_CROSS_ENTROPY: 'sigmoid_cross_entropy',
    LossType.MEAN_SQUARED_ERROR: 'mse',
}


def kfac_loss_name(loss_type: LossType) -> str:
  if loss_type not in KFAC_LOSSES:
    raise ValueError(f'K-FAC supports losses {sorted(l.name for l in KFAC_LOSSES)}, '
                     f'not {loss_type.name}')
  return KFAC_LOSSES[loss_type]


def objective_mask(weights: jax.Array) -> jax.Array:
  """The label mask scaled so that K-FAC's mean-over-examples loss is the training objective
  `sum(mask * loss) / sum(mask)`: `weights * (examples with any weight) / sum(weights)`."""
  per_example = weights.reshape(weights.shape[0], -1)
  num_examples = jnp.sum(jnp.any(per_example != 0, axis=1))
  return weights * (num_examples / jnp.maximum(jnp.sum(weights), 1e-12))


def curvature_extra_args(workload, batch: Dict[str, Any], model_state, rng: jax.Array
                         ) -> Dict[str, Any]:
  """The extra update arguments of `kfac.precondition` for one training batch."""
  del workload, model_state
  weights = batch.get('weights')
  return {'inputs': batch['inputs'], 'targets': batch['targets'],
          'mask': None if weights is None else objective_mask(jnp.asarray(weights)),
          'rng': jax.random.fold_in(rng, 1)}


def _setting(hyperparameters, name: str, default: Any) -> Any:
  return getattr(hyperparameters, name, default)


def make_optimizer_fn(workload, hyperparameters, flavour: str, sample_inputs: Any
                      ) -> common.OptimizerFn:
  """`(model_state, rng) -> kfac.kfac_optimizer` whose statistics pass is the workload's
  training forward pass with that model state and dropout rng."""
  schedule = common.reference_schedule(workload.step_hint, hyperparameters,
                                       horizon_factor=common.KFAC_HORIZON_FACTOR)
  options = dict(
      learning_rate=schedule,
      momentum=1.0 - hyperparameters.one_minus_beta1,
      nesterov=True,
      weight_decay=hyperparameters.weight_decay,
      clip_update_norm=_setting(hyperparameters, 'clip_update_norm', None),
      loss=kfac_loss_name(workload.loss_type),
      sample_inputs=sample_inputs,
      flavour=flavour,
      fisher_type='mc',
      num_samples=int(_setting(hyperparameters, 'num_samples', 1)),
      damping=hyperparameters.damping,
      damping_mode=_setting(hyperparameters, 'damping_mode', 'exact'),
      ema_decay=_setting(hyperparameters, 'ema_decay', DEFAULT_EMA_DECAY),
      cov_update_every=int(_setting(hyperparameters, 'cov_update_every', DEFAULT_COV_UPDATE_EVERY)),
      inverse_update_every=int(_setting(hyperparameters, 'inverse_update_every',
                                        DEFAULT_INVERSE_UPDATE_EVERY)),
      warm_start_steps=int(_setting(hyperparameters, 'warm_start_steps',
                                    DEFAULT_WARM_START_STEPS)),
  )

  def optimizer_fn(model_state, rng):
    def apply_fn(params, inputs):
      return workload.kfac_model_fn(params, {'inputs': inputs}, model_state, rng)
    return kfac.kfac_optimizer(apply_fn, **options)

  return optimizer_fn


def sample_batch_inputs(workload, rng: jax.Array) -> Any:
  """The inputs of one training batch (shapes only matter): K-FAC traces its layers on them."""
  batch_size = workload.train_batch_size
  queue = workload.build_input_queue(rng, 'train', workload.data_dir, batch_size)
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.asarray(x).dtype),
                                next(queue)['inputs'])


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng, *,
                         flavour: str) -> common.TrainState:
  optimizer_fn = make_optimizer_fn(workload, hyperparameters, flavour,
                                   sample_batch_inputs(workload, rng))
  return common.init_train_state(workload, model_params, model_state, optimizer_fn,
                                 hyperparameters, rng, extra_args_fn=curvature_extra_args)


def step_phase(global_step: int, hyperparameters) -> str:
  """Which curvature work step `global_step` does: 'plain', 'statistics' or
  'statistics+inverse' (the runner times each phase separately)."""
  t_cov = int(_setting(hyperparameters, 'cov_update_every', DEFAULT_COV_UPDATE_EVERY))
  t_inv = int(_setting(hyperparameters, 'inverse_update_every', DEFAULT_INVERSE_UPDATE_EVERY))
  warm = int(_setting(hyperparameters, 'warm_start_steps', DEFAULT_WARM_START_STEPS))
  statistics = kfac.curvature.is_due(global_step, t_cov, warm)
  inverse = kfac.curvature.is_due(global_step, t_inv, warm)
  if inverse:
    return 'statistics+inverse' if statistics else 'inverse'
  return 'statistics' if statistics else 'plain'
