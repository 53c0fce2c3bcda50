"""Scoring conventions against hand-computed examples (AlgoPerf: best trial per study, median
over studies, performance ratios capped at tau_max = 4, profiles and their normalised integral),
ours and upstream's exactly."""

import math

import numpy as np
import pytest

from benchmark import profiles, scoring, time_split
from benchmark.comparison import Pair

INF = math.inf


def _trial(workload, submission, study, trial, seconds=None, steps=None, status=None, **extra):
  """A trial summary as `load_results.load_trial_summaries` returns it."""
  return dict({
      'workload_variant': workload, 'submission': submission, 'study': study,
      'trial_dir': f'/x/{workload}/{submission}/study_{study}/trial_{trial}',
      'seconds_to_target': seconds, 'steps_to_target': steps,
      'status': status or ('target_reached' if seconds is not None else 'budget_exhausted'),
      'final_validation_metric': 0.5, 'target_metric_name': 'score',
      'validation_target_value': 0.3, 'hyperparameters': {'learning_rate': 0.1 * trial},
      'max_runtime_sec': 1000.0}, **extra)


@pytest.mark.parametrize('values, expected', [
    ([10.0, INF, 20.0], 20.0),         # one study of three missed: the median is still finite
    ([10.0, INF], INF),                # the upper middle value missed
    ([10.0, 30.0, 20.0, INF], 25.0),   # even count, both middle values finite
    ([10.0, INF, INF], INF),           # most studies missed
    ([], INF),
])
def test_median_with_missed_studies(values, expected):
  assert scoring.median(values) == expected


# Hand-computed example: 3 submissions x 2 workloads (seconds to target).
#   w1: a 100, b 150, c 500   -> ratios a 1, b 1.5, c 5 > 4 -> inf
#   w2: a 200, b 100, c missed -> ratios a 2, b 1,   c inf
# rho_a(tau) = 1/2 on [1, 2), 1 on [2, 4]; rho_b = 1/2 on [1, 1.5), 1 on [1.5, 4]; rho_c = 0.
# score_a = (0.5 * 1 + 1 * 2) / 3 = 2.5 / 3;  score_b = (0.5 * 0.5 + 1 * 2.5) / 3 = 2.75 / 3.
TIMES = {'w1': {'a': 100.0, 'b': 150.0, 'c': 500.0}, 'w2': {'a': 200.0, 'b': 100.0, 'c': INF}}


