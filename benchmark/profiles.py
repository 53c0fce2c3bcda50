"""Performance profiles and scores (Dahl et al. 2023, "Benchmarking Neural Network Training
Algorithms", section 4.5), two ways.

Ours (the default): the performance ratio of a submission on a workload is its leaderboard time
over the best submission's, infinite when the target was missed or the ratio exceeds
`MAX_PERFORMANCE_RATIO`; rho(tau) is the fraction of the workloads that ran with ratio <= tau;
the score is the exact integral of rho over [1, tau_max] divided by tau_max - 1.

Upstream's (`upstream_scores`, as `scoring/performance_profile.py` and `score_submissions.py` of
mlcommons/algorithmic-efficiency compute it): rho on 100 evenly spaced taus in [1, 4], divided by
the fixed number of base workloads (8) whichever ran, integrated by the trapezoid rule and
divided by 3; only upstream's base workload names count.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

INF = float('inf')
MAX_PERFORMANCE_RATIO = 4.0  # AlgoPerf's tau_max: a ratio above it counts as infinite.
TIME_TO_TARGET_KEYS = {'seconds': 'seconds_to_target', 'steps': 'steps_to_target'}

Ratios = Dict[str, Dict[str, float]]  # {workload: {submission: performance ratio}}


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


# -- Upstream's score, exactly ----------------------------------------------------------------

# scoring/performance_profile.py and algoperf/workloads/workloads.py of mlcommons/algorithmic-
# efficiency (2c90454): the eight base workloads, rho's fixed denominator, the tau grid.
UPSTREAM_BASE_WORKLOADS = ('criteo1tb', 'fastmri', 'imagenet_resnet', 'imagenet_vit',
                           'librispeech_conformer', 'librispeech_deepspeech', 'ogbg', 'wmt')
UPSTREAM_NUM_BASE_WORKLOADS = 8
UPSTREAM_MAX_TAU = 4.0
UPSTREAM_NUM_TAUS = 100

Curve = Tuple[Sequence[float], Sequence[float]]  # (validation metric values, times), per eval.


def upstream_study_time(curves: Sequence[Curve], target: float, higher_is_better: bool) -> float:
  """One study's time to target as upstream scoring picks it (`get_best_trial_index`).

  The target test is non-strict (`>=` / `<=`, upstream scoring's; the runner's is strict). Among
  the trials that reach it, the one that does so at the earliest evaluation INDEX wins (the first
  such trial on a tie), and its time at that evaluation is the study's; inf when none reaches it.
  """
  best: Optional[Tuple[int, float]] = None
  for values, times in curves:
    index = next((i for i, v in enumerate(values)
                  if (v >= target if higher_is_better else v <= target)), None)
    if index is not None and (best is None or index < best[0]):
      best = (index, float(times[index]))
  return INF if best is None else best[1]


def upstream_scores(times: Dict[str, Dict[str, float]]) -> Dict[str, float]:
  """Upstream's leaderboard score of each submission from {workload: {submission: time}}.

  Only `UPSTREAM_BASE_WORKLOADS` count; a base workload a submission did not run is infinite.
  Times above 4x the workload's best become infinite, ratios are to the best, rho(tau) = (number
  of workloads with ratio <= tau) / 8 on `np.linspace(1, 4, 100)`, and the score is the
  trapezoid integral of rho divided by 4 - 1 (`score_submissions.compute_leaderboard_score`).
  """
  submissions = sorted({s for per in times.values() for s in per})
  if not submissions:
    return {}
  table = np.array([[times.get(w, {}).get(s, INF) for w in UPSTREAM_BASE_WORKLOADS]
                    for s in submissions], dtype=float)  # [submissions, base workloads]
  best = table.min(axis=0)
  table = np.where(table > UPSTREAM_MAX_TAU * best, INF, table)
  with np.errstate(invalid='ignore', divide='ignore'):
    ratios = table / best
  taus = np.linspace(1.0, UPSTREAM_MAX_TAU, UPSTREAM_NUM_TAUS)
  rho = np.stack([(ratios <= tau).sum(axis=1) / UPSTREAM_NUM_BASE_WORKLOADS for tau in taus],
                 axis=1)  # [submissions, taus]
  integral = ((rho[:, 1:] + rho[:, :-1]) / 2 * np.diff(taus)).sum(axis=1)
  return {s: float(v) / (UPSTREAM_MAX_TAU - 1.0) for s, v in zip(submissions, integral)}
