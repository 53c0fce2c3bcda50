"""`kfac-bench report` on an experiment directory written as upstream AlgoPerf's runner writes it
(`<experiment_dir>/<submission>/study_<k>/<workload>_jax/trial_<n>/`, no trial_summary.json), and
upstream's score of it computed by hand."""

import csv
import json
import os
import subprocess
import sys

import pytest

from benchmark import load_results, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 0.77  # imagenet_vit's validation accuracy target, as its meta_data_0.json records it
COLUMNS = sorted(['accumulated_eval_time', 'accumulated_logging_time',
                  'accumulated_submission_time', 'global_step', 'preemption_count', 'score',
                  'total_duration', 'train/accuracy', 'train/loss', 'validation/accuracy',
                  'validation/loss', 'validation/num_examples', 'test/accuracy', 'test/loss',
                  'test/num_examples'])


def _upstream_trial(root, submission, trial, evals):
  """A trial folder as upstream's submission_runner.py and logger_utils write it.

  `evals`: [(global_step, submission seconds, validation accuracy)].
  """
  trial_dir = os.path.join(root, submission, 'study_0', 'imagenet_vit_jax', f'trial_{trial}')
  os.makedirs(trial_dir)
  with open(os.path.join(trial_dir, 'eval_measurements.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    for step, seconds, accuracy in evals:
      writer.writerow({
          'accumulated_eval_time': 10.0, 'accumulated_logging_time': 0.5,
          'accumulated_submission_time': seconds, 'global_step': step, 'preemption_count': 0,
          'score': seconds, 'total_duration': seconds + 20.0, 'train/accuracy': accuracy,
          'train/loss': 1.0, 'validation/accuracy': accuracy, 'validation/loss': 1.0,
          'validation/num_examples': 50000, 'test/accuracy': accuracy - 0.1, 'test/loss': 1.2,
          'test/num_examples': 10000})
  with open(os.path.join(trial_dir, 'hparams.json'), 'w') as f:
    json.dump({'learning_rate': 0.001 * trial}, f)
  with open(os.path.join(trial_dir, 'meta_data_0.json'), 'w') as f:
    json.dump({'workload.target_metric_name': 'accuracy',
               'workload.validation_target_value': TARGET, 'workload.test_target_value': 0.6,
               'workload.max_allowed_runtime_sec': 69768, 'git_commit_hash': 'f00ba4',
               'python_version': '3.11.10', 'rng_seed': 17}, f)
  with open(os.path.join(trial_dir, 'flags_0.json'), 'w') as f:
    json.dump({'framework': 'jax', 'workload': 'imagenet_vit'}, f)


@pytest.fixture(scope='module')
def upstream_dir(tmp_path_factory):
  """nadamw: trial 1 beyond the target at its 3rd eval (2000 s), trial 2 at its 2nd (2500 s).
  momentum: exactly on the target at 4000 s (upstream's scoring counts it, the runner's strict
  rule does not), beyond it at 5000 s."""
  root = str(tmp_path_factory.mktemp('upstream') / 'runs')
  _upstream_trial(root, 'nadamw', 1, [(100, 500.0, 0.5), (200, 1000.0, 0.7), (300, 2000.0, 0.78)])
  _upstream_trial(root, 'nadamw', 2, [(100, 1500.0, 0.6), (200, 2500.0, 0.8)])
  _upstream_trial(root, 'momentum', 1, [(100, 2000.0, 0.6), (200, 4000.0, TARGET),
                                        (300, 5000.0, 0.79)])
  return root


def test_summaries_are_derived_from_the_measurements(upstream_dir):
  trials = {(t['submission'], os.path.basename(t['trial_dir'])): t
            for t in load_results.load_trial_summaries(upstream_dir)}
  assert set(trials) == {('nadamw', 'trial_1'), ('nadamw', 'trial_2'), ('momentum', 'trial_1')}
  first = trials[('nadamw', 'trial_1')]
  assert (first['workload_variant'], first['study']) == ('imagenet_vit', 0)
  assert (first['steps_to_target'], first['seconds_to_target']) == (300, 2000.0)
  assert first['hyperparameters'] == {'learning_rate': 0.001}
  assert trials[('momentum', 'trial_1')]['steps_to_target'] == 300  # strict: 0.77 is not beyond


def test_report_and_upstream_score(upstream_dir):
  rows = {r['submission']: r for r in report.build_report(upstream_dir)['rows']}
  assert rows['nadamw']['seconds_to_target'] == 2000.0  # ours: the least time
  assert rows['momentum']['seconds_to_target'] == 5000.0
  upstream = report.build_report(upstream_dir, score_method='upstream')['scores']
  # Upstream: nadamw's trial 2 (earliest eval index) at 2500 s; momentum at 4000 s (>=): ratio
  # 1.6, a step between taus t_19 and t_20 of 1 + 3i/99; rho over 8 base workloads.
  h = 3 / 99
  assert upstream['workloads'] == ['imagenet_vit']
  assert upstream['seconds']['nadamw'] == pytest.approx(3 / 8 / 3, rel=1e-12)
  assert upstream['seconds']['momentum'] == pytest.approx(
      ((4 - (1 + 20 * h)) + h / 2) / 8 / 3, rel=1e-12)


def test_cli_report_on_upstream_layout(upstream_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-m', 'benchmark.cli', 'report', upstream_dir,
                         '--score=upstream'], capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert 'Performance profiles and scores (upstream method)' in done.stdout
  assert '| nadamw | 300 | 2000.00 |' in done.stdout
  assert done.stderr == ''
