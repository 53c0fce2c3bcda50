"""The report of an experiment directory: JSON, Markdown, self-contained HTML and PNG plots.

`build_report` gathers every number into one JSON-safe object (non-finite values become None);
the Markdown and HTML pages are both rendered from that object through one list of blocks
(headings, paragraphs, tables, images), so the two pages and the JSON show the same numbers.
The numbers themselves come from `benchmark.scoring`; the figures from `benchmark.plots`.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from benchmark import scoring
from benchmark.runner import MEASUREMENTS_FILE, METADATA_FILE

MARKDOWN_FILE = 'report.md'
HTML_FILE = 'report.html'
JSON_FILE = 'report.json'
PROFILES_IMAGE = 'performance_profiles.png'
MEASURES = ('seconds', 'steps')
ENVIRONMENT_FIELDS = ('python', 'jax', 'jaxlib', 'flax', 'optax', 'backend', 'device_kind',
                      'device_count', 'processor', 'cpu_count', 'platform',
                      'jax_default_matmul_precision', 'jax_enable_x64', 'xla_flags', 'git_commit',
                      'git_dirty')
RUN_FIELDS = ('date', 'workload', 'config', 'data_source', 'submission', 'num_studies',
              'num_tuning_trials', 'rng_seed', 'git_commit')
BUCKET_GROUP_ORDER = ('steps', 'compile_and_first_step', 'data_selection', 'optimizer_init',
                      'evaluation', 'logging', 'model_init_and_input_pipeline')


# -- The numbers -------------------------------------------------------------------------------


def load_metadata_runs(experiment_dir: str) -> List[Dict[str, Any]]:
  """The `runs` of every `metadata.json` below `experiment_dir`, in folder order."""
  runs = []
  for root, dirs, files in os.walk(experiment_dir):
    dirs.sort()
    if METADATA_FILE in files:
      with open(os.path.join(root, METADATA_FILE)) as f:
        runs.extend(json.load(f).get('runs', []))
  return runs


def metadata_summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
  """The distinct values of each environment field over the runs, and one short line per run."""
  environment = {}
  for field in ENVIRONMENT_FIELDS:
    values = []
    for run in runs:
      if field in run and run[field] not in values:
        values.append(run[field])
    environment[field] = values
  return {'num_runs': len(runs), 'environment': environment,
          'runs': [{field: run.get(field) for field in RUN_FIELDS} for run in runs]}


def performance_profiles(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
  """For each measure (seconds, steps): times, performance ratios, taus and rho per submission."""
  profiles: Dict[str, Any] = {'max_ratio': scoring.MAX_PERFORMANCE_RATIO}
  for measure in MEASURES:
    times = scoring.times_to_target(rows, scoring.TIME_TO_TARGET_KEYS[measure])
    ratios = scoring.performance_ratios(times)
    taus = scoring.profile_taus(ratios)
    profiles[measure] = {'times': times, 'ratios': ratios, 'taus': taus,
                         'rho': scoring.performance_profile(ratios, taus)}
  return profiles


def _json_safe(value: Any) -> Any:
  """`value` with non-finite floats as None and tuples as lists (strict JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def build_report(experiment_dir: str,
                 summaries: Optional[List[scoring.Summary]] = None) -> Dict[str, Any]:
  """Every number of the report, JSON-safe (None for a missed target or an infinite ratio).

  Keys: rows (`scoring.leaderboard_rows`), performance_profiles ({max_ratio, seconds, steps}, each
  {times, ratios, taus, rho}), scores ({seconds, steps}: {submission: score}), expand_vs_reduce
  (`scoring.expand_vs_reduce`), time_breakdown (`scoring.time_breakdowns`), metadata
  (`metadata_summary`).
  """
  if summaries is None:
    summaries = scoring.load_trial_summaries(experiment_dir)
  rows = scoring.leaderboard_rows(summaries)
  profiles = performance_profiles(rows)
  breakdowns = scoring.time_breakdowns(summaries)
  return _json_safe({
      'rows': rows,
      'performance_profiles': profiles,
      'scores': {m: scoring.performance_scores(profiles[m]['ratios']) for m in MEASURES},
      'expand_vs_reduce': scoring.expand_vs_reduce(rows, breakdowns),
      'time_breakdown': breakdowns,
      'metadata': metadata_summary(load_metadata_runs(experiment_dir)),
  })


def read_validation_curve(trial: scoring.Summary) -> Optional[Dict[str, List[float]]]:
  """{'steps', 'seconds', 'values'} of the validation target metric from the trial's CSV."""
  path = os.path.join(trial['trial_dir'], MEASUREMENTS_FILE)
  column = f'validation/{trial["target_metric_name"]}'
  if not os.path.isfile(path):
    return None
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if r.get(column) not in (None, '')]
  if not rows:
    return None
  return {'steps': [int(r['global_step']) for r in rows],
          'seconds': [float(r['accumulated_submission_time']) for r in rows],
          'values': [float(r[column]) for r in rows]}


