"""`scripts/bench_expand_vs_reduce.py --quick` runs and ends with its JSON rows.

Slow: the quick run compiles about 25 small programs, a minute on a quiet 2-core CPU and
several on a loaded one (`make test-slow`).
"""

import json
import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = {'statistics', 'inverse', 'precondition', 'total'}


@pytest.mark.slow
def test_quick_run_prints_json_rows_last(tmp_path):
  completed = subprocess.run(
      [sys.executable, os.path.join(REPOSITORY, 'scripts', 'bench_expand_vs_reduce.py'),
       '--quick', f'--output_dir={tmp_path}'],
      cwd=REPOSITORY, capture_output=True, text=True, timeout=1800, check=True)
  rows = json.loads(completed.stdout.strip().splitlines()[-1])
  assert rows and isinstance(rows, list)
  for row in rows:
    assert {'model', 'batch_size', 'R', 'phase', 'expand_s', 'reduce_s'} <= set(row)
    assert row['phase'] in PHASES
    assert row['expand_s'] > 0 and row['reduce_s'] > 0
  # statistics and total for every case; inverse and precondition once per model.
  cases = {(row['model'], row['batch_size'], row['R']) for row in rows}
  for case in cases:
    phases = {row['phase'] for row in rows if (row['model'], row['batch_size'], row['R']) == case}
    assert {'statistics', 'total'} <= phases
  models = {row['model'] for row in rows}
  assert len(models) == 2  # The WRN and the ViT.
  for model in models:
    for phase in ('inverse', 'precondition'):
      assert sum(row['model'] == model and row['phase'] == phase for row in rows) == 1
  assert (tmp_path / 'expand_vs_reduce.md').read_text().startswith('# K-FAC-expand vs')
  assert (tmp_path / 'expand_vs_reduce.png').stat().st_size > 0
