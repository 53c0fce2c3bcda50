"""`scripts/bench_vs_kfac_jax.py --quick`, our side only: kfac-jax is not in this environment, so
the run is given a missing kfac-jax interpreter and must skip that side with a message, time
every one of our steps, and end with well-formed JSON rows. No timing assertions: the numbers
are not the benchmark. The weight-sharing model alone (`dense_seq`: a 3-d input, expand over
positions, the mean over them): about 30 s on our 2-core CPU, both models twice that.

Run as a subprocess (the script is a driver of worker processes, with absl flags of its own).
"""

import json
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPOSITORY, 'scripts', 'bench_vs_kfac_jax.py')
ROW_KEYS = {'side', 'model', 'variant', 'inverse', 'damping', 'inverse_every', 'ms_per_step',
            'ms_min', 'ms_max', 'samples', 'first_loss'}


def test_quick_run_times_our_side_and_skips_a_missing_kfac_jax(tmp_path):
  missing = tmp_path / 'no-kfac-jax' / 'python'
  report = tmp_path / 'report.md'
  done = subprocess.run(
      [sys.executable, SCRIPT, '--quick', '--models=dense_seq',
       f'--kfac_jax_python={missing}', f'--output={report}'],
      cwd=REPOSITORY, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  skip_note = f'kfac-jax side skipped: no interpreter at {missing}'
  assert skip_note in done.stderr

  rows = json.loads(done.stdout.strip().splitlines()[-1])
  assert isinstance(rows, list) and rows
  for row in rows:
    assert set(row) == ROW_KEYS
    assert row['side'] == 'ours'
    assert row['inverse_every'] in (1, 10)
    assert row['inverse'] in ('eigh', 'cholesky')
    assert 0 < row['ms_min'] <= row['ms_per_step'] <= row['ms_max']
    assert row['samples'] >= 1 and row['first_loss'] > 0
  # Every T_inv and inverse method, with the two-pass step at least.
  assert {(row['model'], row['inverse_every'], row['inverse']) for row in rows
          if row['variant'] == 'two passes'} == {
              ('dense_seq', every, inverse) for every in (1, 10) for inverse in ('eigh', 'cholesky')}

  text = report.read_text()
  assert text.startswith('# Our K-FAC step vs kfac-jax')
  assert skip_note in text and '| dense_seq | 10 | ours | two passes | cholesky |' in text
