"""From trial summaries to time-to-target per workload and submission (AlgoPerf conventions).

Per study, the best trial is the one with the least submission time to the validation target
(external-tuning ruleset); per workload and submission, the median over studies of the best
trials' times, where a study with no trial on target counts as infinite.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from benchmark.runner import SUMMARY_FILE
from benchmark.spec import BenchmarkError

INF = float('inf')


def load_trial_summaries(experiment_dir: str) -> List[Dict[str, Any]]:
  """Every `trial_summary.json` below `experiment_dir`, with its folder and study index added."""
  if not os.path.isdir(experiment_dir):
    raise BenchmarkError(f'experiment directory {experiment_dir!r} does not exist')
  summaries = []
  for root, _, files in os.walk(experiment_dir):
    if SUMMARY_FILE in files:
      with open(os.path.join(root, SUMMARY_FILE)) as f:
        try:
          summary = json.load(f)
        except json.JSONDecodeError as e:
          raise BenchmarkError(f'{os.path.join(root, SUMMARY_FILE)} is not valid JSON: {e}') from e
      summary['trial_dir'] = root
      summary['study'] = _study_of(root)
      summaries.append(summary)
  return sorted(summaries, key=lambda s: s['trial_dir'])


def _study_of(trial_dir: str) -> int:
  study_dir = os.path.basename(os.path.dirname(trial_dir))
  return int(study_dir.split('_', 1)[1]) if study_dir.startswith('study_') else 0


def best_trial(trials: Iterable[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
  """The trial with the least seconds to target (then steps); None when none reached it."""
  reached = [t for t in trials if t.get('seconds_to_target') is not None]
  if not reached:
    return None
  return min(reached, key=lambda t: (t['seconds_to_target'], t['steps_to_target']))


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


def group_trials(summaries: List[Dict[str, Any]]
                 ) -> Dict[Tuple[str, str], Dict[int, List[Dict[str, Any]]]]:
  """{(workload variant, submission): {study: [trial summaries]}}."""
  groups: Dict[Tuple[str, str], Dict[int, List[Dict[str, Any]]]] = {}
  for s in summaries:
    key = (s['workload_variant'], s['submission'])
    groups.setdefault(key, {}).setdefault(s['study'], []).append(s)
  return groups


def _final_metric(trials: List[Dict[str, Any]], best: Optional[Dict[str, Any]]) -> Optional[float]:
  """The best trial's final validation metric; without one, the best final metric of any trial."""
  if best is not None:
    return best.get('final_validation_metric')
  finals = [t['final_validation_metric'] for t in trials
            if t.get('final_validation_metric') is not None
            and math.isfinite(t['final_validation_metric'])]
  if not finals:
    return None
  higher = trials[0].get('target_metric_higher_is_better', True)
  return max(finals) if higher else min(finals)


def leaderboard_rows(summaries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One row per workload variant and submission.

  Keys: workload, submission, steps_to_target and seconds_to_target (median over studies of the
  best trial's; None when the median study missed the target), final_validation_metric,
  trials (run), trials_reached (trials that reached the target), studies, studies_reached,
  diverged (trials), target_metric_name, validation_target_value.
  """
  rows = []
  for (workload, submission), studies in sorted(group_trials(summaries).items()):
    best_per_study = {s: best_trial(trials) for s, trials in studies.items()}
    seconds = median([b['seconds_to_target'] if b else INF for b in best_per_study.values()])
    steps = median([b['steps_to_target'] if b else INF for b in best_per_study.values()])
    all_trials = [t for trials in studies.values() for t in trials]
    overall_best = best_trial(all_trials)
    rows.append({
        'workload': workload,
        'submission': submission,
        'steps_to_target': None if math.isinf(steps) else steps,
        'seconds_to_target': None if math.isinf(seconds) else seconds,
        'final_validation_metric': _final_metric(all_trials, overall_best),
        'trials': len(all_trials),
        'trials_reached': sum(t.get('steps_to_target') is not None for t in all_trials),
        'studies': len(studies),
        'studies_reached': sum(b is not None for b in best_per_study.values()),
        'diverged': sum(t.get('status') == 'diverged' for t in all_trials),
        'target_metric_name': all_trials[0].get('target_metric_name'),
        'validation_target_value': all_trials[0].get('validation_target_value'),
    })
  return rows
