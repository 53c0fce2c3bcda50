"""The cost of one training step on the full (AlgoPerf-size) workloads: Nesterov vs K-FAC.

For each workload's `full` config (ViT-S/16 on 224x224 ImageNet images, WRN-16-4 on CIFAR-10,
the ogbg-molpcba GraphNetwork) this times the submissions' own jitted training step
(`submissions.common.step_functions`: loss gradient, optimiser update, parameter update) of

  * Nesterov: `submissions.nesterov.nesterov_optimizer` (weight decay, then SGD with Nesterov
    momentum), the AlgoPerf reference;
  * K-FAC-reduce, K-FAC-expand and MAC: the step the K-FAC submissions train with, built by
    their own `init_optimizer_state` from the batch (`kfac.kfac_optimizer`, MC Fisher with one
    sample, damping `DAMPING`), with the loss gradient and the statistics from one forward pass
    (`kfac.gradient_and_statistics`, `fused_statistics=True`);
  * K-FAC-reduce (two passes): the same optimiser with `kfac.precondition`'s own statistics pass
    after the gradient pass (`fused_statistics=False`, the step before the fused pass), so the
    table gives the statistics step before and after.

**Phases.** A K-FAC step does one of three amounts of curvature work, chosen inside the jitted
step by two `lax.cond` gates on the step counter (`kfac.curvature.update_curvature`): a *plain*
step (gradient preconditioned with the cached inverses), a *statistics* step (plus the factor
statistics pass, folded into the EMA) or a *statistics+inverse* step (plus every layer's
eigendecompositions). One compiled program covers all three: built with `T_cov = 2`,
`T_inv = 4` and no warm start, its steps cycle through statistics+inverse, plain, statistics,
plain, and `kfac_submission.step_phase` names the phase of each step. This is the very program
a `T_cov = T_inv = 10` training run executes (the same two gates; only the period constants
differ), so the plain step includes the cost of the untaken gates, as in training, and no phase
is estimated by subtraction. Per workload the three optimisers are compiled ahead of time
(`jit(...).lower(...).compile()`, the `compile s` column: tracing plus XLA), run through one
warm-up cycle, then `--repeats` cycles taking turns (so load changes on a shared machine hit
them alike); every step is timed on its own, ending in `block_until_ready`, and each phase
reports the median of its steps (plain: 2 per cycle; the others: 1; Nesterov: 4, every step
plain).

**Amortised step.** With statistics and inverses every `AMORTISE_EVERY = 10` steps, one step in
10 does statistics+inverse and 9 are plain: `amortised = (statistics+inverse + 9 plain) / 10`.
The ratios divide by the Nesterov step.

**Data.** Synthetic batches of the real shapes and dtypes (the tfds data is not needed):
normalised Gaussian images `[N, H, W, 3]` float32 with uniform int32 labels and unit weights
(`image_pipeline.with_weights`, what the image pipelines yield); for ogbg, random molecules of
the real data's mean size (`synthetic_data.synthetic_molecules`, 26 atoms) batched and padded by
the workload's own pipeline (`input_pipeline.batch_examples`) to AlgoPerf's budget for the batch
size (26 nodes and 56 edges per graph, one padding graph), 128 tasks.

**Batch sizes.** On an accelerator the full configs' (ViT 1024, WRN 512, ogbg 512); on a CPU
small ones (`SETUPS`; a full-size step would take minutes there); `--vit_batch_size`,
`--wrn_batch_size`, `--ogbg_batch_size` override either. The report says which was used and
states it plainly when the device is a CPU. Peak memory is XLA's `memory_analysis()` of each
compiled step (`benchmark.environment.peak_mib`).

  .venv/bin/python scripts/bench_full_step.py   # all three workloads, to docs/bench_full_step.md
  .venv/bin/python scripts/bench_full_step.py --workloads=ogbg --repeats=3
"""

from __future__ import annotations

import benchmark  # noqa: F401  (pins OpenBLAS to one thread before numpy and jax load it)

import functools
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from absl import app, flags
import jax
import numpy as np

import workloads
from benchmark import environment
from contract.errors import BenchmarkError
from contract.workload import Workload
from submissions import common, kfac_submission, mac, nesterov
from workloads import image_pipeline
from workloads.ogbg_molpcba import input_pipeline as ogbg_pipeline
from workloads.ogbg_molpcba.synthetic_data import synthetic_molecules