# -- Figures -----------------------------------------------------------------------------------


def _curves_image(workload: str) -> str:
  return 'validation_' + re.sub(r'[^A-Za-z0-9_.-]', '_', workload) + '.png'


def plot_images(report: Dict[str, Any], summaries: List[scoring.Summary]) -> Dict[str, bytes]:
  """{file name: PNG bytes}: the performance profiles and one validation figure per workload.

  Each submission's line is its representative trial: the best trial, or without one the trial
  with the best final validation metric.
  """
  from benchmark import plots
  profiles = report['performance_profiles']
  images = {PROFILES_IMAGE: plots.performance_profiles_png(
      {m: profiles[m]['taus'] for m in MEASURES}, {m: profiles[m]['rho'] for m in MEASURES},
      profiles['max_ratio'])}
  groups = scoring.group_trials(summaries)
  for workload in sorted({r['workload'] for r in report['rows']}):
    rows = [r for r in report['rows'] if r['workload'] == workload]
    curves = {}
    for row in rows:
      trial = scoring.representative_trial(
          [t for ts in groups[(workload, row['submission'])].values() for t in ts])
      curve = read_validation_curve(trial) if trial else None
      if curve:
        curves[f'{row["submission"]} (study {trial["study"]} {scoring.trial_name(trial)})'] = curve
    images[_curves_image(workload)] = plots.validation_curves_png(
        workload, curves, rows[0]['target_metric_name'], rows[0]['validation_target_value'])
  return images


# -- Blocks: what the Markdown and HTML pages say ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Heading:
  level: int
  text: str


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str


@dataclasses.dataclass(frozen=True)
class Table:
  headers: Sequence[str]
  rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Image:
  file_name: str
  alt: str


Block = Union[Heading, Paragraph, Table, Image]


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


def _reference_label(rows: List[Dict[str, Any]]) -> str:
  """The reference of one workload's ratio columns: nesterov, best (<name>) or none."""
  name = rows[0]['reference_submission']
  if name is None:
    return 'none'
  return name if name == scoring.REFERENCE_SUBMISSION else f'best ({name})'


def _leaderboard_blocks(rows: List[Dict[str, Any]]) -> List[Block]:
  blocks: List[Block] = [Heading(2, 'Leaderboard (external tuning)'), Paragraph(
      'Per study the best trial is the one with the least submission time to the validation '
      'target; steps and seconds are medians over studies of the best trials (a study with no '
      'trial on target counts as infinite, shown as -). Ratios are to the reference submission '
      f'of the workload: {scoring.REFERENCE_SUBMISSION} when it ran, otherwise the best one.')]
  for workload in sorted({r['workload'] for r in rows}):
    workload_rows = [r for r in rows if r['workload'] == workload]
    reference = _reference_label(workload_rows)
    metric = workload_rows[0]['target_metric_name']
    blocks += [Heading(3, workload), Paragraph(
        f'Target: validation/{metric} {_num(workload_rows[0]["validation_target_value"], "g")}. '
        + ('No submission reached the target: no ratios.' if reference == 'none'
           else f'Ratios are to {reference}.')),
        Table(['submission', 'steps to target', 'seconds to target',
               f'steps ratio to {reference}', f'seconds ratio to {reference}',
               f'final validation/{metric}', 'trials reached / run', 'studies reached / run',
               'diverged', 'failed'],
              [[r['submission'], _steps(r['steps_to_target']), _seconds(r['seconds_to_target']),
                _ratio(r['steps_ratio_to_reference']), _ratio(r['seconds_ratio_to_reference']),
                _num(r['final_validation_metric'], '.4f'),
                f'{r["trials_reached"]} / {r["trials"]}',
                f'{r["studies_reached"]} / {r["studies"]}', str(r['diverged']),
                str(r['failed'])] for r in workload_rows])]
  failures = [[r['workload'], r['submission'], str(t['study']), t['trial'], t['status'],
               _steps(t['global_steps']), t['reason']]
              for r in rows for t in r['diverged_or_failed_trials']]
  blocks.append(Heading(3, 'Diverged and failed trials'))
  blocks.append(Table(['workload', 'submission', 'study', 'trial', 'status', 'steps', 'reason'],
                      failures) if failures else Paragraph('None.'))
  blocks += [Heading(3, 'Hyperparameters of the best trials'), Table(
      ['workload', 'submission', 'study', 'trial', 'steps to target', 'seconds to target',
       'hyperparameters'],
      [[r['workload'], r['submission'], str(b['study']), b['trial'], _steps(b['steps_to_target']),
        _seconds(b['seconds_to_target']), json.dumps(b['hyperparameters'], sort_keys=True)]
       for r in rows for b in r['best_trials']])]
  return blocks


