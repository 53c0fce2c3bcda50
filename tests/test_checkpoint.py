"""Trial checkpoints: round trips, non-array leaves, kill -9 during writes, corruption, full disk.

Saved values are functions of the checkpoint's step (`_state(step)`), so every restore is checked
against a recomputation, not against what the checkpointer itself returns.
"""

from __future__ import annotations

import csv
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath

from benchmark import checkpoint
from contract.errors import BenchmarkError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FunctionState(NamedTuple):
  """A submission state holding a jitted step next to its arrays."""
  opt_state: Any
  step_fn: Optional[Callable]
  count: int


def _step_fn(x):
  return x + 1


def _params(step: int):
  return {'dense': {'kernel': jnp.full((4, 3), float(step)), 'bias': jnp.arange(3.0) + step}}


def _state(step: int, opt_state=None) -> checkpoint.TrialCheckpoint:
  params = _params(step)
  if opt_state is None:
    opt_state = FunctionState(optax.sgd(0.1, momentum=0.9).init(params), jax.jit(_step_fn), step)
  return checkpoint.TrialCheckpoint(
      params=params, optimizer_state=opt_state,
      model_state={'batch_stats': np.full((2,), step, np.float32)},
      rng=jax.random.PRNGKey(step), global_step=step, batches_drawn=2 * step,
      time_accounting={'steps/plain': 0.5 * step, 'checkpoint': 0.25}, preemption_count=step % 3,
      status={'best_metric': None if step == 0 else 1.0 / step, 'phase_steps': {'plain': step}},
      csv_rows_before=step, csv_row=_row(step))


def _row(step: int):
  return {'global_step': step, 'accumulated_submission_time': 0.5 * step,
          'validation/score': step / 100}


def _assert_state(restored: checkpoint.TrialCheckpoint, step: int) -> None:
  np.testing.assert_array_equal(restored.params['dense']['kernel'], np.full((4, 3), float(step)))
  np.testing.assert_array_equal(restored.params['dense']['bias'], np.arange(3.0) + step)
  np.testing.assert_array_equal(restored.model_state['batch_stats'], np.full((2,), step))
  np.testing.assert_array_equal(restored.rng, np.asarray(jax.random.PRNGKey(step)))
  assert (restored.global_step, restored.batches_drawn, restored.preemption_count) == (
      step, 2 * step, step % 3)
  assert restored.time_accounting == {'steps/plain': 0.5 * step, 'checkpoint': 0.25}
  assert restored.status['phase_steps'] == {'plain': step}
  assert restored.csv_rows_before == step and restored.csv_row == _row(step)


def test_round_trip_restores_every_field_and_keeps_the_last_k(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in range(4):
    assert ckpt.save(_state(step)) > 0
  assert len(ckpt.names()) == 2
  template = FunctionState(None, jax.jit(_step_fn), 0)
  restored = ckpt.latest(template)
  _assert_state(restored, 3)
  assert isinstance(restored.params['dense']['kernel'], jax.Array)
  assert isinstance(restored.model_state['batch_stats'], np.ndarray)
  assert restored.optimizer_state.step_fn is template.step_fn and restored.optimizer_state.count == 3
  trace = restored.optimizer_state.opt_state[0].trace
  np.testing.assert_array_equal(trace['dense']['kernel'], np.zeros((4, 3)))


def test_upstream_tuple_state_takes_the_update_fn_from_the_template(tmp_path):
  params = _params(1)
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)
  _, opt_state = (None, optimizer.update(jax.tree_util.tree_map(jnp.ones_like, params),
                                         opt_state, params)[1])
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(_state(1, opt_state=(opt_state, jax.jit(_step_fn))))
  fresh_update = jax.jit(lambda x: 2 * x)
  restored, update_fn = ckpt.latest((optimizer.init(params), fresh_update)).optimizer_state
  assert update_fn is fresh_update
  assert int(restored[0].count) == 1
  np.testing.assert_allclose(restored[0].mu['dense']['kernel'], 0.1 * np.ones((4, 3)))


def test_lazier_template_keeps_the_saved_structure_and_leaves_missing_functions_none(tmp_path):
  saved = FunctionState({'factors': [jnp.eye(3), jnp.eye(2) * 2], 'fn': jax.jit(_step_fn)},
                        jax.jit(_step_fn), 5)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(_state(2, opt_state=saved))
  restored = ckpt.latest(FunctionState(None, None, 0)).optimizer_state
  np.testing.assert_array_equal(restored.opt_state['factors'][1], 2 * np.eye(2))
  assert restored.opt_state['fn'] is None and restored.step_fn is None and restored.count == 5