def test_performance_ratios_profiles_and_score_by_hand():
  ratios = profiles.performance_ratios(TIMES)
  assert ratios == {'w1': {'a': 1.0, 'b': 1.5, 'c': INF}, 'w2': {'a': 2.0, 'b': 1.0, 'c': INF}}
  taus = [1.0, 1.25, 1.5, 1.99, 2.0, 3.0, 4.0]
  assert profiles.performance_profile(ratios, taus) == {
      'a': [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0],
      'b': [0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0],
      'c': [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}
  scores = profiles.performance_scores(ratios)
  assert scores['a'] == pytest.approx(2.5 / 3)
  assert scores['b'] == pytest.approx(2.75 / 3)
  assert scores['c'] == 0.0
  # The profile's breakpoints, integrated as a step function, give the same score.
  breakpoints = profiles.profile_taus(ratios)
  assert breakpoints == [1.0, 1.5, 2.0, 4.0]
  rho = profiles.performance_profile(ratios, breakpoints)
  for submission, values in rho.items():
    area = sum(v * (hi - lo) for v, lo, hi in zip(values, breakpoints, breakpoints[1:]))
    assert area / 3 == pytest.approx(scores[submission])


def test_ratio_at_exactly_max_counts_and_absent_submission_is_infinite():
  ratios = profiles.performance_ratios({'w1': {'a': 10.0, 'b': 40.0}, 'w2': {'a': 10.0}})
  assert ratios == {'w1': {'a': 1.0, 'b': 4.0}, 'w2': {'a': 1.0, 'b': INF}}
  assert profiles.performance_profile(ratios, [3.99, 4.0])['b'] == [0.0, 0.5]
  assert profiles.performance_scores(ratios) == {'a': 1.0, 'b': 0.0}
  # No submission reached the target on a workload: every ratio there is infinite.
  assert profiles.performance_ratios({'w': {'a': INF, 'b': INF}}) == {'w': {'a': INF, 'b': INF}}


def test_leaderboard_rows_best_trial_per_study_median_and_ratios():
  summaries = [
      # nesterov: study 0 best 100 s (trial 2), study 1 best 140 s -> median 120 s, 1200 steps.
      _trial('w', 'nesterov', 0, 1, 130.0, 1300), _trial('w', 'nesterov', 0, 2, 100.0, 1000),
      _trial('w', 'nesterov', 1, 1, 140.0, 1400),
      _trial('w', 'nesterov', 1, 2, status='diverged', reason='non-finite parameters after step 7',
             global_steps=7, final_validation_metric=None),
      # kfac_reduce: 50 s / 400 and 70 s / 560 -> 60 s, 480 steps: ratios 0.5 and 0.4.
      _trial('w', 'kfac_reduce', 0, 1, 50.0, 400), _trial('w', 'kfac_reduce', 1, 1, 70.0, 560),
      # kfac_expand: one of three studies missed -> median 110 s (finite).
      _trial('w', 'kfac_expand', 0, 1, 90.0, 400), _trial('w', 'kfac_expand', 1, 1, 110.0, 560),
      _trial('w', 'kfac_expand', 2, 1),
  ]
  rows = {r['submission']: r for r in scoring.leaderboard_rows(summaries, 'nesterov')}
  nesterov, reduce, expand = rows['nesterov'], rows['kfac_reduce'], rows['kfac_expand']
  assert (nesterov['seconds_to_target'], nesterov['steps_to_target']) == (120.0, 1200)
  assert [b['trial'] for b in nesterov['best_trials']] == ['trial_2', 'trial_1']
  assert nesterov['best_trials'][0]['hyperparameters'] == {'learning_rate': 0.2}
  assert (nesterov['trials'], nesterov['trials_reached'], nesterov['diverged']) == (4, 3, 1)
  assert nesterov['diverged_or_failed_trials'] == [{
      'study': 1, 'trial': 'trial_2', 'status': 'diverged', 'global_steps': 7,
      'reason': 'non-finite parameters after step 7'}]
  assert all(r['reference_submission'] == 'nesterov' for r in rows.values())
  assert nesterov['seconds_ratio_to_reference'] == 1.0
  assert reduce['seconds_ratio_to_reference'] == pytest.approx(0.5)
  assert reduce['steps_ratio_to_reference'] == pytest.approx(0.4)
  assert (expand['seconds_to_target'], expand['steps_to_target']) == (110.0, 560)
  assert (expand['studies'], expand['studies_reached']) == (3, 2)
  # Self-tuning: median over all trials, the missed trial costing its 1000 s budget.
  assert expand['self_tuning_seconds_to_target'] == 110.0
  assert nesterov['self_tuning_seconds_to_target'] == pytest.approx(135.0)  # 100 130 140 1000

  # Without nesterov, the reference is the best submission (least median seconds).
  rows = scoring.leaderboard_rows([s for s in summaries if s['submission'] != 'nesterov'],
                                  'nesterov')
  assert {r['reference_submission'] for r in rows} == {'kfac_reduce'}
  expand = next(r for r in rows if r['submission'] == 'kfac_expand')
  assert expand['seconds_ratio_to_reference'] == pytest.approx(110.0 / 60.0)
  # A submission that missed has no ratio; with nobody on target there is no reference.
  rows = scoring.leaderboard_rows([_trial('v', 'nesterov', 0, 1), _trial('v', 'other', 0, 1)],
                                  'nesterov')
  assert all(r['reference_submission'] == 'nesterov' for r in rows)
  assert all(r['seconds_ratio_to_reference'] is None for r in rows)
  assert scoring.reference_submission([{'submission': 'x', 'seconds_to_target': None}],
                                      'nesterov') is None


def test_time_breakdown_phases_and_pair_comparison():
  def timed(submission, study, phase_seconds, steps_per_phase, submission_seconds):
    split = {'optimizer_init': 1.0, 'data_selection': 2.0, 'evaluation': 5.0}
    for phase, (compile_s, steps_s) in phase_seconds.items():
      split[f'compile_and_first_step/{phase}'] = compile_s
      split[f'steps/{phase}'] = steps_s
    return _trial('w', submission, study, 1, 10.0, 100, time_split=split,
                  steps_per_phase=steps_per_phase, global_steps=sum(steps_per_phase.values()),
                  accumulated_submission_time=submission_seconds,
                  total_duration=sum(split.values()))

  # expand: 'plain' 81 steps (80 timed, 8 s), 'statistics' 21 steps (20 timed, 4 s).
  expand = timed('kfac_expand', 0, {'plain': (3.0, 8.0), 'statistics': (1.0, 4.0)},
                 {'plain': 81, 'statistics': 21}, 19.0)
  # reduce, two trials pooled: 'plain' 2 x 51 steps (100 timed, 5 s).
  reduce = [timed('kfac_reduce', s, {'plain': (2.0, 2.5)}, {'plain': 51}, 7.5) for s in (0, 1)]
  breakdown = time_split.time_breakdown([expand])
  assert breakdown['phases']['plain'] == {
      'steps': 81, 'step_seconds': 8.0, 'compile_seconds': 3.0, 'seconds_per_step': 0.1,
      'share_of_submission_time': pytest.approx(11.0 / 19.0)}
  assert breakdown['phases']['statistics']['seconds_per_step'] == pytest.approx(0.2)
  assert breakdown['seconds_per_step'] == pytest.approx(12.0 / 100)
  assert breakdown['submission_seconds_per_step'] == pytest.approx(19.0 / 102)
  assert breakdown['bucket_seconds'] == {'compile_and_first_step': 4.0, 'data_selection': 2.0,
                                         'evaluation': 5.0, 'optimizer_init': 1.0, 'steps': 12.0}
  assert breakdown['total_seconds'] == pytest.approx(24.0)

  summaries = [expand] + reduce
  pair = Pair('kfac_expand', 'kfac_reduce', 'expand vs reduce')
  compared = time_split.pair_comparison(scoring.leaderboard_rows(summaries),
                                        time_split.time_breakdowns(summaries), pair)
  comparison, = compared['workloads']
  assert comparison['workload'] == 'w'
  assert comparison['candidate_seconds_per_step'] == pytest.approx(0.05)
  assert comparison['step_cost_ratio'] == pytest.approx(0.05 / 0.12)
  assert comparison['steps_ratio'] == 1.0 and comparison['seconds_ratio'] == 1.0
  assert comparison['candidate_phase_seconds_per_step'] == {'plain': pytest.approx(0.05)}
  assert time_split.pair_comparison(scoring.leaderboard_rows(reduce),
                                    time_split.time_breakdowns(reduce), pair)['workloads'] == []


# Upstream's score by hand. Base workloads ogbg, imagenet_vit, wmt (cifar is not one: ignored).
#   ogbg: a 100, b 250 -> ratios a 1, b 2.5;  imagenet_vit: a 300, b 200 -> a 1.5, b 1;
#   wmt: a 100, b 500 -> b above 4x the best: inf.  rho counts over a fixed 8 workloads.
# On taus t_i = 1 + 3i/99 the trapezoid rule integrates a unit step at r, with t_k < r < t_k+1,
# to (4 - t_k+1) + h/2 (h = 3/99): the interval holding the step gets the mean of its ends.
UPSTREAM_TIMES = {'ogbg': {'a': 100.0, 'b': 250.0}, 'imagenet_vit': {'a': 300.0, 'b': 200.0},
                  'wmt': {'a': 100.0, 'b': 500.0}, 'cifar': {'a': 1.0, 'b': 9.0}}


def test_upstream_score_by_hand():
  h = 3 / 99
  def step_area(k):  # a unit step between t_k and t_k+1
    return (4 - (1 + (k + 1) * h)) + h / 2
  # a: steps at 1 (ogbg), 1.5 (between t_16 and t_17), 1 (wmt); b: 2.5 (t_49..t_50), 1 (vit).
  expected_a = (3 + step_area(16) + 3) / 8 / 3
  expected_b = (step_area(49) + 3) / 8 / 3
  scores = profiles.upstream_scores(UPSTREAM_TIMES)
  assert scores == pytest.approx({'a': expected_a, 'b': expected_b}, rel=1e-12)
  # Our method on the same times counts only the 4 workloads that ran, cifar included.
  assert profiles.performance_scores(profiles.performance_ratios(UPSTREAM_TIMES))['a'] != \
      pytest.approx(expected_a)


def test_upstream_study_time_earliest_eval_index_and_non_strict_target():
  # Trial 1 reaches 0.5 at its 3rd eval (50 s); trial 2 at its 2nd (80 s): upstream takes the
  # earliest eval index, so 80 s (ours takes the least time). Equal to the target counts.
  curves = [([0.1, 0.2, 0.5], [10.0, 30.0, 50.0]), ([0.3, 0.5, 0.7], [40.0, 80.0, 120.0])]
  assert profiles.upstream_study_time(curves, 0.5, True) == 80.0
  assert profiles.upstream_study_time(curves, 0.9, True) == math.inf
  assert profiles.upstream_study_time([([0.4, 0.2], [5.0, 9.0])], 0.2, False) == 9.0
  assert float(np.median([80.0, math.inf])) == math.inf  # a missed study pulls the median up
