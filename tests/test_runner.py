"""Runner semantics, checked against a workload whose metric is a known function of the step
(`<split>/score = global_step / 100`), so every expected step below is computed by hand."""

import csv
import json
import os

import pytest

from benchmark import experiment, load_results, results, scoring, submission_loader, trial
from benchmark import tuning
from contract import errors
from tests.fake_workload import FakeWorkload

SUBMISSION = 'tests/fake_submission.py'
POINT = {'learning_rate': 0.05}


@pytest.fixture(scope='module')
def submission():
  return submission_loader.load_submission(SUBMISSION)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _run(tmp_path, submission, workload, point=POINT, **settings):
  return trial.run_trial(workload, submission, point, str(tmp_path),
                         trial.TrialSettings(rng_seed=0, **settings), log=lambda m: None)


def test_target_at_first_qualifying_eval_and_eval_time_excluded(tmp_path, submission):
  workload = FakeWorkload(eval_sleep_sec=0.2, target=0.25, eval_period_steps=10)
  result = _run(tmp_path, submission, workload, max_global_steps=100)
  # score = step / 100 > 0.25 first at the eval of step 30.
  assert result['status'] == results.STATUS_TARGET_REACHED
  assert result['steps_to_target'] == 30 and result['global_steps'] == 30
  assert result['num_evals'] == 3
  # Each evaluation slept 0.2 s on each of three splits: none of it is submission time.
  assert result['accumulated_eval_time'] >= 3 * 3 * 0.2
  assert result['seconds_to_target'] == pytest.approx(result['accumulated_submission_time'])
  assert result['seconds_to_target'] < result['total_duration'] - 1.8
  split = result['time_split']
  assert sum(split.values()) == pytest.approx(result['total_duration'], rel=1e-9)
  assert split['evaluation'] == pytest.approx(result['accumulated_eval_time'])
  assert result['steps_per_phase'] == {'even': 15, 'odd': 15}
  assert {'compile_and_first_step/even', 'steps/even', 'steps/odd'} <= set(split)

  rows = _read_csv(tmp_path / results.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows] == [10, 20, 30]
  upstream_columns = {'global_step', 'preemption_count', 'score', 'total_duration',
                      'accumulated_submission_time', 'accumulated_eval_time',
                      'accumulated_logging_time', 'train/loss', 'train/score', 'validation/loss',
                      'validation/score', 'validation/num_examples', 'test/loss', 'test/score',
                      'test/num_examples'}
  assert set(rows[0]) == upstream_columns and list(rows[0]) == sorted(rows[0])
  assert rows[0]['preemption_count'] == '0' and rows[0]['validation/num_examples'] == '256'
  assert [float(r['validation/score']) for r in rows] == [0.1, 0.2, 0.3]
  assert float(rows[-1]['score']) == pytest.approx(result['seconds_to_target'])
  assert json.load(open(tmp_path / results.HPARAMS_FILE)) == POINT
  assert json.load(open(tmp_path / results.SUMMARY_FILE))['steps_to_target'] == 30


def test_targets_are_strict(tmp_path, submission):
  # 0.3 == target at step 30 is not beyond it: the target is first met at step 40.
  result = _run(tmp_path, submission, FakeWorkload(target=0.3), max_global_steps=100)
  assert result['steps_to_target'] == 40


def test_training_goes_on_until_validation_and_test_targets(tmp_path, submission):
  both = _run(tmp_path / 'both', submission, FakeWorkload(target=0.25, test_target=0.45),
              max_global_steps=100)
  assert both['steps_to_target'] == 30  # validation first beyond 0.25
  assert both['global_steps'] == 50 and both['test_goal_reached']  # test first beyond 0.45
  assert both['status'] == results.STATUS_TARGET_REACHED
  no_test = _run(tmp_path / 'no_test', submission, FakeWorkload(target=0.25, num_test_examples=0),
                 max_global_steps=100)
  assert no_test['global_steps'] == 30  # no test split, no test goal


def test_budget_without_target_and_final_eval(tmp_path, submission):
  result = _run(tmp_path, submission, FakeWorkload(target=0.9), max_global_steps=25)
  assert result['status'] == results.STATUS_BUDGET_EXHAUSTED
  assert result['steps_to_target'] is None and result['seconds_to_target'] is None
  rows = _read_csv(tmp_path / results.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows] == [10, 20, 25]
  assert float(rows[-1]['train/loss']) < float(rows[0]['train/loss'])  # training happened


