"""Leaderboard tables from an experiment directory (Markdown and JSON)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from benchmark import scoring


def _fmt(value: Optional[float], digits: int = 1) -> str:
  if value is None:
    return '-'
  if isinstance(value, int):
    return str(value)
  return f'{value:.{digits}f}'


def markdown_table(rows: List[Dict[str, Any]]) -> str:
  """The leaderboard as a Markdown table, one line per workload and submission."""
  header = ('| workload | submission | steps to target | seconds to target | '
            'final validation metric | target | trials reached / run | diverged |')
  lines = [header, '|' + '---|' * 8]
  for r in rows:
    lines.append(
        f'| {r["workload"]} | {r["submission"]} | {_fmt(r["steps_to_target"], 0)} | '
        f'{_fmt(r["seconds_to_target"])} | {_fmt(r["final_validation_metric"], 4)} | '
        f'{r["target_metric_name"]} {_fmt(r["validation_target_value"], 4)} | '
        f'{r["trials_reached"]} / {r["trials"]} | {r["diverged"]} |')
  return '\n'.join(lines)


def build_report(experiment_dir: str) -> Dict[str, Any]:
  summaries = scoring.load_trial_summaries(experiment_dir)
  return {'rows': scoring.leaderboard_rows(summaries)}


def render(experiment_dir: str, fmt: str = 'markdown') -> str:
  """The report of `experiment_dir` as Markdown or JSON (a list of leaderboard rows)."""
  report = build_report(experiment_dir)
  if fmt == 'json':
    return json.dumps(report['rows'], indent=2, sort_keys=True)
  if not report['rows']:
    return f'no finished trials under {experiment_dir}'
  return markdown_table(report['rows'])