DAMPING = 1e-3
# Statistics and inverses every 10 steps: the amortised step of the table.
AMORTISE_EVERY = 10
PHASES = ('plain', 'statistics', 'statistics+inverse')
# The K-FAC submissions' optimiser-state builders (`init_optimizer_state`, built from the batch):
# K-FAC with the statistics from the gradient's forward pass (the submissions' default), K-FAC
# with `kfac.precondition`'s own statistics pass after the gradient pass (as before the fused
# pass), and MAC.
KFAC_BUILDERS = {
    'K-FAC-reduce': functools.partial(kfac_submission.init_optimizer_state, flavour='reduce',
                                      fused_statistics=True),
    'K-FAC-reduce (two passes)': functools.partial(kfac_submission.init_optimizer_state,
                                                   flavour='reduce', fused_statistics=False),
    'K-FAC-expand': functools.partial(kfac_submission.init_optimizer_state, flavour='expand',
                                      fused_statistics=True),
    'MAC': functools.partial(mac.init_optimizer_state, fused_statistics=True),
}
OPTIMISERS = ('Nesterov',) + tuple(KFAC_BUILDERS)


class TimingHyperparameters(NamedTuple):
  """The optimisers' hyperparameters. No value changes the work of a step; the learning rate is
  moderate and in warmup, so no parameter diverges while the steps are timed. `T_cov = 2`,
  `T_inv = 4` without warm start make every cycle of 4 steps hold each phase (docstring)."""

  learning_rate: float = 0.1
  one_minus_beta1: float = 0.1
  weight_decay: float = 5e-4
  warmup_factor: float = 0.05
  decay_steps_factor: float = 0.9
  end_factor: float = 1e-3
  label_smoothing: float = 0.0
  damping: float = DAMPING
  cov_update_every: int = 2
  inverse_update_every: int = 4
  warm_start_steps: int = 0


HYPERPARAMETERS = TimingHyperparameters()
CYCLE_STEPS = HYPERPARAMETERS.inverse_update_every

Batch = Dict[str, Any]


def image_batch(workload: Workload, batch_size: int, rng: np.random.Generator
                ) -> Tuple[Batch, str]:
  """Normalised Gaussian images and uniform labels, as the image pipelines' batches."""
  side, classes = workload.config.image_size, workload.config.model.num_classes
  images = rng.standard_normal((batch_size, side, side, 3), np.float32)
  labels = rng.integers(0, classes, batch_size)
  return (image_pipeline.with_weights(images, labels),
          f'{batch_size} Gaussian images {side}x{side}x3, uniform labels over {classes} classes')


def molecule_batch(workload: Workload, batch_size: int, rng: np.random.Generator
                   ) -> Tuple[Batch, str]:
  """Random molecules of the data's mean size, padded by the workload's own pipeline (one
  padded batch per device, as the runner's; `budget` is a device's)."""
  budget, shards = workload.padding_budget(batch_size), jax.device_count()
  mean_nodes = workload.data_config.avg_nodes_per_graph
  examples = synthetic_molecules(rng, 2 * batch_size, workload.num_tasks, mean_nodes)
  batch = next(ogbg_pipeline.batch_examples(examples, budget, shards))
  molecules = int(np.count_nonzero(batch['inputs'].n_node)) - shards  # Less padding graphs.
  return batch, (f'{molecules} random molecules of about {mean_nodes} atoms, padded to '
                 f'{budget.n_node} nodes, {budget.n_edge} edges, {budget.n_graph} graphs; '
                 f'{workload.num_tasks} tasks')


class WorkloadSetup(NamedTuple):
  """How a workload is benchmarked: its batch-size flag, CPU batch size and batch maker."""

  batch_flag: str
  cpu_batch_size: int
  make_batch: Callable[[Workload, int, np.random.Generator], Tuple[Batch, str]]


# CPU batch sizes: a step of each takes seconds, a statistics+inverse step up to minutes, on 2
# cores (docs/bench_full_step.md).
SETUPS = {
    'imagenet_vit': WorkloadSetup('vit_batch_size', 8, image_batch),
    'cifar': WorkloadSetup('wrn_batch_size', 64, image_batch),
    'ogbg': WorkloadSetup('ogbg_batch_size', 64, molecule_batch),
}

