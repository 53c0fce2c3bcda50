"""Runner semantics, checked against a workload whose metric is a known function of the step."""

import csv
import json
import os

import pytest

from benchmark import runner, scoring, tuning
from tests.fake_workload import FakeWorkload
from contract import errors
from benchmark import submission_loader

SUBMISSION = 'tests/fake_submission.py'


@pytest.fixture(scope='module')
def submission():
  return submission_loader.load_submission(SUBMISSION)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_target_at_first_qualifying_eval_and_eval_time_excluded(tmp_path, submission):
  workload = FakeWorkload(eval_sleep_sec=0.3, target=0.3, eval_period_steps=10)
  settings = runner.TrialSettings(rng_seed=0, max_global_steps=100, stop_on_target=True)
  result = runner.run_trial(workload, submission, {'learning_rate': 0.05}, str(tmp_path),
                            settings, log=lambda m: None)
  # score = step / 100 >= 0.3 first at the eval of step 30.
  assert result['status'] == runner.STATUS_TARGET_REACHED
  assert result['steps_to_target'] == 30
  assert result['global_steps'] == 30
  assert result['num_evals'] == 3
  # Each evaluation slept 0.3 s on each of two splits: none of it is submission time.
  assert result['accumulated_eval_time'] >= 3 * 2 * 0.3
  assert result['seconds_to_target'] == pytest.approx(result['accumulated_submission_time'])
  assert result['seconds_to_target'] < result['total_duration'] - 1.8
  split = result['time_split']
  assert sum(split.values()) == pytest.approx(result['total_duration'], rel=1e-9)
  assert split['evaluation'] == pytest.approx(result['accumulated_eval_time'])
  assert result['steps_per_phase'] == {'even': 15, 'odd': 15}
  assert {'compile_and_first_step/even', 'steps/even', 'steps/odd'} <= set(split)

  rows = _read_csv(tmp_path / runner.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows] == [10, 20, 30]
  for column in ('global_step', 'accumulated_submission_time', 'accumulated_eval_time',
                 'validation/score', 'validation/loss', 'train/score', 'train/loss',
                 'hyperparameters'):
    assert column in rows[0]
  assert json.loads(rows[0]['hyperparameters']) == {'learning_rate': 0.05}
  assert [float(r['validation/score']) for r in rows] == [0.1, 0.2, 0.3]
  assert float(rows[-1]['accumulated_submission_time']) == pytest.approx(result['seconds_to_target'])
  assert json.load(open(tmp_path / runner.HPARAMS_FILE)) == {'learning_rate': 0.05}
  assert json.load(open(tmp_path / runner.SUMMARY_FILE))['steps_to_target'] == 30


def test_budget_without_target_and_final_eval(tmp_path, submission):
  workload = FakeWorkload(target=0.9, eval_period_steps=10)
  settings = runner.TrialSettings(rng_seed=0, max_global_steps=25)
  result = runner.run_trial(workload, submission, {'learning_rate': 0.05}, str(tmp_path),
                            settings, log=lambda m: None)
  assert result['status'] == runner.STATUS_BUDGET_EXHAUSTED
  assert result['steps_to_target'] is None and result['seconds_to_target'] is None
  rows = _read_csv(tmp_path / runner.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows] == [10, 20, 25]
  # Training really happened: the loss went down.
  assert float(rows[-1]['train/loss']) < float(rows[0]['train/loss'])


def test_nan_loss_stops_trial_as_diverged_and_keeps_csv(tmp_path, submission):
  workload = FakeWorkload(target=0.9, eval_period_steps=5, nan_after_step=13)
  settings = runner.TrialSettings(rng_seed=0, max_global_steps=50)
  result = runner.run_trial(workload, submission, {'learning_rate': 0.05}, str(tmp_path),
                            settings, log=lambda m: None)
  assert result['status'] == runner.STATUS_DIVERGED
  assert 'non-finite' in result['reason']
  assert result['global_steps'] < 50
  rows = _read_csv(tmp_path / runner.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows][:2] == [5, 10]


def test_experiment_resumes_and_refuses_other_hyperparameters(tmp_path, submission):
  workload = FakeWorkload(target=0.2, eval_period_steps=10)
  space = tuning.parse_search_space({'learning_rate': {'min': 0.01, 'max': 0.1, 'scaling': 'log'}})
  settings = runner.ExperimentSettings(
      experiment_dir=str(tmp_path), experiment_name='exp', num_tuning_trials=2, num_studies=2,
      trial=runner.TrialSettings(rng_seed=0, max_global_steps=40))
  logs = []
  first = runner.run_experiment(workload, submission, 'fake_sgd', space, settings, logs.append)
  assert len(first) == 4 and all(s['steps_to_target'] == 20 for s in first)
  # A half-finished trial (no summary) restarts; finished ones are skipped.
  half = os.path.join(str(tmp_path), 'exp', 'fake_small', 'fake_sgd', 'study_1', 'trial_2')
  os.remove(os.path.join(half, runner.SUMMARY_FILE))
  logs.clear()
  second = runner.run_experiment(workload, submission, 'fake_sgd', space, settings, logs.append)
  assert sum('skipped' in m for m in logs) == 3
  assert [s['hyperparameters'] for s in second] == [s['hyperparameters'] for s in first]
  other = tuning.parse_search_space({'learning_rate': {'feasible_points': [0.5]}})
  with pytest.raises(errors.BenchmarkError, match='other hyperparameters'):
    runner.run_experiment(workload, submission, 'fake_sgd', other, settings, logs.append)
  rows = scoring.leaderboard_rows(scoring.load_trial_summaries(str(tmp_path)))
  assert len(rows) == 1 and rows[0]['steps_to_target'] == 20 and rows[0]['trials'] == 4
  metadata = json.load(open(os.path.join(str(tmp_path), 'exp', runner.METADATA_FILE)))
  assert metadata['runs'][0]['jax'] and 'git_commit' in metadata['runs'][0]


def test_unwritable_experiment_dir(tmp_path, submission):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  settings = runner.ExperimentSettings(experiment_dir=str(blocker), experiment_name='exp')
  space = tuning.parse_search_space({'learning_rate': {'feasible_points': [0.1]}})
  with pytest.raises(errors.BenchmarkError, match='cannot be written'):
    runner.run_experiment(FakeWorkload(), submission, 'fake_sgd', space, settings, print)


def test_submission_loader_errors(tmp_path):
  with pytest.raises(errors.BenchmarkError, match='does not exist'):
    submission_loader.load_submission(str(tmp_path / 'nope.py'))
  partial = tmp_path / 'partial.py'
  partial.write_text('def get_batch_size(name):\n  return 1\n')
  with pytest.raises(errors.BenchmarkError,
                     match='missing required function.*init_optimizer_state, update_params, data_selection'):
    submission_loader.load_submission(str(partial))
  broken = tmp_path / 'broken.py'
  broken.write_text('import not_a_module_anywhere\n')
  with pytest.raises(errors.BenchmarkError, match='failed to import'):
    submission_loader.load_submission(str(broken))
  with pytest.raises(errors.BenchmarkError, match='not found'):
    submission_loader.load_submission('submissions.no_such_submission')
  assert submission_loader.submission_name('submissions/ogbg_molpcba/kfac_reduce.py') == 'kfac_reduce'
  assert submission_loader.submission_name('submissions.ogbg_molpcba.nesterov') == 'nesterov'
