"""`scripts/bench_scaling.py --quick`: worker processes on 1 and 2 forced host devices, the JSON
rows, the report and plot, the one-line errors. No timing assertions: the numbers are not the
benchmark.

The `--quick` run (three worker points: about 70 s of CPU) is marked slow; the error tests run by
default. The script is only run as a subprocess: it imports `bench_full_step`, whose absl flags
a second in-process load (tests/test_bench_full_step.py) would define twice."""

import json
import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPOSITORY, 'scripts', 'bench_scaling.py')
QUICK_BATCH_SIZE = 4  # Molecules: the script's QUICK_MOLECULES.
PHASES = ('plain', 'statistics', 'inverse')


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != 'XLA_FLAGS'}
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        cwd=REPOSITORY, env=env, timeout=timeout)


@pytest.fixture(scope='module')
def model_names():
  """The script's workload names, from its error for an unknown one (no second flag load)."""
  done = run_script('--workloads=mnist', timeout=120)
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if 'error' in line.lower()]
  assert len(errors) == 1 and errors[0].startswith(
      "bench_scaling: error: unknown workloads ['mnist']; choose from "), errors
  return errors[0].split('choose from ')[1].split(', ')


@pytest.fixture(scope='module')
def quick_model(model_names):
  """The ogbg model: the cheapest tiny model to compile; the others share every line."""
  return next(name for name in model_names if name.startswith('ogbg'))


@pytest.fixture(scope='module')
def quick(tmp_path_factory, quick_model):
  report = tmp_path_factory.mktemp('scaling') / 'scaling.md'
  done = run_script('--quick', f'--workloads={quick_model}', f'--output={report}')
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1]), report


@pytest.mark.slow
def test_quick_rows_cover_devices_phases_and_scalings(quick, quick_model):
  rows, _ = quick
  assert {tuple(sorted(row)) for row in rows} == {tuple(sorted(
      ['model', 'devices', 'phase', 'nesterov_s', 'kfac_reduce_s', 'scaling', 'batch_size']))}
  keys = sorted((row['devices'], row['scaling'], row['phase']) for row in rows)
  assert keys == sorted((devices, scaling, phase) for devices in (1, 2)
                        for scaling in ('strong', 'weak') for phase in PHASES)
  assert {row['model'] for row in rows} == {f'{quick_model}_tiny'}
  for row in rows:
    assert row['kfac_reduce_s'] > 0
    if row['phase'] == 'inverse':
      assert row['nesterov_s'] is None
    else:
      assert row['nesterov_s'] > 0


@pytest.mark.slow
def test_strong_keeps_the_batch_weak_grows_it_per_device(quick):
  rows, _ = quick
  for row in rows:
    expected = (QUICK_BATCH_SIZE if row['scaling'] == 'strong'
                else row['devices'] * QUICK_BATCH_SIZE // 2)
    assert row['batch_size'] == expected
  # Nesterov has one kind of step: the statistics row repeats the plain one as the reference.
  by_key = {(row['devices'], row['scaling'], row['phase']): row for row in rows}
  for devices in (1, 2):
    for scaling in ('strong', 'weak'):
      assert (by_key[devices, scaling, 'plain']['nesterov_s'] ==
              by_key[devices, scaling, 'statistics']['nesterov_s'])


@pytest.mark.slow
def test_report_and_plot_are_written(quick, quick_model):
  rows, report = quick
  text = report.read_text()
  assert '## Strong scaling' in text and '## Weak scaling' in text
  for row in rows:
    assert f'| {row["model"]} | {row["devices"]} | {row["batch_size"]} | {row["phase"]} |' in text
  assert 'forced host devices' in text
  # Every layer on the one device; on two, both get layers.
  assignment = text.split('layers per device')[-1]
  layers = int(assignment.split(f'| {quick_model}_tiny | 1 | ')[1].split(' |')[0])
  per_device = assignment.split(f'| {quick_model}_tiny | 2 | ')[1].split(' |')[0].split()
  assert len(per_device) == 2 and min(map(int, per_device)) > 0
  assert sum(map(int, per_device)) == layers
  assert report.with_suffix('.png').stat().st_size > 0


@pytest.mark.parametrize('args, message', [
    (['--devices=0,2'], "device counts must be at least 1, got ['0', '2']"),
    (['--ogbg_batch_size=6', '--devices=1,4'],
     '{ogbg}: batch size 6 does not divide by 4 devices; pass a multiple of 4'),
])
def test_bad_input_is_one_line(args, message, quick_model):
  message = message.format(ogbg=quick_model)
  done = run_script(f'--workloads={quick_model}', *args, timeout=120)
  assert done.returncode == 2
  assert [line for line in done.stderr.splitlines() if 'error' in line.lower()] == [
      f'bench_scaling: error: {message}']
