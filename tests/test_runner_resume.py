"""Checkpoints and resume in the runner, and the submission's diagnostics: a trial killed after a
checkpoint and run again continues to the same evaluation rows as an uninterrupted one.

The kill is an exception no `except` of the runner catches (like `kill -9`, nothing is written
after it); `scripts/kill_resume.py` does it with SIGKILL on whole processes."""

import csv
import errno
import json
import os

import jax.numpy as jnp
import pytest

from benchmark import (checkpoint, experiment, load_results, report, results, scoring,
                       submission_loader, time_split, trial, tuning)
from contract import errors
from tests.fake_workload import FakeWorkload

NESTEROV = {'learning_rate': 0.05, 'one_minus_beta1': 0.1, 'weight_decay': 1e-4,
            'warmup_factor': 0.1, 'end_factor': 0.1}  # A stateful optimiser: momentum, schedule.
TIME_COLUMNS = set(results.TIME_COLUMNS) | {'preemption_count'}


class Killed(BaseException):
  """Stands for SIGKILL: not an Exception, so the runner writes nothing more."""


@pytest.fixture(scope='module')
def nesterov():
  loaded = submission_loader.load_submission('submissions/nesterov.py')
  return loaded._replace(get_batch_size=lambda workload_name: 32)  # Its table has no `fake`.


def _killed_at(submission, step: int):
  """`submission` whose `update_params` is killed when asked for step `step`."""
  def update_params(*args, **kwargs):
    if args[9] == step:  # global_step
      raise Killed
    return submission.update_params(*args, **kwargs)
  return submission._replace(update_params=update_params)


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _run(directory, submission, logs=None, **settings):
  settings = dict(dict(rng_seed=3, max_global_steps=40), **settings)
  return trial.run_trial(FakeWorkload(target=0.9), submission, NESTEROV, str(directory),
                         trial.TrialSettings(**settings),
                         log=(logs.append if logs is not None else lambda m: None))


def _assert_same_rows(resumed, clean):
  assert [r['global_step'] for r in resumed] == [r['global_step'] for r in clean]
  for got, want in zip(resumed, clean):
    for column in set(want) - TIME_COLUMNS:
      assert float(got[column]) == pytest.approx(float(want[column]), rel=1e-6, abs=1e-6), column


@pytest.mark.parametrize('every_secs, resumed_from', [(3600.0, 20), (0.0, 25)])
def test_a_killed_trial_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path, nesterov,
                                                                     every_secs, resumed_from):
  clean = _run(tmp_path / 'clean', nesterov)
  killed_dir = tmp_path / 'killed'
  with pytest.raises(Killed):
    _run(killed_dir, _killed_at(nesterov, 25), checkpoint_every_secs=every_secs)
  csv_path = killed_dir / results.MEASUREMENTS_FILE
  with open(csv_path, 'ab') as f:
    f.write(b'0.1,0.2,')  # A CSV append cut by the kill: a torn row.
  logs = []
  resumed = _run(killed_dir, nesterov, logs, checkpoint_every_secs=every_secs)

  assert sum('resuming' in m for m in logs) == 1
  assert f'from step {resumed_from} (preemption 1)' in next(m for m in logs if 'resuming' in m)
  rows = _rows(csv_path)
  _assert_same_rows(rows, _rows(tmp_path / 'clean' / results.MEASUREMENTS_FILE))
  # Rows up to the checkpoint's were written by the first run, later ones by the second.
  assert [r['preemption_count'] for r in rows] == ['0', '0', '1', '1']
  for key in ('status', 'global_steps', 'num_evals', 'steps_per_phase'):
    assert resumed[key] == clean[key], key
  assert ({k: v for k, v in resumed['final_metrics'].items() if k not in TIME_COLUMNS}
          == {k: v for k, v in clean['final_metrics'].items() if k not in TIME_COLUMNS})
  assert resumed['preemption_count'] == 1 and clean['preemption_count'] == 0
  split = resumed['time_split']
  assert split['resume'] > 0 and split['checkpoint'] > 0
  assert sum(split.values()) == pytest.approx(resumed['total_duration'], rel=1e-9)
  assert resumed['compile_steps_per_phase'] == {'step': 2}  # Compiled again after the resume.
  assert clean['compile_steps_per_phase'] == {'step': 1}
  per_step = time_split.time_breakdown([resumed])['phases']['step']['seconds_per_step']
  assert per_step == pytest.approx(split['steps/step'] / (40 - 2))


