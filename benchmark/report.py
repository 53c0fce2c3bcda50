"""The report of an experiment directory, whoever wrote it: JSON, Markdown, self-contained HTML
and PNG plots.

`report_numbers.build_report` gathers every number into one JSON-safe object; the Markdown and
HTML pages are both rendered from it through one list of blocks (`report_sections`,
`report_rendering`), so the two pages and the JSON show the same numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any, List, Optional

from benchmark import load_results
from benchmark.comparison import Comparison, load_comparison
from benchmark.report_numbers import build_report, plot_images
from benchmark.report_rendering import Heading, to_html, to_markdown
from benchmark.report_sections import leaderboard_blocks, report_blocks

MARKDOWN_FILE = 'report.md'
HTML_FILE = 'report.html'
JSON_FILE = 'report.json'
FORMATS = ('markdown', 'leaderboard', 'json', 'json_full')


def _dump_json(value: Any) -> str:
  return json.dumps(value, indent=2, sort_keys=True, allow_nan=False)


def write_report(experiment_dir: str, out_dir: str, comparison: Optional[Comparison] = None,
                 score_method: str = 'ours') -> List[str]:
  """Writes report.md, report.html, report.json (the full object) and the PNGs to `out_dir`.

  Returns:
    The paths written.
  """
  comparison = comparison or load_comparison()
  summaries = load_results.load_trial_summaries(experiment_dir)
  report = build_report(experiment_dir, summaries, comparison, score_method)
  images = plot_images(report, summaries) if report['rows'] else {}
  blocks = report_blocks(report, comparison.reference, list(images))
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


def render(experiment_dir: str, fmt: str = 'markdown', comparison: Optional[Comparison] = None,
           score_method: str = 'ours') -> str:
  """The report of `experiment_dir` as text.

  Args:
    experiment_dir: the experiment folder (or any folder above trial folders).
    fmt: 'markdown' (the page without figures), 'leaderboard' (the leaderboard tables only),
      'json' (the list of leaderboard rows) or 'json_full' (the whole report object).
    comparison: the reference and pairs (default: `benchmark/comparison.json`).
    score_method: 'ours' or 'upstream' (`report_numbers.scores`).
  """
  comparison = comparison or load_comparison()
  report = build_report(experiment_dir, None, comparison, score_method)
  if fmt == 'json':
    return _dump_json(report['rows'])
  if fmt == 'json_full':
    return _dump_json(report)
  if not report['rows']:
    return f'no finished trials under {experiment_dir}'
  if fmt == 'leaderboard':
    blocks = leaderboard_blocks(report['rows'], comparison.reference)
    end = next(i for i, b in enumerate(blocks)
               if isinstance(b, Heading) and b.text.startswith('Diverged'))
    return to_markdown(blocks[:end]).rstrip('\n')
  return to_markdown(report_blocks(report, comparison.reference)).rstrip('\n')
