"""From trial summaries to the leaderboard (AlgoPerf's external-tuning conventions).

Per study, the best trial is the one with the least submission time to the validation target; per
workload and submission, the median over studies of the best trials' times, where a study with
no trial on target counts as infinite. Ratios in the rows are to the configured reference
submission (`benchmark.comparison`) when it ran on the workload, else to the best one.
Everything here is a pure function of trial summaries (`benchmark.load_results`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from benchmark.results import STATUS_DIVERGED, STATUS_FAILED

INF = float('inf')

Summary = Dict[str, Any]


def trial_name(summary: Summary) -> str:
  """The trial's folder name, e.g. `trial_3`."""
  return os.path.basename(summary.get('trial_dir', ''))


# -- Best trials and medians ----------------------------------------------------------------


def best_trial(trials: Iterable[Summary]) -> Optional[Summary]:
  """The trial with the least seconds to target (then steps); None when none reached it."""
  reached = [t for t in trials if t.get('seconds_to_target') is not None]
  if not reached:
    return None
  return min(reached, key=lambda t: (t['seconds_to_target'], t['steps_to_target']))


def representative_trial(trials: List[Summary]) -> Optional[Summary]:
  """The best trial; without one, the trial with the best finite final validation metric."""
  best = best_trial(trials)
  if best is not None:
    return best
  finite = [t for t in trials if t.get('final_validation_metric') is not None
            and math.isfinite(t['final_validation_metric'])]
  if not finite:
    return None
  sign = 1.0 if finite[0].get('target_metric_higher_is_better', True) else -1.0
  return max(finite, key=lambda t: sign * t['final_validation_metric'])


def median(values: List[float]) -> float:
  """The median, with `inf` entries ordered last (a study that missed the target)."""
  if not values:
    return INF
  ordered = sorted(values)
  mid = len(ordered) // 2
  if len(ordered) % 2:
    return ordered[mid]
  low, high = ordered[mid - 1], ordered[mid]
  return INF if math.isinf(high) else 0.5 * (low + high)


def _none_if_inf(value: float) -> Optional[float]:
  return None if math.isinf(value) else value


def self_tuning_seconds(trials: List[Summary]) -> Optional[float]:
  """Median over all trials of seconds to target, a missed target counting as the trial's budget.

  This is the self-tuning view of the runs (every trial is a run of the algorithm, none is picked):
  a trial that missed the target, diverged or failed costs its `max_runtime_sec` (infinite when the
  summary has none). None when that median is infinite.
  """
  def cost(t: Summary) -> float:
    if t.get('seconds_to_target') is not None:
      return t['seconds_to_target']
    budget = t.get('max_runtime_sec')
    return INF if budget is None else float(budget)
  return _none_if_inf(median([cost(t) for t in trials]))

# -- Leaderboard ------------------------------------------------------------------------------


def group_trials(summaries: List[Summary]) -> Dict[Tuple[str, str], Dict[int, List[Summary]]]:
  """{(workload variant, submission): {study: [trial summaries]}}."""
  groups: Dict[Tuple[str, str], Dict[int, List[Summary]]] = {}
  for s in summaries:
    key = (s['workload_variant'], s['submission'])
    groups.setdefault(key, {}).setdefault(s['study'], []).append(s)
  return groups


def _trial_ref(trial: Summary) -> Dict[str, Any]:
  return {'study': trial['study'], 'trial': trial_name(trial)}


