"""`kfac-bench tuned`: each submission's fastest trial on target becomes its `_tuned.json`."""

import json
import os

import pytest

from benchmark import cli, results, tuning, tuned_points


def write_trial(root, submission, study, seconds, steps, learning_rate, workload='cifar'):
  folder = results.trial_dir(os.path.join(str(root), submission), study, f'{workload}_small', 1)
  os.makedirs(folder)
  results.write_json(os.path.join(folder, results.SUMMARY_FILE), {
      'workload': workload, 'submission': submission, 'seconds_to_target': seconds,
      'steps_to_target': steps, 'hyperparameters': {'learning_rate': learning_rate,
                                                    'damping': 0.1, 'inverse_method': 'brand'}})


def test_the_fastest_trial_on_target_is_written_and_replays_its_point(tmp_path):
  experiment, spaces = tmp_path / 'study', tmp_path / 'spaces'
  os.makedirs(spaces / 'cifar_wrn')
  write_trial(experiment, 'kfac_reduce_brand', 0, 50.0, 120, 0.1)
  write_trial(experiment, 'kfac_reduce_brand', 1, 41.5, 140, 0.2)  # Fastest in seconds.
  write_trial(experiment, 'kfac_reduce_brand', 2, None, None, 0.3)  # Missed the target.
  write_trial(experiment, 'mac', 0, 41.5, 90, 0.4)
  write_trial(experiment, 'mac', 1, 41.5, 80, 0.5)  # Tie in seconds: fewer steps wins.
  write_trial(experiment, 'nesterov', 0, None, None, 0.6)
  written, missing = tuned_points.write_tuned_points(str(experiment), str(spaces))
  assert [key for key, _, _ in written] == [('cifar', 'kfac_reduce_brand'), ('cifar', 'mac')]
  assert missing == [('cifar', 'nesterov')]
  assert not os.path.exists(spaces / 'cifar_wrn' / 'nesterov_tuned.json')
  space = tuning.load_search_space(str(spaces / 'cifar_wrn' / 'kfac_reduce_brand_tuned.json'))
  assert tuning.generate_trials(space, 1, seed=0) == [
      {'learning_rate': 0.2, 'damping': 0.1, 'inverse_method': 'brand'}]
  with open(spaces / 'cifar_wrn' / 'mac_tuned.json') as f:
    assert json.load(f)['learning_rate'] == {'feasible_points': [0.5]}


def test_cli_tuned_needs_one_experiment_dir():
  with pytest.raises(cli.BenchmarkError, match='usage: kfac-bench tuned'):
    cli.cmd_tuned([])
