"""One trial: a submission trains on a workload with one hyperparameter point, by the rules of
upstream AlgoPerf's `submission_runner.py` (docs/contract.md lists them).

The clock that decides time-to-target (`accumulated_submission_time`) covers `data_selection`,
`update_params` (compilation included) and `prepare_for_eval`; it excludes model and input
pipeline initialisation, `init_optimizer_state`, evaluation and logging. The budget is checked at
evaluation time, after `prepare_for_eval`: past it there is no evaluation, so no target is
credited. Training stops early only when the validation AND the test target are reached.

The loop is `_train_step` then, when due, `evaluation.evaluate`; a checkpoint or sharding step
slots in beside them. Every second of the trial is booked to one bucket of `time_split`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from benchmark import evaluation, results, tuning
from benchmark.clock import Clock
from benchmark.trial_state import Model, TrialState, summary
from contract.errors import BenchmarkError, TrainingCompleteError
from contract.submission import Submission
from contract.workload import Workload

SELF_TUNING_BUDGET_FACTOR = 1.5  # Upstream's self-tuning ruleset: 1.5 x max_allowed_runtime_sec.


@dataclasses.dataclass(frozen=True)
class TrialSettings:
  """How one trial runs.

  Attributes:
    rng_seed: the trial's seed.
    max_global_steps: stop after this many steps (a final evaluation follows, as upstream).
    max_runtime_sec: the submission-time budget; None: the workload's
      `max_allowed_runtime_sec` times `budget_factor`.
    budget_factor: 1 (external tuning) or `SELF_TUNING_BUDGET_FACTOR`.
    eval_period_steps: evaluate every N steps; None: the workload's step period, else its
      `eval_period_time_sec` of wall-clock since the last evaluation.
    stop_on_target: stop once both targets are reached (upstream always does).
    preemption_count: recorded in every measurement row (upstream's column).
  """
  rng_seed: int
  max_global_steps: Optional[int] = None
  max_runtime_sec: Optional[float] = None
  budget_factor: float = 1.0
  eval_period_steps: Optional[int] = None
  stop_on_target: bool = True
  preemption_count: int = 0

  def runtime_budget(self, workload: Workload) -> float:
    if self.max_runtime_sec is not None:
      return self.max_runtime_sec
    return self.budget_factor * workload.max_allowed_runtime_sec


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _train_step(context: evaluation.TrialContext, state: TrialState, model: Model,
                input_queue: Any, select_rng: jax.Array, update_rng: jax.Array
                ) -> Tuple[TrialState, Model]:
  """`data_selection` and `update_params` on the clock, the step's phase bucket booked.

  The clock runs from the end of the previous step (or evaluation), as upstream's: the step's
  rng split is booked with `data_selection`. The parameters' finiteness check waits for the
  step's device work, so every step's time is booked to that step.
  """
  submission, workload, hparams, clock = (context.submission, context.workload, context.hparams,
                                          context.clock)
  step = state.global_step
  batch = submission.data_selection(workload, input_queue, model.optimizer_state, model.params,
                                    model.model_state, hparams, step, select_rng)
  submission_time = state.submission_time + clock.book('data_selection')
  extra = ({'train_state': state.train_state_view(clock.last)}
           if submission.update_params_takes_train_state else {})
  complete = state.training_complete
  try:
    model = Model(*submission.update_params(
        workload, model.params, workload.model_params_types, model.model_state, hparams, batch,
        workload.loss_type, model.optimizer_state, list(state.eval_results), step, update_rng,
        **extra))
  except TrainingCompleteError:
    complete = True
  params_finite = bool(_all_finite(model.params))
  phase = submission.step_phase(step, hparams)
  bucket = f'steps/{phase}' if phase in state.phase_steps else f'compile_and_first_step/{phase}'
  submission_time += clock.book(bucket)
  phase_steps = dict(state.phase_steps, **{phase: state.phase_steps.get(phase, 0) + 1})
  max_steps = context.settings.max_global_steps
  state = state._replace(global_step=step + 1, submission_time=submission_time,
                         phase_steps=phase_steps, training_complete=complete,
                         max_steps_reached=max_steps is not None and step + 1 >= max_steps)
  if not params_finite:
    state = state._replace(status=results.STATUS_DIVERGED,
                           reason=f'non-finite parameters after step {step + 1}')
  return state, model


def run_trial(workload: Workload, submission: Submission,
              hyperparameters: Optional[Dict[str, Any]], trial_dir: str,
              settings: TrialSettings, log: Callable[[str], None] = print,
              log_prefix: str = '') -> Dict[str, Any]:
  """Trains one submission on one workload with one hyperparameter point (None: self-tuning).

  Writes `hparams.json` at once, a row of `eval_measurements.csv` after every evaluation and
  `trial_summary.json` at the end, also when the trial diverges, fails or is interrupted (the
  exception is then re-raised, as a BenchmarkError for failures inside the submission).

  Returns:
    The trial summary (`trial_state.summary`): status, steps and seconds to the validation target
    (None when not reached within the budget), the time split and the bookkeeping.
  """
  os.makedirs(trial_dir, exist_ok=True)
  if hyperparameters is not None:
    results.write_json(os.path.join(trial_dir, results.HPARAMS_FILE), hyperparameters)
  clock = Clock()
  context = evaluation.TrialContext(
      workload=workload, submission=submission, settings=settings, clock=clock,
      hparams=None if hyperparameters is None else tuning.make_hyperparameters(hyperparameters),
      budget=settings.runtime_budget(workload), log=log, log_prefix=log_prefix,
      writer=results.MeasurementsWriter(os.path.join(trial_dir, results.MEASUREMENTS_FILE)))
  state = TrialState()

  def finish(final: TrialState, bucket: str, file_name: str) -> Dict[str, Any]:
    clock.book(bucket)
    result = summary(final, context, hyperparameters)
    results.write_json(os.path.join(trial_dir, file_name), result)
    return result

  try:
    # As upstream: one split first mixes the seed's two 32-bit words (PRNGKey(seed)[0] is 0).
    rng, _ = jax.random.split(jax.random.PRNGKey(settings.rng_seed))
    data_rng, opt_init_rng, model_init_rng, rng = jax.random.split(rng, 4)
    input_queue = workload.build_input_queue(data_rng, 'train', workload.data_dir,
                                             evaluation.batch_size(submission, workload))
    params, model_state = workload.init_model_fn(model_init_rng)
    clock.book('model_init_and_input_pipeline')
    model = Model(submission.init_optimizer_state(workload, params, model_state, context.hparams,
                                                  opt_init_rng), params, model_state)
    clock.book('optimizer_init')  # Outside the clock, as upstream.
    while not state.should_stop(settings.stop_on_target):
      select_rng, update_rng, prepare_rng, eval_rng = jax.random.split(
          jax.random.fold_in(rng, state.global_step), 4)
      state, model = _train_step(context, state, model, input_queue, select_rng, update_rng)
      if state.status == results.STATUS_DIVERGED:
        break
      if state.training_complete or state.max_steps_reached or evaluation.is_due(
          context, state, clock.last):
        state, model = evaluation.evaluate(context, state, model, prepare_rng, eval_rng)
    state = state._replace(status=state.final_status())
  except KeyboardInterrupt:
    finish(state._replace(status=results.STATUS_INTERRUPTED, reason='interrupted by the user'),
           'interrupted', results.SUMMARY_FILE + '.partial')
    raise
  except BenchmarkError as e:
    finish(state._replace(status=results.STATUS_FAILED, reason=str(e)), 'failed',
           results.SUMMARY_FILE)
    raise
  except Exception as e:  # A failure inside the submission or workload: keep what was measured.
    reason = f'{type(e).__name__}: {e}'
    finish(state._replace(status=results.STATUS_FAILED, reason=reason), 'failed',
           results.SUMMARY_FILE)
    raise BenchmarkError(f'trial in {trial_dir} failed at step {state.global_step}: {reason} '
                         f'(measurements so far are kept in {trial_dir})') from e
  return finish(state, 'logging', results.SUMMARY_FILE)