FLAGS = flags.FLAGS
flags.DEFINE_list('workloads', list(SETUPS), 'Workloads to time (full configs).')
for _name, _setup in SETUPS.items():
  flags.DEFINE_integer(_setup.batch_flag, None,
                       f'{_name} batch size (default: the full config\'s on an accelerator, '
                       f'{_setup.cpu_batch_size} on a CPU).')
flags.DEFINE_list('optimisers', list(OPTIMISERS), f'Optimisers to time, from {OPTIMISERS} '
                  '(Nesterov, the reference of the ratios, is always timed).')
flags.DEFINE_integer('repeats', 5, 'Timed cycles of 4 steps per optimiser (medians reported).')
flags.DEFINE_string('output', 'docs/bench_full_step.md', 'Markdown report path.')


class OptimiserTiming(NamedTuple):
  """Seconds of every timed step by phase, compile seconds and XLA's peak MiB of the step."""

  optimiser: str
  step_seconds: Dict[str, List[float]]
  compile_seconds: float
  peak_mib: float


class WorkloadTiming(NamedTuple):
  """The optimisers timed on one workload and batch."""

  workload: str
  num_params: int
  batch_size: int
  batch_description: str
  optimisers: List[OptimiserTiming]


class Row(NamedTuple):
  """One table row: median seconds per phase (None where the optimiser has no such phase)."""

  workload: str
  optimiser: str
  plain_s: float
  statistics_s: Optional[float]
  statistics_inverse_s: Optional[float]
  amortised_s: float
  plain_ratio: float
  amortised_ratio: float
  compile_s: float
  peak_mib: float


def amortised_seconds(plain_s: float, statistics_inverse_s: float,
                      every: int = AMORTISE_EVERY) -> float:
  """Mean step time when one step in `every` does statistics+inverse and the rest are plain."""
  return (statistics_inverse_s + (every - 1) * plain_s) / every


def step_functions(workload: Workload, optimiser: str, params: Any, batch: Batch,
                   model_state: Any) -> common.StepFunctions:
  """The optimiser's init and jitted train step, as the submissions build them."""
  if optimiser in KFAC_BUILDERS:
    state = KFAC_BUILDERS[optimiser](workload, params, model_state, HYPERPARAMETERS,
                                     jax.random.PRNGKey(0))
    return state.build(batch)
  return common.step_functions(workload,
                               nesterov.nesterov_optimizer(workload.step_hint, HYPERPARAMETERS))


def step_phase(optimiser: str, step: int) -> str:
  """The curvature work of step `step`: one of `PHASES` (Nesterov's steps are all plain)."""
  if optimiser in KFAC_BUILDERS:
    return kfac_submission.step_phase(step, HYPERPARAMETERS)
  return 'plain'


class TimedRun:
  """One optimiser's compiled training step and its carried training state."""

  def __init__(self, workload: Workload, optimiser: str, params: Any, model_state: Any,
               batch: Batch, compiler_options: Optional[Dict[str, Any]] = None) -> None:
    self.optimiser = optimiser
    self.batch = batch
    self.rng = jax.random.PRNGKey(1)
    # The dropout rate (None: the workload's) and label smoothing the submissions pass.
    self.regularisation = (None, np.float32(HYPERPARAMETERS.label_smoothing))
    started = time.perf_counter()
    functions = step_functions(workload, optimiser, params, batch, model_state)
    self.carry = (params, model_state, functions.init(params))
    self.compiled = functions.train_step.lower(*self.carry, batch, self.rng,
                                               *self.regularisation).compile(
        compiler_options=compiler_options)
    self.compile_seconds = time.perf_counter() - started
    self.step = 0
    self.step_seconds: Dict[str, List[float]] = {}

  def run_cycle(self, record: bool) -> None:
    """`CYCLE_STEPS` consecutive steps, each timed alone (kept by phase when `record`)."""
    for _ in range(CYCLE_STEPS):
      key = jax.random.fold_in(self.rng, self.step)
      started = time.perf_counter()
      params, model_state, opt_state, loss = self.compiled(*self.carry, self.batch, key,
                                                           *self.regularisation)
      jax.block_until_ready((params, model_state, opt_state, loss))
      seconds = time.perf_counter() - started
      if record:
        self.step_seconds.setdefault(step_phase(self.optimiser, self.step), []).append(seconds)
      self.carry = (params, model_state, opt_state)
      self.step += 1

  def timing(self) -> OptimiserTiming:
    return OptimiserTiming(self.optimiser, self.step_seconds, self.compile_seconds,
                           environment.peak_mib(self.compiled))