def test_target_first_reached_after_the_budget_is_not_credited(tmp_path, submission):
  # Steps sleep 0.1 s, so the eval of step 30 (the first beyond 0.25) comes after >= 3 s of
  # submission time: past the 2.9 s budget, it does not happen and nothing is credited.
  budget = 2.9
  result = _run(tmp_path, submission, FakeWorkload(target=0.25),
                dict(POINT, step_sleep_sec=0.1), max_global_steps=100, max_runtime_sec=budget)
  assert result['status'] == results.STATUS_BUDGET_EXHAUSTED
  assert result['steps_to_target'] is None and not result['validation_goal_reached']
  assert 20 <= result['global_steps'] <= 30 and 'max_runtime_sec' in result['reason']
  rows = _read_csv(tmp_path / results.MEASUREMENTS_FILE)
  assert all(float(r['accumulated_submission_time']) < budget for r in rows)
  assert all(float(r['validation/score']) <= 0.25 for r in rows)


def test_prepare_for_eval_is_timed_and_init_optimizer_state_is_not(tmp_path, submission):
  point = dict(POINT, init_sleep_sec=1.0, prepare_sleep_sec=0.3)
  result = _run(tmp_path, submission, FakeWorkload(target=0.9), point, max_global_steps=20)
  split = result['time_split']
  assert split['optimizer_init'] >= 1.0 and split['prepare_for_eval'] >= 2 * 0.3
  timed = sum(v for k, v in split.items() if k.split('/')[0] in (
      'data_selection', 'compile_and_first_step', 'steps', 'prepare_for_eval'))
  assert result['accumulated_submission_time'] == pytest.approx(timed, rel=1e-9)
  assert result['accumulated_submission_time'] < result['total_duration'] - 1.0


def test_training_complete_error_ends_the_trial_cleanly(tmp_path, submission):
  result = _run(tmp_path, submission, FakeWorkload(target=0.9),
                dict(POINT, complete_at_step=15), max_global_steps=100)
  assert result['status'] == results.STATUS_COMPLETE
  assert result['global_steps'] == 16  # the raising call still counts as a step, as upstream
  rows = _read_csv(tmp_path / results.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows] == [10, 16]  # a final evaluation follows


def test_update_params_gets_eval_results_and_train_state(tmp_path, submission):
  received = submission.update_params.__globals__['RECEIVED']
  received.clear()
  _run(tmp_path, submission, FakeWorkload(target=0.9), max_global_steps=25)
  by_step = {step: (evals, state) for step, evals, state in received}
  assert by_step[5][0] == []
  evals, state = by_step[15]
  assert [step for step, _ in evals] == [10]
  assert evals[0][1]['validation/score'] == 0.1 and evals[0][1]['global_step'] == 10
  assert evals[0][1]['score'] == evals[0][1]['accumulated_submission_time'] > 0  # as upstream's
  assert [step for step, _ in by_step[24][0]] == [10, 20]
  assert state['accumulated_submission_time'] > 0 and not state['validation_goal_reached']


def test_time_based_evaluation_follows_the_first_step_then_the_period(tmp_path, submission):
  workload = FakeWorkload(target=0.9, eval_period_steps=None, eval_period_time_sec=3600)
  _run(tmp_path, submission, workload, max_global_steps=12)
  rows = _read_csv(tmp_path / results.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows] == [1, 12]  # upstream: last_eval_time starts at 0


def test_nan_loss_stops_trial_as_diverged_and_keeps_csv(tmp_path, submission):
  result = _run(tmp_path, submission, FakeWorkload(target=0.9, eval_period_steps=5,
                                                   nan_after_step=13), max_global_steps=50)
  assert result['status'] == results.STATUS_DIVERGED
  assert 'non-finite' in result['reason'] and result['global_steps'] < 50
  rows = _read_csv(tmp_path / results.MEASUREMENTS_FILE)
  assert [int(r['global_step']) for r in rows][:2] == [5, 10]