class StepFunctions(NamedTuple):
  init: Callable
  train_step: Callable


class LazyTrainState(NamedTuple):
  """Our submissions' layout: functions built from the first batch, None before it."""
  opt_state: Any
  functions: Optional[StepFunctions]
  build: Callable


def test_a_subtree_of_functions_is_taken_whole_from_the_template(tmp_path):
  optimizer = optax.sgd(0.1, momentum=0.9)
  saved = LazyTrainState(optimizer.init(_params(1)),
                         StepFunctions(optimizer.init, jax.jit(_step_fn)), lambda batch: None)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(_state(1, opt_state=saved))
  build = lambda batch: StepFunctions(optimizer.init, jax.jit(_step_fn))  # noqa: E731
  restored = ckpt.latest(LazyTrainState(None, None, build)).optimizer_state
  assert restored.functions is None and restored.build is build
  assert type(restored.opt_state[0]) is type(saved.opt_state[0])


def test_every_leaf_kind_round_trips_with_its_type_and_dtype(tmp_path):
  key = jax.random.key(7)
  leaves = {'bf16': jnp.arange(4, dtype=jnp.bfloat16), 'i32': jnp.array(3, jnp.int32),
            'mask': np.array([True, False]), 'int': 5, 'float': 0.5, 'name': 'eigh',
            'nothing': None, 'nested': [(jnp.ones((2, 0)),)]}
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(_state(0)._replace(rng=key, model_state=leaves))
  restored = ckpt.latest()
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(key))
  np.testing.assert_array_equal(jax.random.uniform(restored.rng, (3,)), jax.random.uniform(key, (3,)))
  got = restored.model_state
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(leaves)
  for name in ('bf16', 'i32', 'mask'):
    assert got[name].dtype == leaves[name].dtype and type(got[name]) is type(leaves[name])
    np.testing.assert_array_equal(got[name], leaves[name])
  assert (got['int'], got['float'], got['name'], got['nothing']) == (5, 0.5, 'eigh', None)
  assert got['nested'][0][0].shape == (2, 0)


def _largest_file(directory: str) -> str:
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _garble(path: str) -> None:
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    f.write(bytes(255 - b for b in open(path, 'rb').read()[size // 2:size // 2 + 16]))


def _garble_meta(directory: str) -> None:
  with open(os.path.join(directory, 'meta', 'metadata'), 'w') as f:
    f.write('{"global_step": 3, "params": ')


@pytest.mark.parametrize('damage', [lambda d: _truncate(_largest_file(d)),
                                    lambda d: _garble(_largest_file(d)), _garble_meta],
                         ids=['truncated_array_file', 'garbled_array_file', 'torn_metadata'])
def test_corrupt_checkpoint_gives_one_line_and_falls_back(tmp_path, damage):
  messages = []
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, log=messages.append)
  for step in range(3):
    ckpt.save(_state(step))
  damage(os.path.join(str(tmp_path), ckpt.names()[-1]))
  _assert_state(ckpt.latest(FunctionState(None, None, 0)), 1)
  assert len(messages) == 1 and '\n' not in messages[0]
  assert 'unreadable' in messages[0] and 'falling back' in messages[0]
  assert ckpt.names() == ['ckpt_00000000', 'ckpt_00000001']


def test_full_disk_raises_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(_state(0))
  ckpt.save(_state(1))
  before = sorted(os.listdir(str(tmp_path)))

  def full_disk(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

  monkeypatch.setattr(type(epath.Path('/')), 'write_text', full_disk)
  with pytest.raises(BenchmarkError, match='disk is full'):
    ckpt.save(_state(2))
  monkeypatch.undo()
  assert sorted(os.listdir(str(tmp_path))) == before
  _assert_state(ckpt.latest(FunctionState(None, None, 0)), 1)


@pytest.fixture
def tiny_disk(tmp_path):
  """A 2 MB tmpfs (needs root and mount rights; skipped elsewhere)."""
  mount_point = tmp_path / 'tiny_disk'
  mount_point.mkdir()
  if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2M', 'tmpfs',
                                          str(mount_point)], capture_output=True).returncode:
    pytest.skip('cannot mount a small tmpfs here')
  yield str(mount_point)
  subprocess.run(['umount', str(mount_point)], check=True)


def test_a_real_full_disk_stops_the_writes_and_keeps_what_was_written(tiny_disk):
  ckpt = checkpoint.Checkpointer(os.path.join(tiny_disk, 'ckpt'))
  ckpt.save(_state(1))
  writer = checkpoint.MeasurementsWriter(os.path.join(tiny_disk, 'eval_measurements.csv'))
  writer.write(_row(1))
  noise = np.random.default_rng(0).standard_normal(600_000).astype(np.float32)  # 2.4 MB
  with pytest.raises(BenchmarkError, match='disk is full'):
    ckpt.save(_state(2)._replace(params={'w': jnp.asarray(noise)}))
  with pytest.raises(BenchmarkError, match='disk is full'):
    writer.write(dict(_row(2), **{'validation/score': 'x' * 3_000_000}))
  assert ckpt.names() == ['ckpt_00000000']
  _assert_state(ckpt.latest(FunctionState(None, None, 0)), 1)
  assert _read_rows(writer.path) == [{k: str(v) for k, v in _row(1).items()}]


def _read_rows(path: str):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_csv_resume_drops_torn_and_later_rows_and_rewrites_the_checkpoint_row(tmp_path):
  path = str(tmp_path / 'eval_measurements.csv')
  writer = checkpoint.MeasurementsWriter(path)
  for step in range(4):
    writer.write(_row(step))
  with open(path, 'a') as f:
    f.write('4,2.0,0.0')  # A row torn by a kill.
  resumed = checkpoint.MeasurementsWriter(path)
  resumed.resume(rows_before=2, pending_row=_row(2))
  resumed.write(_row(3))
  rows = _read_rows(path)
  assert [int(r['global_step']) for r in rows] == [0, 1, 2, 3] and resumed.rows == 4
  assert rows[2] == {'global_step': '2', 'accumulated_submission_time': '1.0',
                     'validation/score': '0.02'}
  with open(path) as f:
    assert f.readline() == 'accumulated_submission_time,global_step,validation/score\n'


def test_csv_full_disk_keeps_earlier_rows_and_leaves_no_torn_row(tmp_path, monkeypatch):
  path = str(tmp_path / 'eval_measurements.csv')
  writer = checkpoint.MeasurementsWriter(path)
  writer.write(_row(0))

  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'fsync', full_disk)
  with pytest.raises(BenchmarkError, match='disk is full'):
    writer.write(_row(1))
  monkeypatch.undo()
  assert [r['global_step'] for r in _read_rows(path)] == ['0']