def out_of_memory_error(workload: Workload, optimiser: str, batch_size: int,
                        error: Exception) -> BenchmarkError:
  device = jax.devices()[0]
  flag = SETUPS[workload.workload_name].batch_flag
  return BenchmarkError(f'{workload.variant_name} {optimiser} at batch size {batch_size} does not '
                        f'fit in the memory of {device.platform} ({device.device_kind}): pass a '
                        f'smaller --{flag} ({str(error).splitlines()[0][:120]})')


def time_workload(workload: Workload, batch_size: int, repeats: int,
                  log: Callable[[str], None] = print,
                  compiler_options: Optional[Dict[str, Any]] = None,
                  optimisers: Tuple[str, ...] = OPTIMISERS) -> WorkloadTiming:
  """Every optimiser of `OPTIMISERS` on one synthetic batch of `workload`.

  Args:
    workload: a workload of `SETUPS` (any config).
    batch_size: examples (graphs for ogbg) per batch.
    repeats: timed cycles of `CYCLE_STEPS` steps per optimiser, after one warm-up cycle.
    log: progress lines.
    compiler_options: XLA options of every compilation (tests turn optimisation off).
    optimisers: those of `OPTIMISERS` to time (Nesterov is added first when missing).

  Returns:
    The seconds of every timed step, by optimiser and phase.
  """
  setup = SETUPS[workload.workload_name]
  batch, description = setup.make_batch(workload, batch_size, np.random.default_rng(0))
  batch = jax.device_put(batch)
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  num_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
  runs = []
  for optimiser in ('Nesterov',) + tuple(name for name in optimisers if name != 'Nesterov'):
    try:
      run = TimedRun(workload, optimiser, params, model_state, batch, compiler_options)
      run.run_cycle(record=False)  # Warm-up.
    except jax.errors.JaxRuntimeError as error:
      if 'RESOURCE_EXHAUSTED' in str(error):
        raise out_of_memory_error(workload, optimiser, batch_size, error) from None
      raise
    log(f'{workload.variant_name} {optimiser}: compiled in {run.compile_seconds:.1f} s, '
        f'XLA peak {environment.peak_mib(run.compiled):,.0f} MiB')
    runs.append(run)
  for _ in range(repeats):
    for run in runs:
      run.run_cycle(record=True)
  return WorkloadTiming(workload.variant_name, num_params, batch_size, description,
                        [run.timing() for run in runs])


def table_rows(timing: WorkloadTiming) -> List[Row]:
  """One row per optimiser: phase medians, the amortised step and the ratios to Nesterov."""
  by_name = {entry.optimiser: entry for entry in timing.optimisers}
  reference = statistics.median(by_name['Nesterov'].step_seconds['plain'])
  rows = []
  for entry in timing.optimisers:
    medians = {phase: statistics.median(seconds) for phase, seconds in entry.step_seconds.items()}
    plain = medians['plain']
    amortised = (amortised_seconds(plain, medians['statistics+inverse'])
                 if 'statistics+inverse' in medians else plain)
    rows.append(Row(timing.workload, entry.optimiser, plain, medians.get('statistics'),
                    medians.get('statistics+inverse'), amortised, plain / reference,
                    amortised / reference, entry.compile_seconds, entry.peak_mib))
  return rows


def milliseconds(seconds: Optional[float]) -> str:
  return '-' if seconds is None else f'{1e3 * seconds:,.1f}'


def markdown_table(rows: List[Row]) -> List[str]:
  lines = ['| workload | optimiser | plain ms | statistics ms | statistics+inverse ms | '
           f'amortised ms (T_cov = T_inv = {AMORTISE_EVERY}) | plain / Nesterov | '
           'amortised / Nesterov | compile s | XLA peak MiB |', '|---|---|' + '---:|' * 8]
  for row in rows:
    lines.append(f'| {row.workload} | {row.optimiser} | {milliseconds(row.plain_s)} | '
                 f'{milliseconds(row.statistics_s)} | {milliseconds(row.statistics_inverse_s)} | '
                 f'{milliseconds(row.amortised_s)} | {row.plain_ratio:.2f}x | '
                 f'{row.amortised_ratio:.2f}x | {row.compile_s:.1f} | {row.peak_mib:,.0f} |')
  return lines


