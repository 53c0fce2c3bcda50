"""The K-FAC submission's helpers: the objective mask, the step phases, and an optimiser built
once, from the first batch, whose later steps trace nothing again."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workloads
from kfac import curvature
from kfac.losses import objective_mask
from submissions import kfac_reduce, kfac_submission


def test_objective_mask_turns_the_mean_over_examples_into_the_training_objective():
  rng = np.random.default_rng(0)
  losses = rng.random((6, 4))  # [examples, tasks] per-label losses.
  weights = (rng.random((6, 4)) > 0.4).astype(np.float32)
  weights[5] = 0.0  # A padding example.
  mask = np.asarray(objective_mask(jnp.asarray(weights)))
  examples_with_weight = 5
  kfac_objective = np.sum(mask * losses) / examples_with_weight  # Mean over those examples.
  np.testing.assert_allclose(kfac_objective, np.sum(weights * losses) / weights.sum(),
                             rtol=1e-6)


def test_step_phase_follows_the_periods_and_the_warm_start():
  point = collections.namedtuple('H', 'cov_update_every inverse_update_every warm_start_steps')(
      2, 4, 3)
  phases = [kfac_submission.step_phase(step, point) for step in range(9)]
  assert phases == ['statistics+inverse'] * 3 + ['plain', 'statistics+inverse', 'plain',
                                                  'statistics', 'plain', 'statistics+inverse']
  assert curvature.is_due(8, 4) and not curvature.is_due(6, 4)


def test_kfac_loss_name_refuses_unsupported_losses():
  assert kfac_submission.kfac_loss_name(
      kfac_submission.spec.LossType.SIGMOID_CROSS_ENTROPY) == 'sigmoid_cross_entropy'
  with pytest.raises(ValueError, match='CTC_LOSS'):
    kfac_submission.kfac_loss_name(kfac_submission.spec.LossType.CTC_LOSS)


def test_optimiser_is_built_from_the_first_batch_and_traced_once():
  workload = workloads.get_workload('ogbg', 'tiny')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  calls = []  # One entry per (traced) model_fn call.
  model_fn = workload.model_fn

  def counting_model_fn(*args, **kwargs):
    calls.append(args[3])
    return model_fn(*args, **kwargs)

  workload.model_fn = counting_model_fn
  point = collections.namedtuple('H', 'learning_rate one_minus_beta1 weight_decay warmup_factor '
                                      'decay_steps_factor end_factor damping dropout_rate')(
      0.05, 0.1, 0.0, 0.05, 0.9, 0.001, 1e-3, 0.1)
  state = kfac_reduce.init_optimizer_state(workload, params, model_state, point,
                                           jax.random.PRNGKey(1))
  assert state.opt_state is None and state.functions is None  # Nothing built without a batch.
  queue = workload.build_input_queue(jax.random.PRNGKey(2), 'train', None, 32)
  traced_after = []
  for step in range(3):
    state, params, model_state = kfac_reduce.update_params(
        workload, params, workload.model_params_types, model_state, point, next(queue),
        workload.loss_type, state, [], step, jax.random.PRNGKey(10 + step))
    traced_after.append(len(calls))
    if step == 0:
      functions = state.functions
  assert state.functions is functions  # Built once.
  # The first step traces the plan and the jitted step; later steps (same shapes) trace nothing.
  assert traced_after[0] > 0 and traced_after[2] == traced_after[1] == traced_after[0]
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state.opt_state))
