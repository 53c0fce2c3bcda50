"""A running trial saved into a `benchmark.checkpoint.TrialCheckpoint`, and continued from one.

What a checkpoint holds beside the trees: the `TrialState` as JSON (`trial_status`: mappings as
dicts, clock readings as seconds before the checkpoint's clock reading, so that a new process
re-bases them on its own clock), the time split's buckets, the number of batches drawn from the
input queue (replayed on resume) and the preemption count. A run that continues from a
checkpoint adds its own set-up time to the saved buckets; the time between the checkpoint and
the kill is lost (its steps are done, and booked, again).
"""

from __future__ import annotations

import json
import types
from typing import Any, Dict, Optional

from benchmark import results
from benchmark.checkpoint import TrialCheckpoint
from benchmark.clock import Clock
from benchmark.trial_state import Model, TrialState

CLOCK_FIELDS = ('last_eval_end', 'last_checkpoint_end')  # Clock readings: re-based on resume.
MAPPING_FIELDS = ('phase_steps', 'compile_steps', 'rejected_updates',
                  'max_consecutive_rejections')


def json_value(value: Any) -> Any:
  """`value` with numpy/jax scalars as Python numbers, tuples as lists (what JSON gives back)."""
  return json.loads(json.dumps(value, default=results.json_default))


def trial_status(state: TrialState, clock_now: float) -> Dict[str, Any]:
  """The JSON-able fields of `state`, clock readings as seconds before `clock_now`."""
  fields = state._asdict()
  for name in MAPPING_FIELDS:
    fields[name] = dict(fields[name])
  for name in CLOCK_FIELDS:
    fields[name] = None if fields[name] is None else clock_now - fields[name]
  return json_value(fields)


def restored_state(status: Dict[str, Any], clock_now: float) -> TrialState:
  """`trial_status`'s inverse, clock readings re-based on `clock_now`; no phase stepped yet in
  this run (its first steps compile again)."""
  fields = dict(status)
  for name in MAPPING_FIELDS:
    fields[name] = types.MappingProxyType(dict(fields[name]))
  for name in CLOCK_FIELDS:
    fields[name] = None if fields[name] is None else clock_now - fields[name]
  fields['eval_results'] = tuple((int(step), row) for step, row in fields['eval_results'])
  fields['phases_this_run'] = ()
  return TrialState(**fields)


def save(context: Any, state: TrialState, model: Model, csv_row: Optional[Dict[str, Any]] = None
         ) -> TrialState:
  """Checkpoints the trial (`context` is the `evaluation.TrialContext`; nothing when its
  checkpointer is None), booked to the `checkpoint` bucket, outside submission time.

  `csv_row`: the evaluation's measurement row, written to the CSV after this returns (a resume
  from this checkpoint writes it again); None between evaluations.
  """
  if context.checkpointer is None:
    return state
  clock = context.clock
  context.checkpointer.save(TrialCheckpoint(
      params=model.params, optimizer_state=model.optimizer_state, model_state=model.model_state,
      rng=context.rng, global_step=state.global_step,
      batches_drawn=context.input_queue.batches_drawn, time_accounting=dict(clock.buckets),
      preemption_count=state.preemption_count, status=trial_status(state, clock.last),
      csv_rows_before=context.writer.rows,
      csv_row=None if csv_row is None else json_value(csv_row)))
  clock.book('checkpoint')
  return state._replace(last_checkpoint_end=clock.last)


def continue_clock(clock: Clock, saved_buckets: Dict[str, float]) -> None:
  """Adds a checkpoint's buckets to `clock`'s (this run's set-up so far) and moves its start
  back so that `clock.total()` is again the sum of the buckets."""
  for bucket, seconds in saved_buckets.items():
    clock.buckets[bucket] = clock.buckets.get(bucket, 0.0) + seconds
  clock.start = clock.last - sum(clock.buckets.values())


def resumed(checkpoint: TrialCheckpoint, clock: Clock) -> TrialState:
  """The trial state of `checkpoint` on `clock` (its buckets continued), one more preemption."""
  continue_clock(clock, checkpoint.time_accounting)
  state = restored_state(checkpoint.status, clock.last)
  return state._replace(preemption_count=checkpoint.preemption_count + 1,
                        last_checkpoint_end=clock.last)
