"""One trial: a submission trains on a workload with one hyperparameter point, by the rules of
upstream AlgoPerf's `submission_runner.py` (docs/contract.md lists them).

The clock that decides time-to-target (`accumulated_submission_time`) covers `data_selection`,
`update_params` (compilation included) and `prepare_for_eval`; it excludes model and input
pipeline initialisation, `init_optimizer_state`, evaluation and logging. The budget is checked at
evaluation time, after `prepare_for_eval`: past it there is no evaluation, so no target is
credited. Training stops early only when the validation AND the test target are reached.

The loop is `_train_step` then, when due, `evaluation.evaluate` (which checkpoints before it
writes its row), and a checkpoint every `checkpoint_every_secs` between evaluations. A trial
whose folder holds a checkpoint continues from it (`benchmark.resume`): parameters, optimiser and
model state, rng, the input queue's position (replayed), the bookkeeping and the time split; the
evaluation rows after the resume equal an uninterrupted run's. Every second of the trial is
booked to one bucket of `time_split` (`resume` and `checkpoint` outside submission time).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from benchmark import diagnostics, evaluation, results, resume, tuning
from benchmark.checkpoint import Checkpointer, MeasurementsWriter, ResumableQueue
from benchmark.clock import Clock
from benchmark.trial_state import Model, TrialState, summary
from contract import sharding
from contract.errors import BenchmarkError, TrainingCompleteError
from contract.submission import Submission
from contract.workload import Workload

SELF_TUNING_BUDGET_FACTOR = 1.5  # Upstream's self-tuning ruleset: 1.5 x max_allowed_runtime_sec.
CHECKPOINT_EVERY_SECS = 600.0  # Between evaluations; a kill loses at most this much training.
# More consecutive rejected curvature updates of one layer than this mark a trial `degraded`.
MAX_CONSECUTIVE_REJECTIONS = 10


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
    resume: continue from the trial folder's last checkpoint when it has one.
    save_checkpoints: checkpoint at every evaluation and every `checkpoint_every_secs`.
    checkpoint_every_secs: wall-clock seconds between checkpoints besides evaluations.
    checkpoints_to_keep: the newest checkpoints kept (2 or more: a corrupt one falls back).
    max_consecutive_rejections: more consecutive rejected curvature updates of one layer (the
      submission's `diagnostics`) mark the trial `degraded`.
  """
  rng_seed: int
  max_global_steps: Optional[int] = None
  max_runtime_sec: Optional[float] = None
  budget_factor: float = 1.0
  eval_period_steps: Optional[int] = None
  stop_on_target: bool = True
  resume: bool = True
  save_checkpoints: bool = True
  checkpoint_every_secs: float = CHECKPOINT_EVERY_SECS
  checkpoints_to_keep: int = 2
  max_consecutive_rejections: int = MAX_CONSECUTIVE_REJECTIONS

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
  first = phase not in state.phases_this_run  # Compiles: once per phase in each run.
  submission_time += clock.book(f'compile_and_first_step/{phase}' if first else f'steps/{phase}')
  phase_steps = dict(state.phase_steps, **{phase: state.phase_steps.get(phase, 0) + 1})
  compile_steps = dict(state.compile_steps, **{phase: state.compile_steps.get(phase, 0) + first})
  max_steps = context.settings.max_global_steps
  state = state._replace(global_step=step + 1, submission_time=submission_time,
                         phase_steps=phase_steps, compile_steps=compile_steps,
                         phases_this_run=state.phases_this_run + ((phase,) if first else ()),
                         training_complete=complete,
                         max_steps_reached=max_steps is not None and step + 1 >= max_steps)
  if not params_finite:
    state = state._replace(status=results.STATUS_DIVERGED,
                           reason=f'non-finite parameters after step {step + 1}')
  return state, model