def test_experiment_resumes_in_upstream_layout(tmp_path, submission):
  workload = FakeWorkload(target=0.15, eval_period_steps=10)
  space = tuning.parse_search_space({'learning_rate': {'min': 0.01, 'max': 0.1, 'scaling': 'log'}})
  settings = experiment.ExperimentSettings(
      experiment_dir=str(tmp_path), experiment_name='exp', num_tuning_trials=2, num_studies=2,
      trial=trial.TrialSettings(rng_seed=0, max_global_steps=40))
  logs = []
  first = experiment.run_experiment(workload, submission, space, settings, logs.append)
  assert len(first) == 4 and all(s['steps_to_target'] == 20 for s in first)
  assert [s['rng_seed'] for s in first] == [0, 1, 1000, 1001]
  half = os.path.join(str(tmp_path), 'exp', 'study_1', 'fake_small_jax', 'trial_2')
  for name in (results.MEASUREMENTS_FILE, results.HPARAMS_FILE, 'meta_data_0.json',
               'flags_0.json'):
    assert os.path.isfile(os.path.join(half, name)), name
  meta = json.load(open(os.path.join(half, 'meta_data_0.json')))
  assert meta['workload.target_metric_name'] == 'score' and meta['rng_seed'] == 1001
  assert meta['jax'] and 'git_commit' in meta
  # A half-finished trial (no summary) restarts; finished ones are skipped.
  os.remove(os.path.join(half, results.SUMMARY_FILE))
  logs.clear()
  second = experiment.run_experiment(workload, submission, space, settings, logs.append)
  assert sum('skipped' in m for m in logs) == 3
  assert [s['hyperparameters'] for s in second] == [s['hyperparameters'] for s in first]
  other = tuning.parse_search_space({'learning_rate': {'feasible_points': [0.5]}})
  with pytest.raises(errors.BenchmarkError, match='other hyperparameters'):
    experiment.run_experiment(workload, submission, other, settings, logs.append)
  rows = scoring.leaderboard_rows(load_results.load_trial_summaries(str(tmp_path)))
  assert len(rows) == 1 and rows[0]['steps_to_target'] == 20 and rows[0]['trials'] == 4


def test_hparam_slice_and_self_tuning(tmp_path, submission):
  space = tuning.parse_search_space({'learning_rate': {'min': 0.01, 'max': 0.1, 'scaling': 'log'}})
  common = dict(experiment_dir=str(tmp_path), num_tuning_trials=4,
                trial=trial.TrialSettings(rng_seed=0, max_global_steps=10))
  sliced = experiment.run_experiment(
      FakeWorkload(), submission, space,
      experiment.ExperimentSettings(experiment_name='slice', hparam_start_index=1,
                                    hparam_end_index=3, **common), lambda m: None)
  drawn = tuning.generate_trials(space, 4, seed=0)
  assert [s['hyperparameters'] for s in sliced] == drawn[1:3]
  assert sorted(os.listdir(tmp_path / 'slice' / 'study_0' / 'fake_small_jax')) == [
      'trial_2', 'trial_3']
  self_tuned = experiment.run_experiment(
      FakeWorkload(), submission, None,
      experiment.ExperimentSettings(experiment_name='self', tuning_ruleset='self', **common),
      lambda m: None)
  assert len(self_tuned) == 1 and self_tuned[0]['hyperparameters'] is None
  assert self_tuned[0]['max_runtime_sec'] == 1.5 * FakeWorkload.max_allowed_runtime_sec
  with pytest.raises(errors.BenchmarkError, match='takes no tuning search space'):
    experiment.run_experiment(
        FakeWorkload(), submission, space,
        experiment.ExperimentSettings(experiment_name='x', tuning_ruleset='self', **common))


def test_unwritable_experiment_dir(tmp_path, submission):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  settings = experiment.ExperimentSettings(experiment_dir=str(blocker), experiment_name='exp')
  space = tuning.parse_search_space({'learning_rate': {'feasible_points': [0.1]}})
  with pytest.raises(errors.BenchmarkError, match='cannot be written'):
    experiment.run_experiment(FakeWorkload(), submission, space, settings, print)


def test_submission_loader_errors(tmp_path):
  with pytest.raises(errors.BenchmarkError, match='does not exist'):
    submission_loader.load_submission(str(tmp_path / 'nope.py'))
  partial = tmp_path / 'partial.py'
  partial.write_text('def get_batch_size(name):\n  return 1\n')
  with pytest.raises(errors.BenchmarkError,
                     match='missing required function.*init_optimizer_state, update_params, '
                           'data_selection'):
    submission_loader.load_submission(str(partial))
  broken = tmp_path / 'broken.py'
  broken.write_text('import not_a_module_anywhere\n')
  with pytest.raises(errors.BenchmarkError, match='failed to import'):
    submission_loader.load_submission(str(broken))
  with pytest.raises(errors.BenchmarkError, match='not found'):
    submission_loader.load_submission('submissions.no_such_submission')
  assert submission_loader.submission_name('submissions/ogbg/kfac_reduce.py') == 'kfac_reduce'
  assert submission_loader.submission_name('submissions.ogbg_molpcba.nesterov') == 'nesterov'
