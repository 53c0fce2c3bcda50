"""Data-parallel scaling of a training step: Nesterov vs K-FAC-reduce on 1, 2, 4 and 8 devices.

For each full-config model of `scripts/bench_full_step.py` (ViT-S/16, WRN-16-4, the ogbg GNN) and
each device count `N`, this times per phase

  * `plain`: a step without curvature work (Nesterov's only kind of step; K-FAC-reduce's step
    preconditioning with its cached inverses);
  * `statistics`: K-FAC-reduce's step with the factor statistics pass (Nesterov: its plain step,
    repeated as the reference of the ratio);
  * `inverse`: the inverse step alone, every layer's damped inverse recomputed from the factors
    the timed steps accumulated, spread over the `N` devices by `kfac.distributed` (each device
    decomposes its share, balanced by `side^3`; one all-reduce shares them). Nesterov: none.

**Sharding.** A `Mesh` over the `N` devices (axis `batch`), the parameters and optimiser state
replicated and the batch split along its leading dimension (`NamedSharding`); the submissions'
own jitted step (`bench_full_step.TimedRun`: same optimisers, hyperparameters, phase cycle,
warm-up and alternation) then runs as XLA partitions it, except for K-FAC's factor statistics:
each device forms the Gram matrices of its own rows and one all-reduce per statistics step sums
every layer's (`kfac.distributed_statistics`, through the submission's mesh).
ogbg's batch is one padded batch per device (the workload's pipeline), so every array divides;
an array that does not is replicated.

**Scaling.** *Strong*: the global batch is the model's batch size `B` (the full config's on an
accelerator, `bench_full_step`'s CPU size on a CPU, or its `--*_batch_size` flag) on every `N`.
*Weak*: `B / max(--devices)` examples per device, so `N B / max(--devices)` in all; both agree
at the largest `N`.

**Devices.** Each device count runs in its own process (the count is fixed when jax starts):
on a CPU `N` forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`; they
share the machine's cores, so a CPU run shows the overheads, not a speed-up); with accelerators
the first `N` (`CUDA_VISIBLE_DEVICES`). The report states which.

  .venv/bin/python scripts/bench_scaling.py            # docs/bench_scaling.md and .png
  .venv/bin/python scripts/bench_scaling.py --quick    # tiny configs, 1 and 2 devices, JSON last
"""

from __future__ import annotations

import benchmark  # noqa: F401  (pins OpenBLAS to one thread before numpy and jax load it)

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app, flags
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import bench_full_step as full_step  # Its flags: --workloads, --repeats, --output, batch sizes.
import workloads
from benchmark import environment
from contract.errors import BenchmarkError
from contract.workload import Workload
from kfac import blocks, curvature, defaults, distributed

AXIS = 'batch'
OPTIMISERS = ('Nesterov', 'K-FAC-reduce')
PHASES = ('plain', 'statistics', 'inverse')
SCALINGS = ('strong', 'weak')
# --quick: 2 examples; 4 molecules for ogbg (the padding budget of one graph does not fit a random
# molecule, that of 2 does, and weak scaling halves the batch on 1 device).
QUICK_BATCH_SIZE, QUICK_MOLECULES = 2, 4
QUICK_DEVICES = (1, 2)
# --quick: compilation dominates tiny steps; about 3x faster without XLA's backend optimisation.
FAST_COMPILE = {'xla_backend_optimization_level': 0}

FLAGS = flags.FLAGS
flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts, one process each.')
flags.DEFINE_bool('quick', False, 'Tiny configs and batches, 1 and 2 devices, one repeat without '
                  'warm-up, no XLA optimisation (a correctness check, not a benchmark); writes '
                  'a report only with --output.')
flags.DEFINE_integer('worker_devices', None, 'Internal: time on this many devices (a worker).')
flags.DEFINE_integer('max_devices', None, 'Internal: the weak-scaling divisor of a worker.')
FLAGS.set_default('output', 'docs/bench_scaling.md')
FLAGS.set_default('repeats', 3)

Row = Dict[str, Any]  # ROW_KEYS
ROW_KEYS = ('model', 'devices', 'phase', 'nesterov_s', 'kfac_reduce_s', 'scaling', 'batch_size')


def place_batch(batch: Any, mesh: Mesh) -> Any:
  """Leaves split along their leading dimension over `mesh`; those that do not divide, whole."""
  num_devices = mesh.devices.size

  def place(leaf):
    divides = np.ndim(leaf) > 0 and np.shape(leaf)[0] % num_devices == 0
    return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(AXIS if divides else None)))

  return jax.tree_util.tree_map(place, batch)


