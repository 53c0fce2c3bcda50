"""Every number of an experiment's report, gathered into one JSON-safe object, and its figures.

The numbers come from `benchmark.scoring` (leaderboard), `benchmark.profiles` (profiles and
scores), `benchmark.time_split` (time breakdown, pairwise comparisons); the figures from
`benchmark.plots`. Non-finite values become None so that the object is strict JSON.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional

import numpy as np

from benchmark import load_results, profiles, results, scoring, time_split
from benchmark.comparison import Comparison, load_comparison

MEASURES = ('seconds', 'steps')
SCORE_METHODS = ('ours', 'upstream')
PROFILES_IMAGE = 'performance_profiles.png'
ENVIRONMENT_FIELDS = ('python', 'jax', 'jaxlib', 'flax', 'optax', 'backend', 'device_kind',
                      'device_count', 'processor', 'cpu_count', 'platform',
                      'jax_default_matmul_precision', 'jax_enable_x64', 'xla_flags', 'git_commit',
                      'git_dirty')


def environment_summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
  """The distinct values of each environment field over the trials' `meta_data_<p>.json`."""
  environment = {}
  for field in ENVIRONMENT_FIELDS:
    values = []
    for run in runs:
      if field in run and run[field] not in values:
        values.append(run[field])
    environment[field] = values
  return {'num_runs': len(runs), 'environment': environment}


def performance_profiles(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
  """For each measure (seconds, steps): times, performance ratios, taus and rho per submission."""
  result: Dict[str, Any] = {'max_ratio': profiles.MAX_PERFORMANCE_RATIO}
  for measure in MEASURES:
    times = profiles.times_to_target(rows, profiles.TIME_TO_TARGET_KEYS[measure])
    ratios = profiles.performance_ratios(times)
    taus = profiles.profile_taus(ratios)
    result[measure] = {'times': times, 'ratios': ratios, 'taus': taus,
                       'rho': profiles.performance_profile(ratios, taus)}
  return result


def _curve(trial: load_results.Summary, time_column: str) -> Optional[profiles.Curve]:
  """(validation target metric values, `time_column` values) of the trial's evaluations."""
  path = os.path.join(trial['trial_dir'], results.MEASUREMENTS_FILE)
  metric = f'validation/{trial.get("target_metric_name")}'
  if not os.path.isfile(path):
    return None
  rows = [r for r in results.read_measurements(path) if isinstance(r.get(metric), float)]
  return [r[metric] for r in rows], [r.get(time_column, r.get('accumulated_submission_time'))
                                     for r in rows]


def upstream_times(summaries: List[load_results.Summary]) -> Dict[str, Dict[str, float]]:
  """{workload: {submission: median over studies of `profiles.upstream_study_time`}} from the
  trials' measurement files, workloads named as upstream's scoring names them."""
  times: Dict[str, Dict[str, float]] = {}
  for (workload, submission), studies in scoring.group_trials(summaries).items():
    per_study = []
    for trials in studies.values():
      first = trials[0]
      curves = [c for c in (_curve(t, 'score') for t in trials) if c is not None]
      target = first.get('validation_target_value')
      per_study.append(profiles.INF if target is None else profiles.upstream_study_time(
          curves, target, load_results.higher_is_better(first.get('target_metric_name', ''))))
    times.setdefault(workload, {})[submission] = float(np.median(per_study))
  return times


def scores(rows: List[Dict[str, Any]], profile: Dict[str, Any],
           summaries: List[load_results.Summary], method: str) -> Dict[str, Any]:
  """{'method', 'seconds' (and 'steps' for ours): {submission: score}, 'workloads' counted}."""
  if method == 'upstream':
    times = upstream_times(summaries)
    counted = sorted(w for w in times if w in profiles.UPSTREAM_BASE_WORKLOADS)
    return {'method': method, 'seconds': profiles.upstream_scores(times), 'workloads': counted}
  result: Dict[str, Any] = {'method': method, 'workloads': sorted({r['workload'] for r in rows})}
  for measure in MEASURES:
    result[measure] = profiles.performance_scores(profile[measure]['ratios'])
  return result


def json_safe(value: Any) -> Any:
  """`value` with non-finite floats as None and tuples as lists (strict JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def build_report(experiment_dir: str, summaries: Optional[List[load_results.Summary]] = None,
                 comparison: Optional[Comparison] = None, score_method: str = 'ours'
                 ) -> Dict[str, Any]:
  """Every number of the report, JSON-safe (None for a missed target or an infinite ratio).

  Keys: rows (`scoring.leaderboard_rows`, ratios to the comparison's reference),
  performance_profiles ({max_ratio, seconds, steps}, each {times, ratios, taus, rho}), scores
  (`scores`), pairs (`time_split.pair_comparison` per configured pair), time_breakdown
  (`time_split.time_breakdowns`), metadata (`environment_summary`).
  """
  comparison = comparison or load_comparison()
  if summaries is None:
    summaries = load_results.load_trial_summaries(experiment_dir)
  rows = scoring.leaderboard_rows(summaries, comparison.reference)
  profile = performance_profiles(rows)
  breakdowns = time_split.time_breakdowns(summaries)
  return json_safe({
      'rows': rows,
      'performance_profiles': profile,
      'scores': scores(rows, profile, summaries, score_method),
      'pairs': [time_split.pair_comparison(rows, breakdowns, p) for p in comparison.pairs],
      'time_breakdown': breakdowns,
      'metadata': environment_summary(load_results.load_environments(experiment_dir)),
  })


def curves_image(workload: str) -> str:
  return 'validation_' + re.sub(r'[^A-Za-z0-9_.-]', '_', workload) + '.png'


def plot_images(report: Dict[str, Any], summaries: List[load_results.Summary]
                ) -> Dict[str, bytes]:
  """{file name: PNG bytes}: the performance profiles and one validation figure per workload.

  Each submission's line is its representative trial: the best trial, or without one the trial
  with the best final validation metric.
  """
  from benchmark import plots
  profile = report['performance_profiles']
  images = {PROFILES_IMAGE: plots.performance_profiles_png(
      {m: profile[m]['taus'] for m in MEASURES}, {m: profile[m]['rho'] for m in MEASURES},
      profile['max_ratio'])}
  groups = scoring.group_trials(summaries)
  for workload in sorted({r['workload'] for r in report['rows']}):
    rows = [r for r in report['rows'] if r['workload'] == workload]
    curves = {}
    for row in rows:
      trial = scoring.representative_trial(
          [t for ts in groups[(workload, row['submission'])].values() for t in ts])
      curve = _curve(trial, 'global_step') if trial else None
      seconds = _curve(trial, 'accumulated_submission_time') if trial else None
      if curve and curve[0]:
        label = f'{row["submission"]} (study {trial["study"]} {scoring.trial_name(trial)})'
        curves[label] = {'steps': curve[1], 'seconds': seconds[1], 'values': curve[0]}
    images[curves_image(workload)] = plots.validation_curves_png(
        workload, curves, rows[0]['target_metric_name'], rows[0]['validation_target_value'])
  return images