def device_statement(on_cpu: bool) -> str:
  if on_cpu:
    return ('**The device is a CPU.** The full configs are made for accelerators; here they ran '
            'at the small batch sizes below, so the absolute times say nothing about an '
            'accelerator run, and the ratios hold for these batch sizes only.')
  device = jax.devices()[0]
  return f'The device is an accelerator: {device.platform} ({device.device_kind}).'


def write_report(path: str, timings: List[WorkloadTiming], batch_notes: Dict[str, str],
                 repeats: int, on_cpu: bool) -> str:
  """Writes the Markdown report to `path` and returns it."""
  lines = [
      '# One training step of the full workloads: Nesterov vs K-FAC', '',
      'Written by `scripts/bench_full_step.py` (the method is in its docstring). The submissions\' '
      'jitted training step on one synthetic batch of the real shapes; median of each phase over '
      f'--repeats={repeats} cycles of {CYCLE_STEPS} steps after compilation and one warm-up '
      f'cycle, the optimisers taking turns. K-FAC: MC Fisher (one sample), exact damping {DAMPING}; '
      f'amortised = (statistics+inverse + {AMORTISE_EVERY - 1} plain) / {AMORTISE_EVERY}. '
      'XLA peak: `memory_analysis()` of the compiled step (arguments + outputs + temporaries - '
      'aliased).', '',
      device_statement(on_cpu), '',
      *environment.machine_lines(), '',
      '| workload | parameters | batch size | batch |', '|---|---:|---|---|',
      *(f'| {t.workload} | {t.num_params:,} | {batch_notes[t.workload]} | '
        f'{t.batch_description} |' for t in timings), '',
      *markdown_table([row for timing in timings for row in table_rows(timing)]), '',
  ]
  text = '\n'.join(lines)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as report:
    report.write(text)
  return text


def batch_size_and_note(workload: Workload, on_cpu: bool) -> Tuple[int, str]:
  """The batch size to time and where it comes from."""
  setup = SETUPS[workload.workload_name]
  full = workload.train_batch_size
  chosen = FLAGS[setup.batch_flag].value
  if chosen is not None:
    if chosen < 1:
      raise BenchmarkError(f'--{setup.batch_flag} must be at least 1, got {chosen}')
    return chosen, f'{chosen} (--{setup.batch_flag}; the full config\'s is {full})'
  if on_cpu:
    return (setup.cpu_batch_size,
            f'{setup.cpu_batch_size} (CPU default; the full config\'s is {full})')
  return full, f'{full} (the full config\'s)'


def run_benchmark() -> None:
  unknown = [name for name in FLAGS.workloads if name not in SETUPS]
  if unknown:
    raise BenchmarkError(f'unknown workloads {unknown}; choose from {", ".join(SETUPS)}')
  if FLAGS.repeats < 1:
    raise BenchmarkError(f'--repeats must be at least 1, got {FLAGS.repeats}')
  unknown = [name for name in FLAGS.optimisers if name not in OPTIMISERS]
  if unknown:
    raise BenchmarkError(f'unknown optimisers {unknown}; choose from {", ".join(OPTIMISERS)}')
  on_cpu = jax.devices()[0].platform == 'cpu'
  print(device_statement(on_cpu), flush=True)
  timings, notes = [], {}
  for name in FLAGS.workloads:
    workload = workloads.get_workload(name, 'full')
    batch_size, notes[workload.variant_name] = batch_size_and_note(workload, on_cpu)
    print(f'{name}: batch size {notes[workload.variant_name]}', flush=True)
    timings.append(time_workload(workload, batch_size, FLAGS.repeats,
                                 log=lambda line: print(line, flush=True),
                                 optimisers=tuple(FLAGS.optimisers)))
  print(write_report(FLAGS.output, timings, notes, FLAGS.repeats, on_cpu))
  print(f'written to {FLAGS.output}')


def main(argv) -> int:
  if len(argv) > 1:
    print(f'bench_full_step: error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  try:
    run_benchmark()
  except BenchmarkError as error:
    print(f'bench_full_step: error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  app.run(main)