def curvature_states(opt_state: Any) -> List[curvature.CurvatureState]:
  """The K-FAC curvature states inside an optax state."""
  is_state = lambda node: isinstance(node, curvature.CurvatureState)  # noqa: E731
  return [node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_state)
          if is_state(node)]


def assignment_summary(costs: Dict[Any, float], num_devices: int) -> Dict[str, Any]:
  """How layers of these costs are spread: layers per device, and the ideal speed-up
  `sum of costs / largest device's cost`."""
  assignment = distributed.assign_layers(costs, num_devices)
  loads = distributed.device_loads(assignment, costs, num_devices)
  return {'layers_per_device': [list(assignment.values()).count(d) for d in range(num_devices)],
          'ideal_speedup': sum(loads) / max(max(loads), 1.0)}


def block_of(state: Any) -> blocks.CurvatureBlock:
  """The K-FAC-reduce block (`kfac.defaults.INVERSE_METHOD`) whose state `state` is, rebuilt from
  its factors' stored shapes (`[d, d]` full, `[d]` diagonal, `[1]` identity)."""
  if not isinstance(state, blocks.kron.KronState):
    raise BenchmarkError(f'expected Kronecker-factored block states, got {type(state).__name__}')
  forms = {2: 'full', 1: 'diagonal'}
  sides = [(factor.shape[0], 'identity' if factor.shape == (1,) else forms[factor.ndim])
           for factor in (state.factor_a, state.factor_b)]
  options = blocks.BlockOptions(dtype=state.factor_a.dtype,
                                forms=(sides[0][1], sides[1][1]))
  return blocks.make_block(defaults.INVERSE_METHOD, sides[0][0], sides[1][0], options)


def inverse_seconds(opt_state: Any, mesh: Mesh, repeats: int,
                    compiler_options: Optional[Dict[str, Any]]) -> Tuple[float, Dict[str, Any]]:
  """Median seconds of the inverse step of the K-FAC state in `opt_state`: every block's
  `invert` (for `eigh`: both factors' eigendecompositions), spread over `mesh` by
  `kfac.distributed.distributed_invert`; and its `assignment_summary`."""
  state, = curvature_states(opt_state)
  invert_fns = {path: block_of(block_state).invert for path, block_state in state.blocks.items()}
  costs = {path: distributed.layer_cost((block_state.factor_a, block_state.factor_b))
           for path, block_state in state.blocks.items()}
  step = jax.jit(lambda block_states, damping: distributed.distributed_invert(
      invert_fns, block_states, mesh, AXIS, damping, costs=costs))
  block_states = jax.device_put(state.blocks, NamedSharding(mesh, PartitionSpec()))
  damping = np.float32(full_step.DAMPING)
  compiled = step.lower(block_states, damping).compile(compiler_options)
  jax.block_until_ready(compiled(block_states, damping))  # Warm-up.
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(compiled(block_states, damping))
    seconds.append(time.perf_counter() - started)
  return statistics.median(seconds), assignment_summary(costs, mesh.devices.size)