def _start(context: evaluation.TrialContext, checkpoints: Optional[Checkpointer]
           ) -> Tuple[evaluation.TrialContext, TrialState, Model]:
  """The model, the optimiser state and the input queue; continued from the last of
  `checkpoints` when there is one (which this says on the log)."""
  workload, submission, settings, clock = (context.workload, context.submission,
                                           context.settings, context.clock)
  # As upstream: one split first mixes the seed's two 32-bit words (PRNGKey(seed)[0] is 0).
  rng, _ = jax.random.split(jax.random.PRNGKey(settings.rng_seed))
  data_rng, opt_init_rng, model_init_rng, rng = jax.random.split(rng, 4)
  size = evaluation.batch_size(submission, workload)
  sharding.check_divisible(size, f'global batch size of {submission.name}')
  params, model_state = sharding.replicate(workload.init_model_fn(model_init_rng))
  clock.book('model_init_and_input_pipeline')
  # Also the template of a restored optimiser state (its functions, for instance).
  model = Model(submission.init_optimizer_state(workload, params, model_state, context.hparams,
                                                opt_init_rng), params, model_state)
  clock.book('optimizer_init')  # Outside the clock, as upstream.
  found = None if checkpoints is None else checkpoints.latest(model.optimizer_state)
  queue = ResumableQueue(lambda: workload.build_input_queue(data_rng, 'train', workload.data_dir,
                                                            size),
                         skip=0 if found is None else found.batches_drawn)
  if found is None:
    clock.book('model_init_and_input_pipeline')
    context.writer.resume(0)  # A fresh start: no rows of an earlier run stay.
    return (context._replace(input_queue=queue, rng=rng),
            TrialState(last_checkpoint_end=clock.last), model)
  # Restored arrays land on the default device: replicated over the mesh again.
  model = Model(*sharding.replicate((found.optimizer_state, found.params, found.model_state)))
  context.writer.resume(found.csv_rows_before, found.csv_row)
  state = resume.resumed(found, clock)
  context.log(f'{context.log_prefix} resuming {context.trial_dir} from step {found.global_step} '
              f'(preemption {state.preemption_count})')
  clock.book('resume')
  return context._replace(input_queue=queue, rng=found.rng), state, model


def _checkpoint_due(context: evaluation.TrialContext, state: TrialState) -> bool:
  """Whether `checkpoint_every_secs` passed since the last checkpoint (or the run's start)."""
  since = context.clock.last - state.last_checkpoint_end
  return context.checkpointer is not None and since >= context.settings.checkpoint_every_secs


def run_trial(workload: Workload, submission: Submission,
              hyperparameters: Optional[Dict[str, Any]], trial_dir: str,
              settings: TrialSettings, log: Callable[[str], None] = print,
              log_prefix: str = '', on_start: Callable[[int], None] = lambda preemptions: None
              ) -> Dict[str, Any]:
  """Trains one submission on one workload with one hyperparameter point (None: self-tuning),
  continuing from the last checkpoint in `trial_dir` when there is one (`settings.resume`).

  Writes `hparams.json` at once, calls `on_start(preemption_count)` once the preemption count is
  known (0, or the checkpoint's plus one), writes a checkpoint and then a row of
  `eval_measurements.csv` at every evaluation and `trial_summary.json` at the end, also when the
  trial diverges, fails or is interrupted (the exception is then re-raised, as a BenchmarkError
  for failures inside the submission).

  Returns:
    The trial summary (`trial_state.summary`): status, steps and seconds to the validation target
    (None when not reached within the budget), the time split and the bookkeeping.
  """
  os.makedirs(trial_dir, exist_ok=True)
  if hyperparameters is not None:
    results.write_json(os.path.join(trial_dir, results.HPARAMS_FILE), hyperparameters)
  clock = Clock()
  checkpoints = Checkpointer(os.path.join(trial_dir, results.CHECKPOINTS_DIR),
                             settings.checkpoints_to_keep, log)
  context = evaluation.TrialContext(
      workload=workload, submission=submission, settings=settings, clock=clock,
      hparams=None if hyperparameters is None else tuning.make_hyperparameters(hyperparameters),
      budget=settings.runtime_budget(workload), log=log, log_prefix=log_prefix,
      writer=MeasurementsWriter(os.path.join(trial_dir, results.MEASUREMENTS_FILE)),
      checkpointer=checkpoints if settings.save_checkpoints else None, trial_dir=trial_dir)
  state = TrialState()

  def finish(final: TrialState, bucket: str, file_name: str) -> Dict[str, Any]:
    clock.book(bucket)
    result = summary(final, context, hyperparameters)
    results.write_json(os.path.join(trial_dir, file_name), result)
    return result

  try:
    context, state, model = _start(context, checkpoints if settings.resume else None)
    on_start(state.preemption_count)
    first_step = state.global_step
    while not state.should_stop(settings.stop_on_target):
      select_rng, update_rng, prepare_rng, eval_rng = jax.random.split(
          jax.random.fold_in(context.rng, state.global_step), 4)
      state, model = _train_step(context, state, model, context.input_queue, select_rng,
                                 update_rng)
      if state.status == results.STATUS_DIVERGED:
        break
      if state.global_step == first_step + 1:  # Lazy optimisers exist after their first step.
        state = diagnostics.record(context, state, model, at_evaluation=False)
        state = state._replace(logging_time=state.logging_time + clock.book('logging'))
      if state.training_complete or state.max_steps_reached or evaluation.is_due(
          context, state, clock.last):
        state, model = evaluation.evaluate(context, state, model, prepare_rng, eval_rng)
      elif _checkpoint_due(context, state):
        state = resume.save(context, state, model)
    state = diagnostics.record(context, state, model, at_evaluation=False)  # The final counts.
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