def test_resumable_queue_continues_where_the_first_one_stopped():
  def build():
    rng = np.random.RandomState(3)
    while True:
      yield rng.randint(0, 1000, size=4)

  first = checkpoint.ResumableQueue(build)
  drawn = [next(first) for _ in range(7)]
  resumed = checkpoint.ResumableQueue(build, skip=first.batches_drawn)
  assert resumed.batches_drawn == 7
  reference = build()
  expected = [next(reference) for _ in range(10)]
  np.testing.assert_array_equal(np.stack(drawn), np.stack(expected[:7]))
  np.testing.assert_array_equal(np.stack([next(resumed) for _ in range(3)]), np.stack(expected[7:]))


# A trial-like writer: checkpoint at every "evaluation", then its CSV row, as the runner does.
_CHILD = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from benchmark import checkpoint
    from tests import test_checkpoint as t
    ckpt = checkpoint.Checkpointer({directory!r}, keep=2)
    writer = checkpoint.MeasurementsWriter({csv!r})
    last = ckpt.latest()
    step, ready = 0, False
    if last is not None:
      writer.resume(last.csv_rows_before, last.csv_row)
      step = last.global_step + 1
    while True:
      ckpt.save(t._state(step))
      writer.write(t._row(step))
      step += 1
      if not ready:
        ready = True
        print('ready', flush=True)
        if {slow_write}:  # Every later checkpoint write hangs before its metadata.
          from etils import epath
          type(epath.Path('/')).write_text = lambda *a, **k: time.sleep(600)
