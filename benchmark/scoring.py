"""From trial summaries to time-to-target, performance profiles and scores (AlgoPerf conventions).

External-tuning ruleset: per study, the best trial is the one with the least submission time to
the validation target; per workload and submission, the median over studies of the best trials'
times, where a study with no trial on target counts as infinite. Performance profiles and the
score follow AlgoPerf (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms",
section 4.5): the performance ratio of a submission on a workload is its time over the best
submission's time, infinite when the target was missed or the ratio exceeds `MAX_PERFORMANCE_RATIO`;
rho(tau) is the fraction of workloads with ratio <= tau; the score is the integral of rho over
[1, tau_max] divided by tau_max - 1.

Everything here is a pure function of trial summaries (the dicts of `trial_summary.json`), except
`load_trial_summaries`, which reads them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from benchmark.runner import STATUS_DIVERGED, STATUS_FAILED, SUMMARY_FILE
from contract.errors import BenchmarkError

INF = float('inf')
MAX_PERFORMANCE_RATIO = 4.0  # AlgoPerf's tau_max: a ratio above it counts as infinite.
REFERENCE_SUBMISSION = 'nesterov'  # Speed-ups are reported against it when it ran.
EXPAND_SUBMISSION = 'kfac_expand'
REDUCE_SUBMISSION = 'kfac_reduce'
TIME_TO_TARGET_KEYS = {'seconds': 'seconds_to_target', 'steps': 'steps_to_target'}

Summary = Dict[str, Any]
Ratios = Dict[str, Dict[str, float]]  # {workload: {submission: performance ratio}}


def load_trial_summaries(experiment_dir: str) -> List[Summary]:
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


def reference_submission(rows: List[Dict[str, Any]]) -> Optional[str]:
  """The submission that the rows of one workload are compared with.

  `REFERENCE_SUBMISSION` when it ran on the workload; otherwise the submission with the least
  median seconds (then steps) to target; None when no submission reached the target.
  """
  names = [r['submission'] for r in rows]
  if REFERENCE_SUBMISSION in names:
    return REFERENCE_SUBMISSION
  reached = [r for r in rows if r['seconds_to_target'] is not None]
  if not reached:
    return None
  return min(reached, key=lambda r: (r['seconds_to_target'], r['steps_to_target']))['submission']


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
  if value is None or reference is None or reference <= 0:
    return None
  return value / reference


def add_reference_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The rows with `reference_submission`, `steps_ratio_to_reference` and
  `seconds_ratio_to_reference` (None when either side missed the target) added."""
  by_workload: Dict[str, List[Dict[str, Any]]] = {}
  for r in rows:
    by_workload.setdefault(r['workload'], []).append(r)
  references = {w: reference_submission(rs) for w, rs in by_workload.items()}
  result = []
  for r in rows:
    name = references[r['workload']]
    ref = next((x for x in by_workload[r['workload']] if x['submission'] == name), {})
    result.append(dict(
        r, reference_submission=name,
        steps_ratio_to_reference=_ratio(r['steps_to_target'], ref.get('steps_to_target')),
        seconds_ratio_to_reference=_ratio(r['seconds_to_target'], ref.get('seconds_to_target'))))
  return result


def leaderboard_rows(summaries: List[Summary]) -> List[Dict[str, Any]]:
  """One row per workload variant and submission, sorted by both.

  Keys: workload, submission, steps_to_target and seconds_to_target (median over studies of the
  best trial's; None when the median study missed the target), final_validation_metric (of the
  representative trial), trials (run), trials_reached, studies, studies_reached, diverged and
  failed (counts), diverged_or_failed_trials (study, trial, status, reason, global_steps),
  best_trials (per study that reached the target: study, trial, steps and seconds to target,
  hyperparameters), self_tuning_seconds_to_target, target_metric_name, validation_target_value,
  reference_submission, steps_ratio_to_reference, seconds_ratio_to_reference.
  """
  rows = [_leaderboard_row(workload, submission, studies)
          for (workload, submission), studies in sorted(group_trials(summaries).items())]
  return add_reference_ratios(rows)