def test_every_row_is_written_after_its_checkpoint(tmp_path, nesterov, monkeypatch):
  seen = []
  write = checkpoint.MeasurementsWriter.write

  def checked_write(self, row):
    last = checkpoint.Checkpointer(str(tmp_path / results.CHECKPOINTS_DIR)).latest()
    seen.append((row['global_step'], last.global_step, last.csv_row['global_step'],
                 last.csv_rows_before, self.rows))
    write(self, row)

  monkeypatch.setattr(checkpoint.MeasurementsWriter, 'write', checked_write)
  _run(tmp_path, nesterov, max_global_steps=30)
  assert seen == [(step, step, step, i, i) for i, step in enumerate((10, 20, 30))]


def test_no_resume_without_checkpoints_or_when_switched_off(tmp_path, nesterov):
  with pytest.raises(Killed):
    _run(tmp_path, _killed_at(nesterov, 25))
  restarted = _run(tmp_path, nesterov, resume=False)
  assert restarted['preemption_count'] == 0 and 'resume' not in restarted['time_split']
  assert [r['preemption_count'] for r in _rows(tmp_path / results.MEASUREMENTS_FILE)] == ['0'] * 4
  unsaved = _run(tmp_path / 'unsaved', nesterov, save_checkpoints=False)
  assert not os.path.exists(tmp_path / 'unsaved' / results.CHECKPOINTS_DIR)
  assert 'checkpoint' not in unsaved['time_split']


def test_experiment_rerun_continues_a_killed_trial_and_writes_its_run_files(tmp_path, nesterov):
  space = tuning.parse_search_space({name: {'feasible_points': [value]}
                                     for name, value in NESTEROV.items()})
  settings = experiment.ExperimentSettings(
      experiment_dir=str(tmp_path), experiment_name='exp',
      trial=trial.TrialSettings(rng_seed=0, max_global_steps=30))
  with pytest.raises(Killed):
    experiment.run_experiment(FakeWorkload(target=0.9), _killed_at(nesterov, 15), space,
                              settings, lambda m: None)
  logs = []
  (summary,) = experiment.run_experiment(FakeWorkload(target=0.9), nesterov, space, settings,
                                         logs.append)
  folder = tmp_path / 'exp' / 'study_0' / 'fake_small_jax' / 'trial_1'
  assert summary['preemption_count'] == 1 and any('resuming' in m for m in logs)
  for p in (0, 1):
    assert json.load(open(folder / f'meta_data_{p}.json'))['preemption_count'] == p
    assert (folder / f'flags_{p}.json').is_file()
  assert json.load(open(folder / results.SUMMARY_FILE))['preemption_count'] == 1
  assert [r['preemption_count'] for r in _rows(folder / results.MEASUREMENTS_FILE)] == [
      '0', '1', '1']
  os.remove(folder / results.SUMMARY_FILE)  # Unfinished again, now with other hyperparameters.
  other = tuning.parse_search_space({name: {'feasible_points': [value * 2]}
                                     for name, value in NESTEROV.items()})
  with pytest.raises(errors.BenchmarkError, match='other hyperparameters'):
    experiment.run_experiment(FakeWorkload(target=0.9), nesterov, other, settings, print)


def _reporting(submission, rejections_per_step: int):
  """`submission` whose optimiser state counts steps, and whose diagnostics say that one layer
  had every curvature update since the start rejected (`rejections_per_step` a step)."""
  def update_params(*args, **kwargs):
    _, params, model_state = submission.update_params(*args, **kwargs)
    return args[7] + rejections_per_step, params, model_state

  def init_optimizer_state(*args):
    return jnp.zeros([], jnp.int32)

  def diagnostics(optimizer_state):
    rows = [{'parameter': 'params/Dense_0/kernel', 'block': 'eigh', 'fallback': ''},
            {'parameter': 'params/Dense_0/bias', 'block': 'eigh', 'fallback': ''}]
    return {'curvature_report': 'parameter  block\nkernel  eigh\nbias  eigh',
            'curvature_report_rows': rows,
            'rejected_updates': {'Dense_0': optimizer_state, 'Dense_1': jnp.zeros([])},
            'consecutive_rejected_updates': {'Dense_0': optimizer_state, 'Dense_1': 0}}

  return submission._replace(update_params=update_params, diagnostics=diagnostics,
                             init_optimizer_state=init_optimizer_state)