def _leaderboard_row(workload: str, submission: str,
                     studies: Dict[int, List[Summary]]) -> Dict[str, Any]:
  best_per_study = {s: best_trial(trials) for s, trials in sorted(studies.items())}
  all_trials = [t for _, trials in sorted(studies.items()) for t in trials]
  representative = representative_trial(all_trials)
  return {
      'workload': workload,
      'submission': submission,
      'steps_to_target': _none_if_inf(
          median([b['steps_to_target'] if b else INF for b in best_per_study.values()])),
      'seconds_to_target': _none_if_inf(
          median([b['seconds_to_target'] if b else INF for b in best_per_study.values()])),
      'final_validation_metric': (representative or {}).get('final_validation_metric'),
      'trials': len(all_trials),
      'trials_reached': sum(t.get('steps_to_target') is not None for t in all_trials),
      'studies': len(studies),
      'studies_reached': sum(b is not None for b in best_per_study.values()),
      'diverged': sum(t.get('status') == STATUS_DIVERGED for t in all_trials),
      'failed': sum(t.get('status') == STATUS_FAILED for t in all_trials),
      'degraded': sum(bool(t.get('degraded')) for t in all_trials),
      'degraded_trials': [
          dict(_trial_ref(t), layers=t.get('degraded_layers', []),
               rejected_updates=t.get('rejected_updates'))
          for t in all_trials if t.get('degraded')],
      'diverged_or_failed_trials': [
          dict(_trial_ref(t), status=t['status'], reason=t.get('reason', ''),
               global_steps=t.get('global_steps'))
          for t in all_trials if t.get('status') in (STATUS_DIVERGED, STATUS_FAILED)],
      'best_trials': [
          dict(_trial_ref(b), steps_to_target=b['steps_to_target'],
               seconds_to_target=b['seconds_to_target'], hyperparameters=b.get('hyperparameters'))
          for b in best_per_study.values() if b is not None],
      'self_tuning_seconds_to_target': self_tuning_seconds(all_trials),
      'target_metric_name': all_trials[0].get('target_metric_name'),
      'validation_target_value': all_trials[0].get('validation_target_value'),
  }


def reference_submission(rows: List[Dict[str, Any]], reference: Optional[str]) -> Optional[str]:
  """The submission that the rows of one workload are compared with.

  `reference` when it ran on the workload; otherwise the submission with the least median
  seconds (then steps) to target; None when no submission reached the target.
  """
  if reference in [r['submission'] for r in rows]:
    return reference
  reached = [r for r in rows if r['seconds_to_target'] is not None]
  if not reached:
    return None
  return min(reached, key=lambda r: (r['seconds_to_target'], r['steps_to_target']))['submission']


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
  """value / reference; None when either is None or the reference is not positive."""
  if value is None or reference is None or reference <= 0:
    return None
  return value / reference


def add_reference_ratios(rows: List[Dict[str, Any]], reference: Optional[str]
                         ) -> List[Dict[str, Any]]:
  """The rows with `reference_submission`, `steps_ratio_to_reference` and
  `seconds_ratio_to_reference` (None when either side missed the target) added."""
  by_workload: Dict[str, List[Dict[str, Any]]] = {}
  for r in rows:
    by_workload.setdefault(r['workload'], []).append(r)
  references = {w: reference_submission(rs, reference) for w, rs in by_workload.items()}
  result = []
  for r in rows:
    name = references[r['workload']]
    ref = next((x for x in by_workload[r['workload']] if x['submission'] == name), {})
    result.append(dict(
        r, reference_submission=name,
        steps_ratio_to_reference=ratio(r['steps_to_target'], ref.get('steps_to_target')),
        seconds_ratio_to_reference=ratio(r['seconds_to_target'], ref.get('seconds_to_target'))))
  return result


def leaderboard_rows(summaries: List[Summary], reference: Optional[str] = None
                     ) -> List[Dict[str, Any]]:
  """One row per workload variant and submission, sorted by both; ratios to `reference`
  (`reference_submission`).

  Keys: workload, submission, steps_to_target and seconds_to_target (median over studies of the
  best trial's; None when the median study missed the target), final_validation_metric (of the
  representative trial), trials (run), trials_reached, studies, studies_reached, diverged and
  failed (counts), diverged_or_failed_trials (study, trial, status, reason, global_steps),
  degraded (count of trials whose curvature stayed rejected too long), degraded_trials (study,
  trial, layers, rejected_updates),
  best_trials (per study that reached the target: study, trial, steps and seconds to target,
  hyperparameters), self_tuning_seconds_to_target, target_metric_name, validation_target_value,
  reference_submission, steps_ratio_to_reference, seconds_ratio_to_reference.
  """
  rows = [_leaderboard_row(workload, submission, studies)
          for (workload, submission), studies in sorted(group_trials(summaries).items())]
  return add_reference_ratios(rows, reference)