def _performance_blocks(report: Dict[str, Any], images: Sequence[str]) -> List[Block]:
  profiles = report['performance_profiles']
  scores = report['scores']
  submissions = sorted(scores['seconds'])
  blocks: List[Block] = [Heading(2, 'Performance profiles and scores'), Paragraph(
      'Per workload, each submission\'s time is the leaderboard median; its performance ratio is '
      'that time over the best submission\'s, infinite when the target was missed, the '
      f'submission did not run on the workload, or the ratio exceeds {profiles["max_ratio"]:g}. '
      'rho(tau) is the fraction of workloads with ratio <= tau; the score is the integral of rho '
      f'over [1, {profiles["max_ratio"]:g}] divided by {profiles["max_ratio"] - 1:g} (1 = best '
      'on every workload, 0 = never within the maximum ratio).'),
      Table(['submission'] + [f'score ({m})' for m in MEASURES],
            [[s] + [_ratio(scores[m][s]) for m in MEASURES] for s in submissions])]
  for measure in MEASURES:
    ratios = profiles[measure]['ratios']
    blocks += [Heading(3, f'Performance ratios ({measure})'), Table(
        ['workload'] + submissions,
        [[w] + [_performance_ratio(ratios[w][s]) for s in submissions] for w in sorted(ratios)])]
  if PROFILES_IMAGE in images:
    blocks.append(Image(PROFILES_IMAGE, 'performance profiles'))
  return blocks


def _curves_blocks(rows: List[Dict[str, Any]], images: Sequence[str]) -> List[Block]:
  workloads = sorted({r['workload'] for r in rows if _curves_image(r['workload']) in images})
  if not workloads:
    return []
  blocks: List[Block] = [Heading(2, 'Validation curves'), Paragraph(
      'Each submission\'s best trial (without one: the trial with the best final validation '
      'metric); the dashed line is the target.')]
  for workload in workloads:
    blocks += [Heading(3, workload), Image(_curves_image(workload), f'{workload} validation')]
  return blocks


def _expand_vs_reduce_blocks(comparisons: List[Dict[str, Any]]) -> List[Block]:
  blocks: List[Block] = [Heading(2, 'K-FAC expand vs reduce')]
  if not comparisons:
    return blocks + [Paragraph(f'{scoring.EXPAND_SUBMISSION} and {scoring.REDUCE_SUBMISSION} did '
                               'not both run on any workload.')]
  phases = sorted({p for c in comparisons for p in c['expand_phase_seconds_per_step']}
                  | {p for c in comparisons for p in c['reduce_phase_seconds_per_step']})
  return blocks + [Paragraph(
      'Ratios are reduce / expand. Seconds per step: the `steps/<phase>` time over the steps '
      'after each phase\'s first (compilation and data selection excluded), all trials pooled.'),
      Table(['workload', 'steps ratio', 'seconds ratio', 'expand s/step', 'reduce s/step',
             'step cost ratio'] + [f'{f} s/step ({p})' for p in phases for f in ('expand',
                                                                                 'reduce')],
            [[c['workload'], _ratio(c['steps_ratio']), _ratio(c['seconds_ratio']),
              _step_cost(c['expand_seconds_per_step']), _step_cost(c['reduce_seconds_per_step']),
              _ratio(c['step_cost_ratio'])]
             + [_step_cost(c[f'{f}_phase_seconds_per_step'].get(p)) for p in phases
                for f in ('expand', 'reduce')]
             for c in comparisons])]


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
      f'{metadata["num_runs"]} run(s) recorded in metadata.json; distinct values over the runs.')]
  if not metadata['num_runs']:
    return blocks
  return blocks + [
      Table(['field', 'value(s)'], [[field, ', '.join(str(v) for v in values) or '-']
                                    for field, values in metadata['environment'].items()]),
      Table(list(RUN_FIELDS), [[str(run[f]) for f in RUN_FIELDS] for run in metadata['runs']])]