def time_point(workload: Workload, mesh: Mesh, batch_size: int, repeats: int,
               compiler_options: Optional[Dict[str, Any]], warm_up: bool = True
               ) -> Tuple[Dict[str, Dict[str, Optional[float]]], Dict[str, Any]]:
  """`{phase: {nesterov_s, kfac_reduce_s}}` (median seconds) of one model, global batch size and
  mesh, and the inverse step's `assignment_summary`. `warm_up`: one untimed cycle first (the
  programs are compiled ahead either way)."""
  setup = full_step.SETUPS[workload.workload_name]
  batch, _ = setup.make_batch(workload, batch_size, np.random.default_rng(0))
  batch = place_batch(batch, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  params, model_state = jax.device_put(workload.init_model_fn(jax.random.PRNGKey(0)), replicated)
  runs = [full_step.TimedRun(workload, name, params, model_state, batch, compiler_options)
          for name in OPTIMISERS]
  for run in runs if warm_up else ():
    run.run_cycle(record=False)
  for _ in range(repeats):
    for run in runs:
      run.run_cycle(record=True)
  nesterov, kfac_reduce = (
      {phase: statistics.median(seconds) for phase, seconds in run.step_seconds.items()}
      for run in runs)
  inverse, assignment = inverse_seconds(runs[1].carry[2], mesh, repeats, compiler_options)
  return {'plain': {'nesterov_s': nesterov['plain'], 'kfac_reduce_s': kfac_reduce['plain']},
          'statistics': {'nesterov_s': nesterov['plain'],
                         'kfac_reduce_s': kfac_reduce['statistics']},
          'inverse': {'nesterov_s': None, 'kfac_reduce_s': inverse}}, assignment


def base_batch_size(workload: Workload, quick: bool, on_cpu: bool) -> int:
  if quick:
    setup = full_step.SETUPS[workload.workload_name]
    return QUICK_MOLECULES if setup.make_batch is full_step.molecule_batch else QUICK_BATCH_SIZE
  return full_step.batch_size_and_note(workload, on_cpu)[0]


def scaled_batch_sizes(base: int, num_devices: int, max_devices: int) -> Dict[str, int]:
  """Global batch sizes: strong keeps `base`; weak gives each device `base / max_devices`."""
  return {'strong': base, 'weak': num_devices * base // max_devices}


def worker_results(num_devices: int, max_devices: int) -> Dict[str, List[Row]]:
  """Every model and scaling on this process's `num_devices` devices: `{'rows': [Row],
  'assignments': [{model, devices, layers_per_device, ideal_speedup}]}`."""
  devices = jax.devices()
  if len(devices) != num_devices:
    raise BenchmarkError(f'worker expected {num_devices} devices, jax has {len(devices)}')
  mesh = Mesh(np.array(devices), (AXIS,))
  on_cpu = devices[0].platform == 'cpu'
  compiler_options = FAST_COMPILE if FLAGS.quick else None
  repeats = 1 if FLAGS.quick else FLAGS.repeats
  rows, assignments = [], []
  for name in FLAGS.workloads:
    workload = workloads.get_workload(name, 'tiny' if FLAGS.quick else 'full')
    base = base_batch_size(workload, FLAGS.quick, on_cpu)
    timed = {}  # By global batch size: strong and weak agree at the largest device count.
    for scaling, batch_size in scaled_batch_sizes(base, num_devices, max_devices).items():
      if batch_size not in timed:
        timed[batch_size] = time_point(workload, mesh, batch_size, repeats, compiler_options,
                                       warm_up=not FLAGS.quick)
      phases, assignment = timed[batch_size]
      for phase, seconds in phases.items():
        rows.append({'model': workload.variant_name, 'devices': num_devices, 'phase': phase,
                     **seconds, 'scaling': scaling, 'batch_size': batch_size})
      print(f'{workload.variant_name} {scaling} {num_devices} devices: done', file=sys.stderr,
            flush=True)
    assignments.append({'model': workload.variant_name, 'devices': num_devices, **assignment})
  return {'rows': rows, 'assignments': assignments}


def worker_environment(num_devices: int, platform: str) -> Dict[str, str]:
  """The environment of the process timing `num_devices` devices."""
  env = dict(os.environ)
  if platform == 'cpu':
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={num_devices}').strip()
  else:
    env['CUDA_VISIBLE_DEVICES'] = ','.join(str(index) for index in range(num_devices))
  return env


def run_worker(num_devices: int, max_devices: int, platform: str) -> Dict[str, List[Row]]:
  """This script as a worker process on `num_devices` devices; its `worker_results`."""
  forwarded = [f'--{name}={FLAGS[name].value}' for name in ('repeats', 'quick')]
  forwarded += [f'--workloads={",".join(FLAGS.workloads)}']
  forwarded += [f'--{setup.batch_flag}={FLAGS[setup.batch_flag].value}'
                for setup in full_step.SETUPS.values() if FLAGS[setup.batch_flag].value]
  done = subprocess.run(  # Its progress and errors go to our stderr; its results come as JSON.
      [sys.executable, os.path.abspath(__file__), f'--worker_devices={num_devices}',
       f'--max_devices={max_devices}', *forwarded],
      env=worker_environment(num_devices, platform), stdout=subprocess.PIPE, text=True)
  if done.returncode:
    raise BenchmarkError(f'the {num_devices}-device worker failed (exit {done.returncode}; its '
                         'error is above)')
  return json.loads(done.stdout.strip().splitlines()[-1])


def seconds_text(seconds: Optional[float]) -> str:
  return '-' if seconds is None else f'{1e3 * seconds:,.1f}'


def markdown_lines(rows: Sequence[Row], assignments: Sequence[Dict[str, Any]], on_cpu: bool
                   ) -> List[str]:
  lines = ['# Data-parallel scaling: Nesterov vs K-FAC-reduce', '',
           'Written by `scripts/bench_scaling.py` (the method is in its docstring). Median '
           'milliseconds per step phase; `inverse` is the inverse step alone, spread over the '
           'devices by `kfac.distributed`.', '']
  if on_cpu:
    lines += ['**The devices are forced host devices of one CPU**: they share its cores, so '
              'times grow with the device count; the numbers show overheads, not speed-ups.', '']
  lines += [*environment.machine_lines(), '']
  for scaling in SCALINGS:
    lines += [f'## {scaling.capitalize()} scaling', '',
              '| model | devices | global batch | phase | Nesterov ms | K-FAC-reduce ms | '
              'K-FAC / Nesterov |', '|---|---:|---:|---|---:|---:|---:|']
    for row in rows:
      if row['scaling'] == scaling:
        ratio = (f'{row["kfac_reduce_s"] / row["nesterov_s"]:.2f}x' if row['nesterov_s'] else '-')
        lines.append(f'| {row["model"]} | {row["devices"]} | {row["batch_size"]} | '
                     f'{row["phase"]} | {seconds_text(row["nesterov_s"])} | '
                     f'{seconds_text(row["kfac_reduce_s"])} | {ratio} |')
    lines.append('')
  lines += ['## Inverse step: layers per device', '',
            'Longest-processing-time-first on `side^3` per factor; ideal speed-up = all layers\' '
            'cost / the largest device share (what the inverse step can gain when the devices '
            'are real).', '', '| model | devices | layers per device | ideal speed-up |',
            '|---|---:|---|---:|']
  lines += [f'| {entry["model"]} | {entry["devices"]} | '
            f'{" ".join(map(str, entry["layers_per_device"]))} | {entry["ideal_speedup"]:.2f}x |'
            for entry in assignments]
  return lines + ['']


def write_plot(path: str, rows: Sequence[Row]) -> None:
  """Seconds against devices: one panel per model, a colour per series, strong solid, weak
  dashed (Nesterov's statistics row repeats its plain one and is not drawn)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  series = [('nesterov_s', 'plain', 'Nesterov'), *(('kfac_reduce_s', phase, 'K-FAC-reduce')
                                                   for phase in PHASES)]
  models = list(dict.fromkeys(row['model'] for row in rows))
  figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
  for axis, model in zip(axes[0], models):
    for colour, (key, phase, name) in enumerate(series):
      for scaling, style in zip(SCALINGS, ('-', '--')):
        points = [(row['devices'], row[key]) for row in rows
                  if (row['model'], row['scaling'], row['phase']) == (model, scaling, phase)]
        axis.plot(*zip(*points), style, marker='o', color=f'C{colour}',
                  label=f'{name} {phase} ({scaling})')
    counts = sorted({row['devices'] for row in rows})
    axis.set(title=model, xlabel='devices', ylabel='seconds', xscale='log', yscale='log')
    axis.set_xticks(counts, [str(count) for count in counts])
    axis.minorticks_off()
    axis.legend(fontsize=6)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run_benchmark() -> List[Row]:
  """The worker processes; the report when `--output` applies; the rows."""
  unknown = [name for name in FLAGS.workloads if name not in full_step.SETUPS]
  if unknown:
    raise BenchmarkError(f'unknown workloads {unknown}; choose from {", ".join(full_step.SETUPS)}')
  if FLAGS.repeats < 1:
    raise BenchmarkError(f'--repeats must be at least 1, got {FLAGS.repeats}')
  counts = list(QUICK_DEVICES) if FLAGS.quick else sorted({int(count) for count in FLAGS.devices})
  if counts[0] < 1:
    raise BenchmarkError(f'device counts must be at least 1, got {FLAGS.devices}')
  platform = jax.devices()[0].platform
  if platform != 'cpu' and counts[-1] > len(jax.devices()):
    raise BenchmarkError(f'{counts[-1]} devices asked for, {len(jax.devices())} present')
  for name in FLAGS.workloads:
    base = base_batch_size(workloads.get_workload(name, 'tiny' if FLAGS.quick else 'full'),
                           FLAGS.quick, platform == 'cpu')
    if base % counts[-1]:
      raise BenchmarkError(f'{name}: batch size {base} does not divide by {counts[-1]} devices; '
                           f'pass a multiple of {counts[-1]}')
  rows, assignments = [], []
  for count in counts:
    print(f'timing on {count} device(s)', file=sys.stderr, flush=True)
    results = run_worker(count, counts[-1], platform)
    rows += results['rows']
    assignments += results['assignments']
  if not FLAGS.quick or FLAGS['output'].present:
    text = '\n'.join(markdown_lines(rows, assignments, platform == 'cpu'))
    os.makedirs(os.path.dirname(FLAGS.output) or '.', exist_ok=True)
    with open(FLAGS.output, 'w') as report:
      report.write(text)
    write_plot(os.path.splitext(FLAGS.output)[0] + '.png', rows)
    print(text, file=sys.stderr)
  return rows


def main(argv) -> int:
  if len(argv) > 1:
    print(f'bench_scaling: error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  try:
    if FLAGS.worker_devices is not None:
      print(json.dumps(worker_results(FLAGS.worker_devices, FLAGS.max_devices)))
    else:
      print(json.dumps([{key: row[key] for key in ROW_KEYS} for row in run_benchmark()]))
  except BenchmarkError as error:
    print(f'bench_scaling: error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  app.run(main)
