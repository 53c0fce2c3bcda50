"""The bookkeeping of one trial (`TrialState`), what the submission updates (`Model`), and the
trial summary written to `trial_summary.json`."""

from __future__ import annotations

import types
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from benchmark import results


class Model(NamedTuple):
  """What the submission updates each step."""
  optimizer_state: Any
  params: Any
  model_state: Any


class TrialState(NamedTuple):
  """Everything the loop knows about a trial, replaced (never mutated) step by step.

  Times are seconds. `last_eval_end` and `last_checkpoint_end` are clock readings
  (`time.perf_counter`) at the end of the last evaluation and checkpoint, None before the first.
  `eval_results` is upstream's list of `(global_step, metrics)`, oldest first. `phase_steps`
  counts steps per phase, `compile_steps` the first steps of a phase in a run of the process
  (with compilation: one per phase and run, so one more after each resume), `phases_this_run`
  the phases this process has stepped. `rejected_updates` is the submission's count of
  rejected (non-finite) curvature updates per layer at the last evaluation,
  `max_consecutive_rejections` the most consecutive rejections seen per layer (`diagnostics`).
  """
  global_step: int = 0
  submission_time: float = 0.0
  eval_time: float = 0.0
  logging_time: float = 0.0
  last_eval_end: Optional[float] = None
  eval_results: Tuple[Tuple[int, Dict[str, float]], ...] = ()
  validation_goal_reached: bool = False
  test_goal_reached: bool = False
  is_time_remaining: bool = True
  training_complete: bool = False  # The submission raised TrainingCompleteError.
  max_steps_reached: bool = False
  steps_to_target: Optional[int] = None
  seconds_to_target: Optional[float] = None
  best_metric: Optional[float] = None
  phase_steps: Mapping[str, int] = types.MappingProxyType({})
  compile_steps: Mapping[str, int] = types.MappingProxyType({})
  phases_this_run: Tuple[str, ...] = ()
  last_checkpoint_end: Optional[float] = None
  preemption_count: int = 0
  rejected_updates: Mapping[str, int] = types.MappingProxyType({})
  max_consecutive_rejections: Mapping[str, int] = types.MappingProxyType({})
  status: str = results.STATUS_INTERRUPTED  # Until the loop ends.
  reason: str = ''

  @property
  def goals_reached(self) -> bool:
    return self.validation_goal_reached and self.test_goal_reached

  def degraded_layers(self, max_consecutive: int) -> List[str]:
    """The layers whose curvature stayed rejected for more than `max_consecutive` updates."""
    return sorted(k for k, v in self.max_consecutive_rejections.items() if v > max_consecutive)

  @property
  def last_metrics(self) -> Dict[str, float]:
    return self.eval_results[-1][1] if self.eval_results else {}

  def should_stop(self, stop_on_target: bool) -> bool:
    """Upstream's loop condition, plus our step cap and divergence."""
    return (not self.is_time_remaining or self.training_complete or self.max_steps_reached
            or self.status == results.STATUS_DIVERGED or (stop_on_target and self.goals_reached))

  def final_status(self) -> str:
    """The status once the loop has ended without an exception."""
    if self.status == results.STATUS_DIVERGED:
      return self.status
    if self.training_complete:
      return results.STATUS_COMPLETE
    if self.steps_to_target is not None:
      return results.STATUS_TARGET_REACHED
    return results.STATUS_BUDGET_EXHAUSTED

  def train_state_view(self, last_step_end_time: float) -> Mapping[str, Any]:
    """The read-only `train_state` upstream passes to an `update_params` that asks for it."""
    return types.MappingProxyType({
        'validation_goal_reached': self.validation_goal_reached,
        'test_goal_reached': self.test_goal_reached,
        'is_time_remaining': self.is_time_remaining,
        'last_eval_time': self.last_eval_end or 0.0,
        'training_complete': self.training_complete,
        'accumulated_submission_time': self.submission_time,
        'accumulated_eval_time': self.eval_time,
        'accumulated_logging_time': self.logging_time,
        'last_step_end_time': last_step_end_time,
    })


def _reason(state: TrialState, budget: float, max_global_steps: Optional[int]) -> str:
  if state.reason:
    return state.reason
  if state.training_complete:
    return 'the submission raised TrainingCompleteError'
  if state.goals_reached:
    return 'validation and test targets reached'
  if not state.is_time_remaining:
    return f'max_runtime_sec={budget}'
  if state.max_steps_reached:
    return f'max_global_steps={max_global_steps}'
  return ''


def summary(state: TrialState, context: Any, hyperparameters: Optional[Dict[str, Any]]
            ) -> Dict[str, Any]:
  """The trial summary (`trial_summary.json`); `context` is the `evaluation.TrialContext`."""
  workload, settings = context.workload, context.settings
  last = state.last_metrics
  degraded = state.degraded_layers(settings.max_consecutive_rejections)
  return {
      'workload': workload.workload_name,
      'workload_variant': workload.variant_name,
      'config': workload.config_name,
      'submission': context.submission.name,
      'hyperparameters': hyperparameters,
      'rng_seed': settings.rng_seed,
      'status': state.status,
      'reason': _reason(state, context.budget, settings.max_global_steps),
      'global_steps': state.global_step,
      'num_evals': len(state.eval_results),
      'target_metric_name': workload.target_metric_name,
      'validation_target_value': workload.validation_target_value,
      'test_target_value': workload.test_target_value,
      'target_metric_higher_is_better': workload.target_metric_higher_is_better,
      'validation_goal_reached': state.validation_goal_reached,
      'test_goal_reached': state.test_goal_reached,
      'steps_to_target': state.steps_to_target,
      'seconds_to_target': state.seconds_to_target,
      'final_validation_metric': last.get(f'validation/{workload.target_metric_name}'),
      'best_validation_metric': state.best_metric,
      'final_metrics': last,
      'accumulated_submission_time': state.submission_time,
      'accumulated_eval_time': state.eval_time,
      'accumulated_logging_time': state.logging_time,
      'total_duration': context.clock.total(),
      'time_split': dict(context.clock.buckets),
      'steps_per_phase': dict(state.phase_steps),
      'compile_steps_per_phase': dict(state.compile_steps),
      'preemption_count': state.preemption_count,
      'rejected_updates': sum(state.rejected_updates.values()),
      'rejected_updates_per_layer': dict(state.rejected_updates),
      'max_consecutive_rejections_per_layer': dict(state.max_consecutive_rejections),
      'max_consecutive_rejections_allowed': settings.max_consecutive_rejections,
      'degraded': bool(degraded),
      'degraded_layers': degraded,
      'max_runtime_sec': context.budget,
      'max_global_steps': settings.max_global_steps,
  }