# -- Performance profiles and score --------------------------------------------------------


def times_to_target(rows: List[Dict[str, Any]], key: str) -> Dict[str, Dict[str, float]]:
  """{workload: {submission: row[key]}}, a missed target (None) as infinity."""
  times: Dict[str, Dict[str, float]] = {}
  for r in rows:
    value = r[key]
    times.setdefault(r['workload'], {})[r['submission']] = INF if value is None else float(value)
  return times


def _ratio_to_best(time: float, best: float, max_ratio: float) -> float:
  if math.isinf(time):
    return INF
  if time == best:
    return 1.0
  ratio = time / best if best > 0 else INF
  return ratio if ratio <= max_ratio else INF


def performance_ratios(times: Dict[str, Dict[str, float]],
                       max_ratio: float = MAX_PERFORMANCE_RATIO) -> Ratios:
  """r[workload][submission] = time / best time on the workload.

  Infinite when the submission missed the target, when the ratio exceeds `max_ratio`, or when the
  submission did not run on the workload (every submission is ranked on every workload, as in
  AlgoPerf).
  """
  submissions = sorted({s for per_submission in times.values() for s in per_submission})
  ratios: Ratios = {}
  for workload, per_submission in sorted(times.items()):
    best = min(per_submission.values(), default=INF)
    ratios[workload] = {s: _ratio_to_best(per_submission.get(s, INF), best, max_ratio)
                        for s in submissions}
  return ratios


def _submissions(ratios: Ratios) -> List[str]:
  return sorted({s for per_submission in ratios.values() for s in per_submission})


def profile_taus(ratios: Ratios, max_ratio: float = MAX_PERFORMANCE_RATIO) -> List[float]:
  """The points where some rho(tau) can step: 1, every finite ratio and `max_ratio`, sorted."""
  finite = {r for per_submission in ratios.values() for r in per_submission.values()
            if math.isfinite(r)}
  return sorted(finite | {1.0, max_ratio})


def performance_profile(ratios: Ratios, taus: List[float]) -> Dict[str, List[float]]:
  """rho_s(tau) = fraction of workloads with r[workload][s] <= tau, for each tau in `taus`."""
  num_workloads = len(ratios)
  return {s: [sum(per[s] <= tau for per in ratios.values()) / num_workloads for tau in taus]
          for s in _submissions(ratios)}


def performance_scores(ratios: Ratios, max_ratio: float = MAX_PERFORMANCE_RATIO
                       ) -> Dict[str, float]:
  """The integral of rho_s over [1, max_ratio], divided by max_ratio - 1 (exact).

  rho_s is a step function that rises by 1/W at each finite ratio, so its integral is
  (1/W) sum over workloads of (max_ratio - r).
  """
  num_workloads = len(ratios)
  return {s: sum(max_ratio - per[s] for per in ratios.values() if math.isfinite(per[s]))
          / (num_workloads * (max_ratio - 1.0))
          for s in _submissions(ratios)}


# -- Time split --------------------------------------------------------------------------------


def _bucket_group(bucket: str) -> str:
  return bucket.split('/', 1)[0]


def _trials_with_bucket(trials: List[Summary], bucket: str) -> int:
  return sum(bucket in t.get('time_split', {}) for t in trials)


