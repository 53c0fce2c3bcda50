"""Where the time of trials went (the `time_split` buckets), and pairwise comparisons of two
submissions (`benchmark.comparison`: e.g. K-FAC-reduce against K-FAC-expand)."""

from __future__ import annotations

from typing import Any, Dict, List

from benchmark.comparison import Pair
from benchmark.scoring import Summary, group_trials, ratio


def _bucket_group(bucket: str) -> str:
  return bucket.split('/', 1)[0]


def _compile_steps(trials: List[Summary], phase: str) -> int:
  """The first steps (with compilation) of `phase` over the trials: one per run of the process
  (`compile_steps_per_phase`; a resumed trial compiles again), one per trial whose summary does
  not say (older summaries: one run each)."""
  bucket = f'compile_and_first_step/{phase}'
  return sum(t['compile_steps_per_phase'].get(phase, 0) if 'compile_steps_per_phase' in t
             else bucket in t.get('time_split', {}) for t in trials)


def time_breakdown(trials: List[Summary]) -> Dict[str, Any]:
  """Where the time of some trials went, pooled over them.

  Returns:
    trials, global_steps, total_seconds, submission_seconds (sums over the trials);
    bucket_seconds: {bucket group ('steps', 'compile_and_first_step', 'data_selection',
      'optimizer_init', 'evaluation', 'checkpoint' (saving checkpoints), 'resume' (restoring one
      and replaying the input queue), ...): seconds};
    phases: {phase: steps, step_seconds (the `steps/<phase>` bucket), compile_seconds (the
      `compile_and_first_step/<phase>` bucket), seconds_per_step (step_seconds over the steps
      after each run's first; None without any), share_of_submission_time ((step + compile
      seconds) / submission seconds)};
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
    timed_steps = steps - _compile_steps(trials, phase)
    timed_steps_total += timed_steps
    phases[phase] = {
        'steps': steps,
        'step_seconds': step_seconds,
        'compile_seconds': compile_seconds,
        'seconds_per_step': step_seconds / timed_steps if timed_steps > 0 else None,
        'share_of_submission_time': ratio(step_seconds + compile_seconds, submission_seconds),
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
      'submission_seconds_per_step': ratio(submission_seconds, global_steps),
  }


def time_breakdowns(summaries: List[Summary]) -> List[Dict[str, Any]]:
  """`time_breakdown` of all trials of each workload variant and submission, with both named."""
  return [dict(workload=workload, submission=submission,
               **time_breakdown([t for _, ts in sorted(studies.items()) for t in ts]))
          for (workload, submission), studies in sorted(group_trials(summaries).items())]


def pair_comparison(rows: List[Dict[str, Any]], breakdowns: List[Dict[str, Any]], pair: Pair
                    ) -> Dict[str, Any]:
  """`pair.candidate` against `pair.baseline` on each workload where both ran.

  Ratios are candidate / baseline: steps and seconds to target (leaderboard medians; None when
  either missed), and the step cost (mean seconds per step after compilation, all trials pooled).

  Returns:
    {title, baseline, candidate, workloads: [{workload, steps_ratio, seconds_ratio,
    baseline_seconds_per_step, candidate_seconds_per_step, step_cost_ratio,
    baseline_phase_seconds_per_step, candidate_phase_seconds_per_step}]}.
  """
  by_key = {(r['workload'], r['submission']): r for r in rows}
  costs = {(b['workload'], b['submission']): b for b in breakdowns}
  per_workload = []
  for workload in sorted({r['workload'] for r in rows}):
    base, cand = (workload, pair.baseline), (workload, pair.candidate)
    if base not in by_key or cand not in by_key:
      continue
    entry = {'workload': workload}
    for key in ('steps', 'seconds'):
      entry[f'{key}_ratio'] = ratio(by_key[cand][f'{key}_to_target'],
                                    by_key[base][f'{key}_to_target'])
    for role, key in (('baseline', base), ('candidate', cand)):
      entry[f'{role}_seconds_per_step'] = costs[key]['seconds_per_step']
      entry[f'{role}_phase_seconds_per_step'] = {p: v['seconds_per_step']
                                                 for p, v in costs[key]['phases'].items()}
    entry['step_cost_ratio'] = ratio(costs[cand]['seconds_per_step'],
                                     costs[base]['seconds_per_step'])
    per_workload.append(entry)
  return {'title': pair.title, 'baseline': pair.baseline, 'candidate': pair.candidate,
          'workloads': per_workload}
