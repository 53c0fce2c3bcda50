"""What the report page says: its sections as blocks (`benchmark.report_rendering`), built from
the report object of `benchmark.report_numbers.build_report`."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from benchmark.report_numbers import MEASURES, PROFILES_IMAGE, curves_image
from benchmark.report_rendering import Block, Heading, Image, Paragraph, Table

BUCKET_GROUP_ORDER = ('steps', 'compile_and_first_step', 'data_selection', 'prepare_for_eval',
                      'optimizer_init', 'evaluation', 'logging', 'model_init_and_input_pipeline',
                      'checkpoint', 'resume')


def _num(value: Optional[float], spec: str) -> str:
  """`value` formatted with `spec`; '-' for None (a missed target or no data)."""
  return '-' if value is None else format(value, spec)


def _seconds(value: Optional[float]) -> str:
  return _num(value, '.2f')


def _steps(value: Optional[float]) -> str:
  return _num(value, '.10g')


def _ratio(value: Optional[float]) -> str:
  return _num(value, '.3f')


def _step_cost(value: Optional[float]) -> str:
  return _num(value, '.4g')


def _share(value: Optional[float]) -> str:
  return '-' if value is None else f'{100.0 * value:.1f}%'


def _performance_ratio(value: Optional[float]) -> str:
  return 'inf' if value is None else f'{value:.3f}'


def _reference_label(rows: List[Dict[str, Any]], reference: Optional[str]) -> str:
  """The reference of one workload's ratio columns: the configured one, best (<name>) or none."""
  name = rows[0]['reference_submission']
  if name is None:
    return 'none'
  return name if name == reference else f'best ({name})'


def leaderboard_blocks(rows: List[Dict[str, Any]], reference: Optional[str]) -> List[Block]:
  """The leaderboard tables (one per workload), failures, and the best trials' points."""
  blocks: List[Block] = [Heading(2, 'Leaderboard (external tuning)'), Paragraph(
      'Per study the best trial is the one with the least submission time to the validation '
      'target; steps and seconds are medians over studies of the best trials (a study with no '
      'trial on target counts as infinite, shown as -). Ratios are to the reference submission '
      f'of the workload: {reference or "none configured"} when it ran, otherwise the best one.')]
  for workload in sorted({r['workload'] for r in rows}):
    workload_rows = [r for r in rows if r['workload'] == workload]
    label = _reference_label(workload_rows, reference)
    metric = workload_rows[0]['target_metric_name']
    blocks += [Heading(3, workload), Paragraph(
        f'Target: validation/{metric} {_num(workload_rows[0]["validation_target_value"], "g")}. '
        + ('No submission reached the target: no ratios.' if label == 'none'
           else f'Ratios are to {label}.')),
        Table(['submission', 'steps to target', 'seconds to target',
               f'steps ratio to {label}', f'seconds ratio to {label}',
               f'final validation/{metric}', 'trials reached / run', 'studies reached / run',
               'diverged', 'failed', 'degraded'],
              [[r['submission'], _steps(r['steps_to_target']), _seconds(r['seconds_to_target']),
                _ratio(r['steps_ratio_to_reference']), _ratio(r['seconds_ratio_to_reference']),
                _num(r['final_validation_metric'], '.4f'),
                f'{r["trials_reached"]} / {r["trials"]}',
                f'{r["studies_reached"]} / {r["studies"]}', str(r['diverged']),
                str(r['failed']), str(r['degraded'])] for r in workload_rows])]
  failures = [[r['workload'], r['submission'], str(t['study']), t['trial'], t['status'],
               _steps(t['global_steps']), t['reason']]
              for r in rows for t in r['diverged_or_failed_trials']]
  blocks.append(Heading(3, 'Diverged and failed trials'))
  blocks.append(Table(['workload', 'submission', 'study', 'trial', 'status', 'steps', 'reason'],
                      failures) if failures else Paragraph('None.'))
  degraded = [[r['workload'], r['submission'], str(t['study']), t['trial'], ', '.join(t['layers']),
               _steps(t['rejected_updates'])] for r in rows for t in r['degraded_trials']]
  blocks.append(Heading(3, 'Degraded trials (a layer\'s curvature updates rejected too long)'))
  blocks.append(Table(['workload', 'submission', 'study', 'trial', 'layers', 'rejected updates'],
                      degraded) if degraded else Paragraph('None.'))
  blocks += [Heading(3, 'Hyperparameters of the best trials'), Table(
      ['workload', 'submission', 'study', 'trial', 'steps to target', 'seconds to target',
       'hyperparameters'],
      [[r['workload'], r['submission'], str(b['study']), b['trial'], _steps(b['steps_to_target']),
        _seconds(b['seconds_to_target']), json.dumps(b['hyperparameters'], sort_keys=True)]
       for r in rows for b in r['best_trials']])]
  return blocks