def time_breakdown(trials: List[Summary]) -> Dict[str, Any]:
  """Where the time of some trials went, pooled over them.

  Returns:
    trials, global_steps, total_seconds, submission_seconds (sums over the trials);
    bucket_seconds: {bucket group ('steps', 'compile_and_first_step', 'data_selection',
      'optimizer_init', 'evaluation', ...): seconds};
    phases: {phase: steps, step_seconds (the `steps/<phase>` bucket), compile_seconds (the
      `compile_and_first_step/<phase>` bucket), seconds_per_step (step_seconds over the steps
      after the first; None without any), share_of_submission_time ((step + compile seconds) /
      submission seconds)};
    seconds_per_step: all phases' step seconds over their steps after the first (compilation and
      data selection excluded);
    submission_seconds_per_step: submission seconds / global steps (everything included).
  """
  buckets: Dict[str, float] = {}
  phase_steps: Dict[str, int] = {}
  for t in trials:
    for bucket, seconds in t.get('time_split', {}).items():
      buckets[bucket] = buckets.get(bucket, 0.0) + seconds
    for phase, steps in t.get('steps_per_phase', {}).items():
      phase_steps[phase] = phase_steps.get(phase, 0) + steps
  submission_seconds = sum(t.get('accumulated_submission_time', 0.0) for t in trials)
  global_steps = sum(t.get('global_steps', 0) for t in trials)
  phases = {}
  timed_steps_total = 0
  for phase, steps in sorted(phase_steps.items()):
    step_seconds = buckets.get(f'steps/{phase}', 0.0)
    compile_seconds = buckets.get(f'compile_and_first_step/{phase}', 0.0)
    timed_steps = steps - _trials_with_bucket(trials, f'compile_and_first_step/{phase}')
    timed_steps_total += timed_steps
    phases[phase] = {
        'steps': steps,
        'step_seconds': step_seconds,
        'compile_seconds': compile_seconds,
        'seconds_per_step': step_seconds / timed_steps if timed_steps > 0 else None,
        'share_of_submission_time': _ratio(step_seconds + compile_seconds, submission_seconds),
    }
  bucket_seconds: Dict[str, float] = {}
  for bucket, seconds in buckets.items():
    group = _bucket_group(bucket)
    bucket_seconds[group] = bucket_seconds.get(group, 0.0) + seconds
  return {
      'trials': len(trials),
      'global_steps': global_steps,
      'total_seconds': sum(t.get('total_duration', 0.0) for t in trials),
      'submission_seconds': submission_seconds,
      'bucket_seconds': dict(sorted(bucket_seconds.items())),
      'phases': phases,
      'seconds_per_step': (sum(p['step_seconds'] for p in phases.values()) / timed_steps_total
                           if timed_steps_total > 0 else None),
      'submission_seconds_per_step': _ratio(submission_seconds, global_steps),
  }


def time_breakdowns(summaries: List[Summary]) -> List[Dict[str, Any]]:
  """`time_breakdown` of all trials of each workload variant and submission, with both named."""
  return [dict(workload=workload, submission=submission,
               **time_breakdown([t for _, ts in sorted(studies.items()) for t in ts]))
          for (workload, submission), studies in sorted(group_trials(summaries).items())]


def expand_vs_reduce(rows: List[Dict[str, Any]], breakdowns: List[Dict[str, Any]]
                     ) -> List[Dict[str, Any]]:
  """K-FAC-reduce against K-FAC-expand on each workload where both ran.

  Ratios are reduce / expand: steps and seconds to target (leaderboard medians; None when either
  missed), and the step cost (mean seconds per step after compilation, all trials pooled).
  """
  by_key = {(r['workload'], r['submission']): r for r in rows}
  costs = {(b['workload'], b['submission']): b for b in breakdowns}
  comparisons = []
  for workload in sorted({r['workload'] for r in rows}):
    expand = (workload, EXPAND_SUBMISSION)
    reduce = (workload, REDUCE_SUBMISSION)
    if expand not in by_key or reduce not in by_key:
      continue
    comparisons.append({
        'workload': workload,
        'steps_ratio': _ratio(by_key[reduce]['steps_to_target'],
                              by_key[expand]['steps_to_target']),
        'seconds_ratio': _ratio(by_key[reduce]['seconds_to_target'],
                                by_key[expand]['seconds_to_target']),
        'expand_seconds_per_step': costs[expand]['seconds_per_step'],
        'reduce_seconds_per_step': costs[reduce]['seconds_per_step'],
        'step_cost_ratio': _ratio(costs[reduce]['seconds_per_step'],
                                  costs[expand]['seconds_per_step']),
        'expand_phase_seconds_per_step': {p: v['seconds_per_step']
                                          for p, v in costs[expand]['phases'].items()},
        'reduce_phase_seconds_per_step': {p: v['seconds_per_step']
                                          for p, v in costs[reduce]['phases'].items()},
    })
  return comparisons
