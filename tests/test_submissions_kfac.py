"""The K-FAC submission's helpers: the objective mask, the step phases, and an optimiser built
once, from the first batch, whose later steps trace nothing again."""

import collections
import itertools

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


@pytest.mark.slow  # 50-140 s each; tests/test_kfac_fused.py covers the fused pass in the default suite.
@pytest.mark.parametrize('name', ['cifar', 'ogbg'])
def test_fused_statistics_train_as_the_separate_statistics_pass(name):
  """The K-FAC submission with the statistics from the gradient's forward pass and with
  `kfac.precondition`'s own pass: the same parameters and model state after 4 steps (T_cov = 2:
  statistics and plain steps) on the tiny WRN (batch norm) and the tiny GraphNetwork (dropout,
  padding graphs, label masks)."""
  workload = workloads.get_workload(name, 'tiny')
  point = collections.namedtuple('H', 'learning_rate one_minus_beta1 weight_decay warmup_factor '
                                      'decay_steps_factor end_factor damping dropout_rate '
                                      'cov_update_every inverse_update_every warm_start_steps')(
      0.05, 0.1, 1e-4, 0.05, 0.9, 0.001, 1.0, 0.1, 2, 2, 1)
  # Damping 1: with 16 examples the reduce factors are far from full rank, and at damping 1e-2
  # the eigh inverse turns the two passes' float32 differences in the factors (4e-6 relative)
  # into 1e-2 relative differences of the next update on the WRN.
  batches = list(itertools.islice(
      workload.build_input_queue(jax.random.PRNGKey(2), 'train', None, 16), 4))
  results = []
  for fused in (True, False):
    params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
    state = kfac_submission.init_optimizer_state(workload, params, model_state, point,
                                                 jax.random.PRNGKey(1), flavour='reduce',
                                                 fused_statistics=fused)
    for step, batch in enumerate(batches):
      state, params, model_state = kfac_reduce.update_params(
          workload, params, workload.model_params_types, model_state, point, batch,
          workload.loss_type, state, [], step, jax.random.PRNGKey(10 + step))
    results.append((params, model_state))
  for got, want in zip(*(jax.tree.leaves(r) for r in results)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