def _score_paragraph(scores: Dict[str, Any], max_ratio: float) -> str:
  if scores['method'] == 'upstream':
    return ('Scores computed as upstream AlgoPerf\'s scoring/performance_profile.py computes them: '
            'per study the trial that reaches the validation target (>=) at the earliest '
            'evaluation, the median over studies, times above 4x the best as infinite, rho on 100 '
            'taus in [1, 4] over a fixed 8 base workloads, trapezoid integral / 3. Workloads '
            f'counted: {", ".join(scores["workloads"]) or "none (no upstream base workload ran)"}.')
  return ('Scores computed by this project\'s method: per workload, each submission\'s time is the '
          'leaderboard median; its performance ratio is that time over the best submission\'s, '
          'infinite when the target was missed, the submission did not run on the workload, or '
          f'the ratio exceeds {max_ratio:g}. rho(tau) is the fraction of the workloads that ran '
          f'with ratio <= tau; the score is the exact integral of rho over [1, {max_ratio:g}] '
          f'divided by {max_ratio - 1:g} (1 = best on every workload, 0 = never within the '
          'maximum ratio).')


def _performance_blocks(report: Dict[str, Any], images: Sequence[str]) -> List[Block]:
  profiles = report['performance_profiles']
  scores = report['scores']
  measures = [m for m in MEASURES if m in scores]
  submissions = sorted(scores['seconds'])
  blocks: List[Block] = [
      Heading(2, f'Performance profiles and scores ({scores["method"]} method)'),
      Paragraph(_score_paragraph(scores, profiles['max_ratio'])),
      Table(['submission'] + [f'score ({m})' for m in measures],
            [[s] + [_ratio(scores[m][s]) for m in measures] for s in submissions])]
  submissions = sorted(profiles['seconds']['rho'])
  for measure in MEASURES:
    ratios = profiles[measure]['ratios']
    blocks += [Heading(3, f'Performance ratios ({measure}, this project\'s method)'), Table(
        ['workload'] + submissions,
        [[w] + [_performance_ratio(ratios[w][s]) for s in submissions] for w in sorted(ratios)])]
  if PROFILES_IMAGE in images:
    blocks.append(Image(PROFILES_IMAGE, 'performance profiles'))
  return blocks


def _curves_blocks(rows: List[Dict[str, Any]], images: Sequence[str]) -> List[Block]:
  workloads = sorted({r['workload'] for r in rows if curves_image(r['workload']) in images})
  if not workloads:
    return []
  blocks: List[Block] = [Heading(2, 'Validation curves'), Paragraph(
      'Each submission\'s best trial (without one: the trial with the best final validation '
      'metric); the dashed line is the target.')]
  for workload in workloads:
    blocks += [Heading(3, workload), Image(curves_image(workload), f'{workload} validation')]
  return blocks


def _pair_blocks(pair: Dict[str, Any]) -> List[Block]:
  """One configured comparison: candidate / baseline ratios per workload where both ran."""
  base, cand = pair['baseline'], pair['candidate']
  blocks: List[Block] = [Heading(2, pair['title'])]
  entries = pair['workloads']
  if not entries:
    return blocks + [Paragraph(f'{base} and {cand} did not both run on any workload.')]
  phases = sorted({p for c in entries for role in ('baseline', 'candidate')
                   for p in c[f'{role}_phase_seconds_per_step']})
  return blocks + [Paragraph(
      f'Ratios are {cand} / {base}. Seconds per step: the `steps/<phase>` time over the steps '
      'after each phase\'s first (compilation and data selection excluded), all trials pooled.'),
      Table(['workload', 'steps ratio', 'seconds ratio', f'{base} s/step', f'{cand} s/step',
             'step cost ratio'] + [f'{name} s/step ({p})' for p in phases for name in (base, cand)],
            [[c['workload'], _ratio(c['steps_ratio']), _ratio(c['seconds_ratio']),
              _step_cost(c['baseline_seconds_per_step']),
              _step_cost(c['candidate_seconds_per_step']), _ratio(c['step_cost_ratio'])]
             + [_step_cost(c[f'{role}_phase_seconds_per_step'].get(p)) for p in phases
                for role in ('baseline', 'candidate')]
             for c in entries])]


