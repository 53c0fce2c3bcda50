"""What the runner records of a submission's `diagnostics(optimizer_state)` (docs/contract.md):
the curvature report, written once into the trial's folder and summarised in the log; the
rejected (non-finite) curvature updates per layer, logged at every evaluation and stored in the
trial summary; the most consecutive rejections seen per layer, from which a trial is marked
`degraded` (`TrialState.degraded_layers`).

Consecutive rejections are sampled when the runner asks (after a run's first step and at every
evaluation): a run of rejections that ends between two evaluations is seen only when it lasts
until one.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Dict, List, Mapping

from benchmark import hosts, results
from benchmark.trial_state import Model, TrialState


def report_summary(rows: List[Mapping[str, Any]]) -> str:
  """One line about a curvature report's rows: `'12 parameters: 8 preconditioned (eigh 6,
  diagonal 2), 4 passed through, 1 with a fallback'`."""
  blocks = collections.Counter(row['block'] for row in rows if row['block'] != 'none')
  covered = sum(blocks.values())
  kinds = ', '.join(f'{kind} {count}' for kind, count in sorted(blocks.items()))
  fallbacks = sum(bool(row.get('fallback')) and row['block'] != 'none' for row in rows)
  return (f'{len(rows)} parameters: {covered} preconditioned ({kinds or "none"}), '
          f'{len(rows) - covered} passed through, {fallbacks} with a fallback')


def _write_report(path: str, text: str) -> None:
  if not hosts.is_writer():  # Several processes: process 0 writes.
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text.rstrip('\n') + '\n')
  os.replace(tmp, path)


def _counts(found: Dict[str, Any], key: str) -> Dict[str, int]:
  return {layer: int(count) for layer, count in found.get(key, {}).items()}


def record(context: Any, state: TrialState, model: Model, at_evaluation: bool) -> TrialState:
  """Asks the submission for its diagnostics (`context` is the `evaluation.TrialContext`):
  writes the curvature report when there is one and it is not yet written, keeps the rejection
  counts, and at an evaluation logs them. Returns the state with the counts."""
  found = context.submission.diagnostics(model.optimizer_state)
  path = os.path.join(context.trial_dir, results.CURVATURE_REPORT_FILE)
  if found.get('curvature_report') and not os.path.exists(path):
    _write_report(path, found['curvature_report'])
    rows = found.get('curvature_report_rows')
    context.log(f'{context.log_prefix} curvature report'
                + (f': {report_summary(rows)}' if rows is not None else '') + f'; in {path}')
  rejected = _counts(found, 'rejected_updates')
  most = dict(state.max_consecutive_rejections)
  for layer, count in _counts(found, 'consecutive_rejected_updates').items():
    most[layer] = max(most.get(layer, 0), count)
  state = state._replace(rejected_updates=rejected or state.rejected_updates,
                         max_consecutive_rejections=most)
  if at_evaluation and rejected:
    limit = context.settings.max_consecutive_rejections
    layers = [f'{layer} {count}' for layer, count in sorted(rejected.items()) if count]
    degraded = state.degraded_layers(limit)
    context.log(f'{context.log_prefix} step {state.global_step:6d}  rejected curvature updates '
                f'{sum(rejected.values())}' + (f' ({", ".join(layers)})' if layers else '')
                + (f'  DEGRADED: more than {limit} consecutive rejections in '
                   f'{", ".join(degraded)}' if degraded else ''))
  return state