@pytest.mark.parametrize('limit, degraded', [(15, True), (30, False)])
def test_rejected_curvature_updates_are_logged_and_mark_a_trial_degraded(tmp_path, limit,
                                                                          degraded):
  submission = _reporting(submission_loader.load_submission('tests/fake_submission.py'), 1)
  logs = []
  result = _run(tmp_path, submission, logs, max_global_steps=30,
                max_consecutive_rejections=limit)
  assert (tmp_path / results.CURVATURE_REPORT_FILE).read_text().startswith('parameter  block')
  assert sum('2 parameters: 2 preconditioned (eigh 2), 0 passed through' in m
             for m in logs) == 1
  counts = [m for m in logs if 'rejected curvature updates' in m]
  assert [m.split('updates ')[1].split()[0] for m in counts] == ['10', '20', '30']
  assert result['rejected_updates'] == 30
  assert result['rejected_updates_per_layer'] == {'Dense_0': 30, 'Dense_1': 0}
  assert result['max_consecutive_rejections_per_layer'] == {'Dense_0': 30, 'Dense_1': 0}
  assert result['degraded'] is degraded
  assert result['degraded_layers'] == (['Dense_0'] if degraded else [])
  assert any('DEGRADED' in m for m in counts) is degraded


def test_a_submission_without_diagnostics_reports_nothing(tmp_path):
  result = _run(tmp_path, submission_loader.load_submission('tests/fake_submission.py'),
                max_global_steps=10)
  assert result['rejected_updates'] == 0 and result['degraded'] is False
  assert not (tmp_path / results.CURVATURE_REPORT_FILE).exists()


def test_the_report_lists_degraded_trials(tmp_path):
  submission = _reporting(submission_loader.load_submission('tests/fake_submission.py'), 1)
  space = tuning.parse_search_space({'learning_rate': {'feasible_points': [0.05]}})
  settings = experiment.ExperimentSettings(
      experiment_dir=str(tmp_path), experiment_name='exp', trial=trial.TrialSettings(
          rng_seed=0, max_global_steps=20, max_consecutive_rejections=15))
  experiment.run_experiment(FakeWorkload(target=0.9), submission, space, settings, lambda m: None)
  (row,) = scoring.leaderboard_rows(load_results.load_trial_summaries(str(tmp_path / 'exp')))
  assert row['degraded'] == 1 and row['degraded_trials'][0]['layers'] == ['Dense_0']
  page = report.render(str(tmp_path / 'exp'), 'markdown')
  assert 'Degraded trials' in page and '| Dense_0 | 20 |' in page


@pytest.mark.slow  # One K-FAC compilation: about 10 s on 2 busy cores.
def test_the_kfac_submission_reports_its_curvature_and_no_rejections(tmp_path):
  kfac_reduce = submission_loader.load_submission('submissions/kfac_reduce.py')
  point = dict(NESTEROV, damping=1e-3, inverse_update_every=2)
  logs = []
  result = trial.run_trial(FakeWorkload(target=0.9),
                           kfac_reduce._replace(get_batch_size=lambda workload_name: 32), point,
                           str(tmp_path), trial.TrialSettings(rng_seed=0, max_global_steps=10),
                           log=logs.append)
  text = (tmp_path / results.CURVATURE_REPORT_FILE).read_text()
  rows = [line.split() for line in text.splitlines()[2:]]  # Below the header and its rule.
  assert sorted(row[0].rsplit('/', 1)[-1] for row in rows) == ['bias', 'kernel']
  assert all(row[2] == 'eigh' and 'reduce' in row for row in rows)
  assert any('2 parameters: 2 preconditioned (eigh 2)' in m for m in logs)
  assert list(result['rejected_updates_per_layer'].values()) == [0] and not result['degraded']


def test_a_full_disk_at_a_checkpoint_stops_the_trial_and_keeps_what_was_written(tmp_path,
                                                                                 monkeypatch):
  saves = []
  save = checkpoint.ocp.Checkpointer.save

  def second_save_fails(self, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(self, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.Checkpointer, 'save', second_save_fails)
  submission = submission_loader.load_submission('tests/fake_submission.py')
  with pytest.raises(errors.BenchmarkError, match='disk is full'):
    _run(tmp_path, submission, max_global_steps=30)
  summary = json.load(open(tmp_path / results.SUMMARY_FILE))
  assert summary['status'] == results.STATUS_FAILED and 'disk is full' in summary['reason']
  # The row of step 20 waits for its checkpoint: only step 10's row and checkpoint are on disk.
  assert [r['global_step'] for r in _rows(tmp_path / results.MEASUREMENTS_FILE)] == ['10']
  monkeypatch.undo()
  os.remove(tmp_path / results.SUMMARY_FILE)
  logs = []
  resumed = _run(tmp_path, submission, logs, max_global_steps=30)
  assert any('from step 10 (preemption 1)' in m for m in logs)
  assert resumed['global_steps'] == 30 and resumed['num_evals'] == 3