''')


def _kill_and_check(tmp_path, kills: int, slow_write: bool = False, seed: int = 0) -> int:
  """Kills the child `kills` times; after each kill the folder restores its newest complete
  checkpoint and the repaired CSV holds exactly the rows up to it. Returns the kills that hit a
  checkpoint write (a temporary folder was left)."""
  rng = random.Random(seed)
  directory, path = str(tmp_path / 'ckpt'), str(tmp_path / 'eval_measurements.csv')
  script = tmp_path / 'child.py'
  script.write_text(_CHILD.format(repo=REPO, directory=directory, csv=path, slow_write=slow_write))
  mid_write = 0
  for _ in range(kills):
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert child.stdout.readline().strip() == 'ready'
    if slow_write:
      while not any(checkpoint._TMP_MARK in n for n in os.listdir(directory)):
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3) if not slow_write else 0.0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    mid_write += any(checkpoint._TMP_MARK in n for n in os.listdir(directory))
    messages = []
    last = checkpoint.Checkpointer(directory, log=messages.append).latest()
    if last is None:
      assert not os.path.exists(path) or len(_read_rows(path)) <= 1
      continue
    _assert_state(last, last.global_step)
    assert not any('unreadable' in m for m in messages)
    checkpoint.MeasurementsWriter(path).resume(last.csv_rows_before, last.csv_row)
    assert _read_rows(path) == [{k: str(v) for k, v in _row(s).items()}
                                for s in range(last.global_step + 1)]
  return mid_write


def test_kill_during_checkpoint_write_restores_the_previous_checkpoint(tmp_path):
  assert _kill_and_check(tmp_path, kills=1, slow_write=True) == 1
  # The child's first write completed, its second hung: step 0 is the newest complete one.
  assert checkpoint.Checkpointer(str(tmp_path / 'ckpt')).latest().global_step == 0


def test_kill_at_random_moments_always_restores_the_last_complete_checkpoint(tmp_path):
  _kill_and_check(tmp_path, kills=2, seed=1)


@pytest.mark.slow
def test_many_kills_at_random_moments(tmp_path):
  assert _kill_and_check(tmp_path, kills=25, seed=2) > 0


def _load_kill_resume():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'kill_resume', os.path.join(REPO, 'scripts', 'kill_resume.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_run(directory, rows, summary):
  trial = os.path.join(directory, 'exp', 'study_0', 'fake_jax', 'trial_1')
  os.makedirs(trial)
  with open(os.path.join(trial, 'eval_measurements.csv'), 'w') as f:
    f.write('global_step,total_duration,validation/loss\n' + ''.join(r + '\n' for r in rows))
  with open(os.path.join(trial, 'trial_summary.json'), 'w') as f:
    f.write(summary)
  return directory


def test_kill_resume_harness_ignores_times_and_finds_torn_rows_and_changed_metrics(tmp_path):
  kill_resume = _load_kill_resume()
  summary = '{"status": "budget_exhausted", "global_steps": 20, "final_metrics": {"a": 1.0}}'
  clean = _fake_run(str(tmp_path / 'clean'), ['10,5.0,0.5', '20,9.0,0.25'], summary)
  same = _fake_run(str(tmp_path / 'same'), ['10,7.5,0.5', '20,1.0,0.2500000001'], summary)
  assert kill_resume.compare(clean, same, rtol=1e-6, atol=1e-6) == []
  torn = _fake_run(str(tmp_path / 'torn'), ['10,7.5,0.5', '20,1.0'], summary)
  assert any('torn' in p for p in kill_resume.compare(clean, torn, 1e-6, 1e-6))
  changed = _fake_run(str(tmp_path / 'changed'), ['10,7.5,0.5', '20,1.0,0.26'],
                      summary.replace('20', '21'))
  problems = kill_resume.compare(clean, changed, 1e-6, 1e-6)
  assert any('validation/loss' in p for p in problems) and any('global_steps' in p for p in problems)


@pytest.mark.slow  # Two K-FAC compilations: 26 s at load 10 on 2 cores.
def test_a_kfac_submission_resumed_from_a_checkpoint_continues_like_an_uninterrupted_one(tmp_path):
  import types
  from submissions import kfac_reduce
  from tests.fake_workload import FakeWorkload
  workload = FakeWorkload()
  hparams = types.SimpleNamespace(
      learning_rate=0.05, one_minus_beta1=0.1, weight_decay=0.0, warmup_factor=0.05,
      decay_steps_factor=1.0, end_factor=0.0, damping=1e-3, label_smoothing=0.0,
      inverse_update_every=2)
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))

  def fresh_state():
    return kfac_reduce.init_optimizer_state(workload, params, model_state, hparams,
                                            jax.random.PRNGKey(2))

  def train(state, params, queue, steps: range):
    for step in steps:
      state, params, _ = kfac_reduce.update_params(
          workload, params, None, model_state, hparams, next(queue), workload.loss_type, state,
          [], step, jax.random.PRNGKey(step))
    return state, params

  def build_queue():
    return workload.build_input_queue(jax.random.PRNGKey(1), 'train', None, 32)

  queue = checkpoint.ResumableQueue(build_queue)
  state, params = train(fresh_state(), params, queue, range(3))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(checkpoint.TrialCheckpoint(params, state, model_state, jax.random.PRNGKey(0), 3,
                                       queue.batches_drawn, {}, 0, {}))
  _, uninterrupted = train(state, params, queue, range(3, 7))
  restored = ckpt.latest(fresh_state())
  resumed_queue = checkpoint.ResumableQueue(build_queue, skip=restored.batches_drawn)
  _, resumed = train(restored.optimizer_state, restored.params, resumed_queue, range(3, 7))
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, uninterrupted)
