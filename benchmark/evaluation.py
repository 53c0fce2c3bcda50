"""The evaluation of a trial, by upstream AlgoPerf's rules: when it is due, `prepare_for_eval` on
the clock, the budget check, the untimed `eval_model`, the targets, the measurement row; then
ours: the submission's diagnostics and a checkpoint, complete before the row is written (so that
every row on disk can be resumed from)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax

from benchmark import diagnostics, results, resume
from benchmark.checkpoint import Checkpointer, MeasurementsWriter, ResumableQueue
from benchmark.clock import Clock
from benchmark.trial_state import Model, TrialState
from contract.submission import Submission
from contract.workload import Workload


class TrialContext(NamedTuple):
  """What stays fixed during a run of a trial (`input_queue` and `rng` are set once known)."""
  workload: Workload
  submission: Submission
  settings: Any  # trial.TrialSettings
  hparams: Any  # The Hyperparameters namedtuple; None under self-tuning.
  budget: float  # Seconds of submission time.
  clock: Clock
  writer: MeasurementsWriter
  checkpointer: Optional[Checkpointer]  # None: no checkpoints are saved.
  trial_dir: str
  log: Callable[[str], None]
  log_prefix: str
  input_queue: Optional[ResumableQueue] = None
  rng: Any = None  # The trial's step rng: step t uses fold_in(rng, t).


def batch_size(submission: Submission, workload: Workload) -> int:
  """`get_batch_size(variant)`, and on ValueError/KeyError `get_batch_size(base name)` (upstream's
  order: the name the run was started with, then its base workload)."""
  try:
    return submission.get_batch_size(workload.variant_name)
  except (ValueError, KeyError):
    return submission.get_batch_size(workload.workload_name)


def eval_batch_size(submission: Submission, workload: Workload) -> int:
  """The submission's `get_eval_batch_size(variant)` when it defines one, else the workload's."""
  if submission.get_eval_batch_size is None:
    return workload.eval_batch_size
  return submission.get_eval_batch_size(workload.variant_name)


def is_due(context: TrialContext, state: TrialState, now: float) -> bool:
  """Every `eval_period_steps` steps when a step period is set (settings, else the workload's);
  otherwise when `eval_period_time_sec` of wall-clock passed since the last evaluation ended
  (upstream's rule; as there, the first step is followed by an evaluation)."""
  period_steps = context.settings.eval_period_steps or context.workload.eval_period_steps
  if period_steps:
    return state.global_step % period_steps == 0
  return (state.last_eval_end is None
          or now - state.last_eval_end >= context.workload.eval_period_time_sec)


def _progress_line(context: TrialContext, state: TrialState, metrics: Dict[str, float],
                   first_on_target: bool) -> str:
  workload = context.workload
  name = workload.target_metric_name
  return (f'{context.log_prefix} step {state.global_step:6d}  time {state.submission_time:8.1f}s  '
          f'train/loss {metrics.get("train/loss", float("nan")):.4f}  '
          f'validation/{name} {metrics.get(f"validation/{name}", float("nan")):.4f}  '
          f'(target {workload.validation_target_value:.4f})'
          + ('  TARGET REACHED' if first_on_target else ''))


def _record_targets(context: TrialContext, state: TrialState, metrics: Dict[str, float]
                    ) -> TrialState:
  """The goals (sticky, as upstream), the first step and time on the validation target, the best
  validation metric; a non-finite metric marks the trial diverged."""
  workload = context.workload
  value = metrics.get(f'validation/{workload.target_metric_name}')
  if value is None or not all(math.isfinite(v) for v in metrics.values()):
    return state._replace(status=results.STATUS_DIVERGED,
                          reason=f'non-finite evaluation metrics at step {state.global_step}')
  better = max if workload.target_metric_higher_is_better else min
  validation = state.validation_goal_reached or workload.has_reached_validation_target(metrics)
  first = validation and state.steps_to_target is None
  return state._replace(
      validation_goal_reached=validation,
      test_goal_reached=state.test_goal_reached or workload.has_reached_test_target(metrics),
      steps_to_target=state.global_step if first else state.steps_to_target,
      seconds_to_target=state.submission_time if first else state.seconds_to_target,
      best_metric=value if state.best_metric is None else better(state.best_metric, value))


def evaluate(context: TrialContext, state: TrialState, model: Model, prepare_rng: jax.Array,
             eval_rng: jax.Array) -> Tuple[TrialState, Model]:
  """`prepare_for_eval` (timed), the budget check, then `eval_model` (untimed), its row, the
  diagnostics, a checkpoint (booked to `checkpoint`), and the row written to the CSV.

  Past the budget there is no evaluation: the trial ends and no target is credited.
  """
  workload, submission, clock = context.workload, context.submission, context.clock
  model = Model(*submission.prepare_for_eval(
      workload, model.params, workload.model_params_types, model.model_state, context.hparams,
      workload.loss_type, model.optimizer_state, list(state.eval_results), state.global_step,
      prepare_rng))
  submission_time = state.submission_time + clock.book('prepare_for_eval')
  state = state._replace(submission_time=submission_time,
                         is_time_remaining=submission_time < context.budget)
  if not state.is_time_remaining:
    return state, model
  metrics = workload.eval_model(eval_batch_size(submission, workload), model.params,
                                model.model_state, eval_rng, workload.data_dir, None,
                                state.global_step)
  state = state._replace(eval_time=state.eval_time + clock.book('evaluation'),
                         last_eval_end=clock.last)
  first_before = state.steps_to_target
  state = _record_targets(context, state, metrics)
  # Upstream's eval_results entries are its CSV rows: the metrics plus the bookkeeping.
  row = dict(metrics, global_step=state.global_step,
             preemption_count=state.preemption_count,
             accumulated_submission_time=state.submission_time, score=state.submission_time,
             accumulated_eval_time=state.eval_time, accumulated_logging_time=state.logging_time,
             total_duration=clock.total())
  state = state._replace(eval_results=state.eval_results + ((state.global_step, row),))
  state = diagnostics.record(context, state, model, at_evaluation=True)
  state = state._replace(logging_time=state.logging_time + clock.book('logging'))
  state = resume.save(context, state, model, csv_row=row)
  context.writer.write(row)
  context.log(_progress_line(context, state, metrics,
                             first_before is None and state.steps_to_target is not None))
  return state._replace(logging_time=state.logging_time + clock.book('logging')), model