def report_blocks(report: Dict[str, Any], images: Sequence[str] = ()) -> List[Block]:
  """The page as blocks; `images` names the figures that exist (others are left out)."""
  return ([Heading(1, 'K-FAC benchmark report')]
          + _leaderboard_blocks(report['rows'])
          + _performance_blocks(report, images)
          + _curves_blocks(report['rows'], images)
          + _expand_vs_reduce_blocks(report['expand_vs_reduce'])
          + _time_breakdown_blocks(report['time_breakdown'])
          + _self_tuning_blocks(report['rows'])
          + _metadata_blocks(report['metadata']))


# -- Rendering ---------------------------------------------------------------------------------


def _markdown_cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def to_markdown(blocks: List[Block]) -> str:
  """Markdown; images are links to the PNG files next to the page."""
  parts = []
  for block in blocks:
    if isinstance(block, Heading):
      parts.append(f'{"#" * block.level} {block.text}')
    elif isinstance(block, Paragraph):
      parts.append(block.text)
    elif isinstance(block, Table):
      lines = ['| ' + ' | '.join(_markdown_cell(h) for h in block.headers) + ' |',
               '|' + '---|' * len(block.headers)]
      lines += ['| ' + ' | '.join(_markdown_cell(c) for c in row) + ' |' for row in block.rows]
      parts.append('\n'.join(lines))
    else:
      parts.append(f'![{block.alt}]({block.file_name})')
  return '\n\n'.join(parts) + '\n'


HTML_STYLE = ('body{font-family:sans-serif;margin:2em;max-width:80em}'
              'table{border-collapse:collapse;margin:0.5em 0 1.5em}'
              'th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left}'
              'th{background:#eee}img{max-width:100%}')


def to_html(blocks: List[Block], images: Dict[str, bytes], title: str) -> str:
  """A self-contained HTML page: every image is embedded as a base64 PNG data URI."""
  parts = []
  for block in blocks:
    if isinstance(block, Heading):
      parts.append(f'<h{block.level}>{html.escape(block.text)}</h{block.level}>')
    elif isinstance(block, Paragraph):
      parts.append(f'<p>{html.escape(block.text)}</p>')
    elif isinstance(block, Table):
      head = ''.join(f'<th>{html.escape(h)}</th>' for h in block.headers)
      body = ''.join('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in row) + '</tr>'
                     for row in block.rows)
      parts.append(f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    else:
      data = base64.b64encode(images[block.file_name]).decode('ascii')
      parts.append(f'<p><img alt="{html.escape(block.alt)}" '
                   f'src="data:image/png;base64,{data}"></p>')
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n<body>\n'
          + '\n'.join(parts) + '\n</body></html>\n')


def _dump_json(value: Any) -> str:
  return json.dumps(value, indent=2, sort_keys=True, allow_nan=False)


def write_report(experiment_dir: str, out_dir: str) -> List[str]:
  """Writes report.md, report.html, report.json (the full object) and the PNGs to `out_dir`.

  Returns:
    The paths written.
  """
  summaries = scoring.load_trial_summaries(experiment_dir)
  report = build_report(experiment_dir, summaries)
  images = plot_images(report, summaries) if report['rows'] else {}
  blocks = report_blocks(report, list(images))
  title = f'K-FAC benchmark report: {os.path.basename(os.path.normpath(experiment_dir))}'
  os.makedirs(out_dir, exist_ok=True)
  texts = {MARKDOWN_FILE: to_markdown(blocks), HTML_FILE: to_html(blocks, images, title),
           JSON_FILE: _dump_json(report) + '\n'}
  paths = []
  for name, text in texts.items():
    paths.append(os.path.join(out_dir, name))
    with open(paths[-1], 'w') as f:
      f.write(text)
  for name, png in images.items():
    paths.append(os.path.join(out_dir, name))
    with open(paths[-1], 'wb') as f:
      f.write(png)
  return paths


def render(experiment_dir: str, fmt: str = 'markdown') -> str:
  """The report of `experiment_dir` as text.

  Args:
    experiment_dir: the experiment folder (or any folder above trial folders).
    fmt: 'markdown' (the page without figures), 'leaderboard' (the leaderboard tables only),
      'json' (the list of leaderboard rows) or 'json_full' (the whole report object).
  """
  report = build_report(experiment_dir)
  if fmt == 'leaderboard':
    if not report['rows']:
      return f'no finished trials under {experiment_dir}'
    blocks = _leaderboard_blocks(report['rows'])
    end = next(i for i, b in enumerate(blocks)
               if isinstance(b, Heading) and b.text.startswith('Diverged'))
    return to_markdown(blocks[:end]).rstrip('\n')
  if fmt == 'json':
    return _dump_json(report['rows'])
  if fmt == 'json_full':
    return _dump_json(report)
  if not report['rows']:
    return f'no finished trials under {experiment_dir}'
  return to_markdown(report_blocks(report)).rstrip('\n')