def _time_breakdown_blocks(breakdowns: List[Dict[str, Any]]) -> List[Block]:
  groups = sorted({g for b in breakdowns for g in b['bucket_seconds']},
                  key=lambda g: (BUCKET_GROUP_ORDER.index(g) if g in BUCKET_GROUP_ORDER
                                 else len(BUCKET_GROUP_ORDER), g))
  return [
      Heading(2, 'Time breakdown'), Paragraph(
          'All trials of a submission pooled. Per phase: seconds per step after the phase\'s '
          'first step, the first step (with compilation), and the share of submission time that '
          'the phase takes (its steps and first step).'),
      Table(['workload', 'submission', 'phase', 'steps', 'seconds per step',
             'first step incl. compile (s)', 'share of submission time'],
            [[b['workload'], b['submission'], phase, str(p['steps']),
              _step_cost(p['seconds_per_step']), _seconds(p['compile_seconds']),
              _share(p['share_of_submission_time'])]
             for b in breakdowns for phase, p in b['phases'].items()]),
      Paragraph('Where the wall-clock time went: submission and total seconds, and each bucket '
                'as a share of the total (the buckets add up to the total).'),
      Table(['workload', 'submission', 'trials', 'total (s)', 'submission (s)',
             'submission s/step'] + groups,
            [[b['workload'], b['submission'], str(b['trials']), _seconds(b['total_seconds']),
              _seconds(b['submission_seconds']), _step_cost(b['submission_seconds_per_step'])]
             + [_share(b['bucket_seconds'][g] / b['total_seconds']
                       if g in b['bucket_seconds'] and b['total_seconds'] > 0 else None)
                for g in groups]
             for b in breakdowns])]


def _self_tuning_blocks(rows: List[Dict[str, Any]]) -> List[Block]:
  return [Heading(2, 'Self-tuning view'), Paragraph(
      'Every trial counts (none is picked): the median over all trials of seconds to target, '
      'where a trial that missed the target, diverged or failed costs its max_runtime_sec budget.'),
      Table(['workload', 'submission', 'median seconds to target (all trials)',
             'trials reached / run', 'external tuning seconds to target'],
            [[r['workload'], r['submission'], _seconds(r['self_tuning_seconds_to_target']),
              f'{r["trials_reached"]} / {r["trials"]}', _seconds(r['seconds_to_target'])]
             for r in rows])]


def _metadata_blocks(metadata: Dict[str, Any]) -> List[Block]:
  blocks: List[Block] = [Heading(2, 'Reproducibility'), Paragraph(
      f'{metadata["num_runs"]} trial(s) recorded a meta_data json; distinct values over them.')]
  if not metadata['num_runs']:
    return blocks
  return blocks + [Table(['field', 'value(s)'],
                         [[field, ', '.join(str(v) for v in values) or '-']
                          for field, values in metadata['environment'].items()])]


def report_blocks(report: Dict[str, Any], reference: Optional[str], images: Sequence[str] = ()
                  ) -> List[Block]:
  """The page as blocks; `images` names the figures that exist (others are left out)."""
  return ([Heading(1, 'K-FAC benchmark report')]
          + leaderboard_blocks(report['rows'], reference)
          + _performance_blocks(report, images)
          + _curves_blocks(report['rows'], images)
          + [b for pair in report['pairs'] for b in _pair_blocks(pair)]
          + _time_breakdown_blocks(report['time_breakdown'])
          + _self_tuning_blocks(report['rows'])
          + _metadata_blocks(report['metadata']))
