"""`scripts/bench_full_step.py`: its timing core on the tiny configs (one repeat), the report, the
phase cycle and its one-line errors. No timing assertions: the numbers are not the benchmark."""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import workloads

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPOSITORY, 'scripts', 'bench_full_step.py')
# Small batches keep the tiny steps cheap; compilation dominates, about 3x faster without XLA's
# backend optimisation.
TEST_BATCH_SIZES = {'imagenet_vit': 2, 'cifar': 2, 'ogbg': 4}
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def load_script():
  spec = importlib.util.spec_from_file_location('bench_full_step', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Where dataclasses and pickling look a module up.
  spec.loader.exec_module(module)
  return module


bench = load_script()


# The optimisers the tests time (the others are built the same way, by their submissions'
# init_optimizer_state): the reference and one K-FAC step, to keep the default suite short.
TESTED = ('Nesterov', 'K-FAC-reduce')


@pytest.fixture(scope='module')
def timings():
  return [bench.time_workload(workloads.get_workload(name, 'tiny'), TEST_BATCH_SIZES[name],
                              repeats=1, log=lambda line: None, compiler_options=FAST_COMPILE,
                              optimisers=TESTED)
          for name in bench.SETUPS]


def test_one_cycle_holds_every_phase():
  phases = [bench.step_phase('K-FAC-reduce', step) for step in range(2 * bench.CYCLE_STEPS)]
  assert phases == ['statistics+inverse', 'plain', 'statistics', 'plain'] * 2
  assert {bench.step_phase('Nesterov', step) for step in range(bench.CYCLE_STEPS)} == {'plain'}


def test_amortised_step_is_one_curvature_step_in_ten():
  assert bench.amortised_seconds(plain_s=1.0, statistics_inverse_s=11.0) == pytest.approx(2.0)


@pytest.mark.slow  # Compiles the tested optimisers of the three tiny models.
def test_every_step_is_timed_in_its_phase(timings):
  for timing in timings:
    assert [entry.optimiser for entry in timing.optimisers] == list(TESTED)
    for entry in timing.optimisers:
      counts = {phase: len(seconds) for phase, seconds in entry.step_seconds.items()}
      if entry.optimiser == 'Nesterov':
        assert counts == {'plain': bench.CYCLE_STEPS}
      else:
        assert counts == {'plain': 2, 'statistics': 1, 'statistics+inverse': 1}
        assert set(counts) == set(bench.PHASES)
      assert all(s > 0 for seconds in entry.step_seconds.values() for s in seconds)
      assert entry.compile_seconds > 0


def test_table_rows_follow_from_the_measured_phases(timings):
  for timing in timings:
    rows = bench.table_rows(timing)
    assert [(row.workload, row.optimiser) for row in rows] == [
        (timing.workload, name) for name in TESTED]
    nesterov, *kfac_rows = rows
    assert nesterov.statistics_s is None and nesterov.statistics_inverse_s is None
    assert nesterov.amortised_s == nesterov.plain_s
    assert nesterov.plain_ratio == nesterov.amortised_ratio == pytest.approx(1.0)
    for row, entry in zip(kfac_rows, timing.optimisers[1:]):
      assert row.plain_s == pytest.approx(np.median(entry.step_seconds['plain']))
      assert row.statistics_s == entry.step_seconds['statistics'][0]
      assert row.statistics_inverse_s == entry.step_seconds['statistics+inverse'][0]
      assert row.amortised_s == pytest.approx((row.statistics_inverse_s + 9 * row.plain_s) / 10)
      assert row.amortised_ratio == pytest.approx(row.amortised_s / nesterov.plain_s)
      assert min(row.plain_s, row.statistics_s, row.statistics_inverse_s, row.compile_s) > 0


def test_ogbg_batch_is_padded_to_the_budget(timings):
  ogbg = next(t for t in timings if t.workload.startswith('ogbg'))
  workload = workloads.get_workload('ogbg', 'tiny')
  budget = workload.padding_budget(TEST_BATCH_SIZES['ogbg'])
  batch, _ = bench.molecule_batch(workload, TEST_BATCH_SIZES['ogbg'],
                                  np.random.default_rng(0))
  graph = batch['inputs']
  assert graph.nodes.shape[0] == budget.n_node and graph.edges.shape[0] == budget.n_edge
  assert graph.n_node.shape == (budget.n_graph,) and graph.n_node.sum() == budget.n_node
  assert batch['weights'].shape == (budget.n_graph, workload.num_tasks)
  assert f'padded to {budget.n_node} nodes' in ogbg.batch_description


def test_report_has_every_row_and_says_cpu(timings, tmp_path):
  notes = {t.workload: f'{t.batch_size} (test)' for t in timings}
  on_cpu = jax.devices()[0].platform == 'cpu'
  text = bench.write_report(str(tmp_path / 'report.md'), timings, notes, 1, on_cpu)
  assert (tmp_path / 'report.md').read_text() == text
  for timing in timings:
    for name in TESTED:
      assert f'| {timing.workload} | {name} |' in text
  assert ('The device is a CPU' in text) == on_cpu


def test_bad_input_is_one_line():
  done = subprocess.run([sys.executable, SCRIPT, '--workloads=mnist'], capture_output=True,
                        text=True, cwd=REPOSITORY, timeout=120)
  assert done.returncode == 2
  assert [line for line in done.stderr.splitlines() if 'error' in line.lower()] == [
      "bench_full_step: error: unknown workloads ['mnist']; choose from imagenet_vit, "
      'cifar, ogbg']
