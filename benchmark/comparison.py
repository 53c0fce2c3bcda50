"""Which submissions a report compares, and which ones the packaged jobs train: configuration
(`benchmark/comparison.json`, or a file given with `--comparison`), not names in the code.

  reference: the submission whose times the leaderboard's ratio columns divide by, when it ran on
    the workload (otherwise the best submission is the reference).
  pairs: `candidate / baseline` comparisons, each its own report section (steps, seconds and
    per-step cost ratios).
  job_submissions: what `make run` and `make study` train on each workload, in order.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional, Tuple

from contract.errors import BenchmarkError

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'comparison.json')


class Pair(NamedTuple):
  baseline: str
  candidate: str
  title: str


class Comparison(NamedTuple):
  reference: Optional[str]
  pairs: Tuple[Pair, ...]
  job_submissions: Tuple[str, ...]


def parse_comparison(raw: dict, source: str = 'comparison') -> Comparison:
  """Validates a decoded comparison file."""
  try:
    pairs = tuple(Pair(p['baseline'], p['candidate'],
                       p.get('title', f'{p["baseline"]} vs {p["candidate"]}'))
                  for p in raw.get('pairs', []))
    return Comparison(raw.get('reference'), pairs, tuple(raw.get('job_submissions', ())))
  except (TypeError, KeyError, AttributeError) as e:
    raise BenchmarkError(f'{source}: expected {{"reference", "pairs": [{{"baseline", '
                         f'"candidate"}}], "job_submissions"}}, got {raw!r}') from e


def load_comparison(path: Optional[str] = None) -> Comparison:
  """The comparison of `path` (default: `benchmark/comparison.json`)."""
  path = path or DEFAULT_PATH
  if not os.path.isfile(path):
    raise BenchmarkError(f'comparison file {path!r} does not exist')
  with open(path) as f:
    try:
      return parse_comparison(json.load(f), source=path)
    except json.JSONDecodeError as e:
      raise BenchmarkError(f'comparison file {path!r} is not valid JSON: {e}') from e
