"""The report of a synthetic experiment directory: files, numbers, figures and the CLI formats;
and of a directory in upstream AlgoPerf's layout as upstream's runner writes it (no summaries)."""

import base64
import csv
import json
import os
import re
import subprocess
import sys

import pytest
from matplotlib import image as mpl_image

from benchmark import report, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
OGBG, CIFAR = 'ogbg_small', 'cifar_small'
METRICS = {OGBG: ('mean_average_precision', 0.28), CIFAR: ('accuracy', 0.85)}


def _write_trial(root, workload, submission, study, trial, *, seconds=None, steps=None,
                 final_steps=None, status=None, phases=(('plain', 0.01),)):
  """A finished trial as the runner writes it (upstream's layout, one experiment folder per
  submission): hparams, measurements CSV, meta data and summary.

  The validation metric climbs linearly to the target at `steps` (or to 90% of it at
  `final_steps` when the target is missed); the time split is made of `phases` (name, seconds per
  step), independent of `seconds`.
  """
  metric, target = METRICS[workload]
  trial_dir = results.trial_dir(os.path.join(root, submission), study, workload, trial)
  os.makedirs(trial_dir)
  hparams = {'learning_rate': 0.01 * (trial + 1), 'damping': 1e-3 * (study + 1)}
  last_step = steps or final_steps
  last_value = target if steps else 0.9 * target
  seconds_per_step = (seconds / steps) if steps else 0.1
  evals = [(last_step * k // 4, last_value * k / 4) for k in range(1, 5)]
  columns = ['accumulated_eval_time', 'accumulated_logging_time', 'accumulated_submission_time',
             'global_step', 'preemption_count', 'score', 'total_duration', f'validation/{metric}']
  with open(os.path.join(trial_dir, results.MEASUREMENTS_FILE), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for step, value in evals:
      writer.writerow([0.5, 0.01, step * seconds_per_step, step, 0, step * seconds_per_step,
                       step * seconds_per_step + 1.0, value])
  with open(os.path.join(trial_dir, results.HPARAMS_FILE), 'w') as f:
    json.dump(hparams, f)
  with open(os.path.join(trial_dir, 'meta_data_0.json'), 'w') as f:
    json.dump({'jax': '0.10.0', 'git_commit': 'def5678' if submission == 'kfac_reduce'
               else 'abc1234', 'rng_seed': 1000 * study + trial}, f)
  steps_per_phase = {p: last_step // len(phases) for p, _ in phases}
  split = {'optimizer_init': 0.5, 'data_selection': 0.5}
  for phase, per_step in phases:
    split[f'compile_and_first_step/{phase}'] = 1.0
    split[f'steps/{phase}'] = per_step * (steps_per_phase[phase] - 1)
  submission_time = sum(split.values())
  split.update({'model_init_and_input_pipeline': 2.0, 'evaluation': 3.0, 'logging': 0.1})
  summary = {
      'workload': workload.rsplit('_', 1)[0], 'workload_variant': workload, 'config': 'small',
      'submission': submission, 'hyperparameters': hparams, 'rng_seed': 1000 * study + trial,
      'status': status or ('target_reached' if steps else 'budget_exhausted'),
      'reason': 'non-finite parameters after step 12' if status == 'diverged' else '',
      'global_steps': last_step, 'num_evals': 4, 'target_metric_name': metric,
      'validation_target_value': target, 'target_metric_higher_is_better': True,
      'steps_to_target': steps, 'seconds_to_target': seconds,
      'final_validation_metric': float('nan') if status == 'diverged' else last_value,
      'accumulated_submission_time': submission_time, 'total_duration': sum(split.values()),
      'time_split': split, 'steps_per_phase': steps_per_phase, 'max_runtime_sec': 500.0}
  with open(os.path.join(trial_dir, results.SUMMARY_FILE), 'w') as f:
    json.dump(summary, f)


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
  """ogbg: nesterov (one trial diverged), kfac_expand, kfac_reduce; cifar: nesterov, and a
  kfac_reduce that never reaches the target."""
  root = str(tmp_path_factory.mktemp('experiments') / 'exp')
  kfac_phases = (('plain', 0.01), ('statistics+inverse', 0.05))
  for study, (seconds, steps) in enumerate(((100.0, 1000), (140.0, 1400))):
    _write_trial(root, OGBG, 'nesterov', study, 1, seconds=seconds + 30, steps=steps + 300)
    _write_trial(root, OGBG, 'nesterov', study, 2, seconds=seconds, steps=steps)
  _write_trial(root, OGBG, 'nesterov', 1, 3, final_steps=12, status='diverged')
  for study, steps in enumerate((400, 560)):
    _write_trial(root, OGBG, 'kfac_reduce', study, 1, seconds=[50.0, 70.0][study], steps=steps,
                 phases=kfac_phases)
    _write_trial(root, OGBG, 'kfac_expand', study, 1, seconds=[90.0, 110.0][study], steps=steps,
                 phases=(('plain', 0.01), ('statistics+inverse', 0.2)))
  _write_trial(root, CIFAR, 'nesterov', 0, 1, seconds=30.0, steps=300)
  _write_trial(root, CIFAR, 'kfac_reduce', 0, 1, final_steps=800, phases=kfac_phases)
  return root


@pytest.fixture(scope='module')
def written(experiment, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('report'))
  return out, report.write_report(experiment, out)


def _cells(*values):
  return ''.join(f'<td>{v}</td>' for v in values)


def _formatted(value, spec):
  """A JSON number as the report tables show it ('-' for None)."""
  return '-' if value is None else format(value, spec)


def test_report_numbers(experiment):
  full = report.build_report(experiment)
  assert set(full) == {'rows', 'performance_profiles', 'scores', 'pairs', 'time_breakdown',
                       'metadata'}
  rows = {(r['workload'], r['submission']): r for r in full['rows']}
  reduce = rows[(OGBG, 'kfac_reduce')]
  assert (reduce['seconds_to_target'], reduce['steps_to_target']) == (60.0, 480)
  assert reduce['seconds_ratio_to_reference'] == pytest.approx(0.5)
  assert reduce['steps_ratio_to_reference'] == pytest.approx(0.4)
  assert rows[(OGBG, 'nesterov')]['diverged_or_failed_trials'][0]['trial'] == 'trial_3'
  assert rows[(CIFAR, 'kfac_reduce')]['seconds_to_target'] is None
  # Seconds ratios: ogbg nesterov 2, expand 5/3, reduce 1; cifar nesterov 1, others missed.
  ratios = full['performance_profiles']['seconds']['ratios']
  assert ratios[CIFAR] == {'kfac_expand': None, 'kfac_reduce': None, 'nesterov': 1.0}
  assert full['scores']['method'] == 'ours'
  assert full['scores']['seconds'] == pytest.approx(
      {'nesterov': (2 + 3) / 6, 'kfac_reduce': 3 / 6, 'kfac_expand': (4 - 5 / 3) / 6})
  pair, = full['pairs']
  assert (pair['baseline'], pair['candidate']) == ('kfac_expand', 'kfac_reduce')
  comparison, = pair['workloads']
  assert comparison['seconds_ratio'] == pytest.approx(0.6) and comparison['steps_ratio'] == 1.0
  assert comparison['candidate_phase_seconds_per_step'] == pytest.approx(
      {'plain': 0.01, 'statistics+inverse': 0.05})
  assert full['metadata']['environment']['git_commit'] == ['abc1234', 'def5678']
  json.dumps(full, allow_nan=False)


def test_written_files_and_html_matches_json(written):
  out, paths = written
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(['report.md', 'report.html', 'report.json', 'performance_profiles.png',
                          f'validation_{OGBG}.png', f'validation_{CIFAR}.png'])
  pngs = {}
  for name in names:
    if name.endswith('.png'):
      with open(os.path.join(out, name), 'rb') as f:
        pngs[name] = f.read()
      assert pngs[name].startswith(PNG_SIGNATURE)
      height, width, _ = mpl_image.imread(os.path.join(out, name)).shape
      assert height > 100 and width > 100
  with open(os.path.join(out, 'report.json')) as f:
    full = json.load(f)
  with open(os.path.join(out, 'report.html')) as f:
    page = f.read()

  # Self-contained: no external references, every figure embedded, identical to its PNG file.
  assert not re.search(r'(src|href)="(?!data:)', page)
  embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
  assert sorted(base64.b64decode(e) for e in embedded) == sorted(pngs.values())

  for r in full['rows']:
    assert _cells(r['submission'], _formatted(r['steps_to_target'], 'g'),
                  _formatted(r['seconds_to_target'], '.2f'),
                  _formatted(r['steps_ratio_to_reference'], '.3f'),
                  _formatted(r['seconds_ratio_to_reference'], '.3f')) in page
  assert _cells('kfac_reduce', '480', '60.00', '0.400', '0.500') in page
  for submission, score in full['scores']['seconds'].items():
    assert _cells(submission, f'{score:.3f}', f'{full["scores"]["steps"][submission]:.3f}') in page
  assert _cells('nesterov', '0.833') in page  # (2 + 3) / 6 by hand
  assert _cells(OGBG, 'nesterov', '1', 'trial_3', 'diverged', '12',
                'non-finite parameters after step 12') in page
  assert 'statistics+inverse' in page and 'abc1234, def5678' in page

  with open(os.path.join(out, 'report.md')) as f:
    markdown = f.read()
  assert '![performance profiles](performance_profiles.png)' in markdown
  assert '| kfac_reduce | 480 | 60.00 | 0.400 | 0.500 |' in markdown


def test_render_json_is_list_of_rows(experiment):
  rows = json.loads(report.render(experiment, 'json'))
  assert isinstance(rows, list) and len(rows) == 5
  for key in ('workload', 'submission', 'steps_to_target', 'seconds_to_target',
              'final_validation_metric', 'trials', 'reference_submission',
              'steps_ratio_to_reference', 'seconds_ratio_to_reference'):
    assert key in rows[0]
  assert json.loads(report.render(experiment, 'json_full')) == report.build_report(experiment)
  assert report.render(experiment).startswith('# K-FAC benchmark report')


def test_cli_report_prints_rows_and_writes_out(experiment, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', 'benchmark.cli', 'report', experiment,
                           '--format=json', f'--out={tmp_path}'], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == json.loads(report.render(experiment, 'json'))
  with open(tmp_path / 'report.json') as f:
    assert json.load(f) == report.build_report(experiment)
  assert os.path.isfile(tmp_path / 'report.html') and os.path.isfile(tmp_path / 'report.md')
