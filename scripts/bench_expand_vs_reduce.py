"""`make bench`: K-FAC-expand vs K-FAC-reduce, the cost of one preconditioned update.

The paper's cost study (Eschenhagen et al. 2023, "Kronecker-factored approximate curvature for
modern neural network architectures": one preconditioned update of a Wide ResNet on CIFAR-10
at five batch sizes, expand against reduce): reduce's statistics cost `O(N P_in (P_in + R))` per layer against expand's
`O(N R P_in^2)`, so the gap should grow with the batch size N and with the weight-sharing size R.
Everything runs in one process, side by side, on random data of the real shapes:

* **WRN-16-4** (`workloads/cifar_wrn`, the `full` config's depth and width) on `[N, 32, 32, 3]`
  images at five batch sizes (`--batch_sizes`), and at one batch size over image resolutions
  (`R = H * W`, the positions of the stem and first-group convolutions; `--wrn_resolutions`);
* the **ViT of the `small` config** (`workloads/imagenet_vit`) over image resolutions
  (`R = (H / patch)^2` tokens; `--vit_resolutions`).

Each case times four phases, expand against reduce, through the library itself:

* `statistics`: `kfac.compute_statistics` of each flavour (MC Fisher, one sample, by default);
* `inverse`: `kfac.curvature.update_inverses` on statistics of that flavour (eigendecompositions,
  exact damping), the work `T_inv` amortises;
* `precondition`: the damped-inverse product of every covered layer's gradient
  (`kfac.param_paths.layer_gradients` -> `kfac.curvature.precondition_layers` ->
  `kfac.param_paths.parameter_updates`);
* `total`: one jitted `kfac.precondition(...).update` with statistics and inverses due
  (`T_cov = T_inv = 1`): all of the above in one program, as a training step runs it.

`statistics` and `total` are timed for every case. `inverse` and `precondition` run programs
whose shapes depend on neither the batch size nor the image side (the factors are
`[P_in, P_in]`, `[P_out, P_out]` whatever N and R), the same program for both flavours: they
are timed once per model, on the factors of its first case, and have rows for that case only
(the eigendecompositions of WRN-16-4's 2304-wide factors would otherwise dominate the run time
without telling anything new; `total` contains them in every case).

The model runs in evaluation mode (BatchNorm on running statistics), so the statistics pass is
the same computation as a Laplace fit (`scripts/marglik_wrn.py`). Every phase is compiled ahead
of time (`jit(...).lower(...).compile()`), run once to warm up, then `--repeats` times with
expand and reduce interleaved (the machines are shared: interleaving spreads load changes over
both), each run ending in `block_until_ready`; the tables show the median.

**Peak memory** is XLA's own account of each compiled program, `memory_analysis()`:
arguments + outputs + temporaries - aliased bytes, from its static buffer assignment. It is
per program and deterministic, and works the same way on an accelerator; process RSS deltas
(`resource.getrusage`) are not usable here because a process's maximum RSS never goes down,
so in one process every case after the largest one would read 0.

Output: `docs/expand_vs_reduce.md` (tables and the machine: CPU model, cores, load, jax version,
date, accelerator), `docs/expand_vs_reduce.png`, and as the last line of stdout the JSON list
of rows `{model, batch_size, R, phase, expand_s, reduce_s, ...}`.

Eigendecompositions run with `--lapack_threads=1` by default (see the flag). Run time on the 2-core CPU of our shared machines: the default sizes take about 15 minutes
on a quiet machine (the largest WRN-16-4 batch, 64, dominates: about a minute per expand
statistics pass); `--quick` times the tiny configs' models (WRN-10-1, a one-block ViT) at a few
tiny sizes with XLA's backend optimisation off (compilation dominates such cases) and finishes
in under a minute: it checks that everything runs, its times are not the benchmark.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402,F401  (loads the OpenBLAS of jax's CPU LAPACK kernels)
import threadpoolctl  # noqa: E402

import kfac  # noqa: E402
from kfac import curvature, param_paths, plan as planning  # noqa: E402
from workloads.cifar_wrn import configs as wrn_configs  # noqa: E402
from workloads.cifar_wrn.model import WideResNet  # noqa: E402
from workloads.imagenet_vit import configs as vit_configs  # noqa: E402
from workloads.imagenet_vit.model import ViT  # noqa: E402
from benchmark import environment  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool('quick', False, 'Tiny models and sizes, 2 repeats, XLA backend optimisation '
                  'off: a smoke run in under a minute (its times are not the benchmark).')
flags.DEFINE_integer('repeats', 3, 'Timed runs per phase and flavour (median reported).')
flags.DEFINE_list('batch_sizes', ['4', '8', '16', '32', '64'], 'WRN-16-4 batch sizes at 32x32.')
flags.DEFINE_integer('sweep_batch_size', 8, 'Batch size of the resolution (R) sweeps.')
flags.DEFINE_list('wrn_resolutions', ['8', '16', '32', '48'], 'WRN-16-4 image sides (R = side^2).')
flags.DEFINE_list('vit_resolutions', ['16', '32', '64', '128'],
                  'ViT image sides (R = (side / patch)^2 tokens).')
flags.DEFINE_enum('fisher_type', 'mc', kfac.FISHER_TYPES, 'Fisher of the statistics.')
flags.DEFINE_float('damping', 1e-3, 'Damping of the inverses (exact damping).')
flags.DEFINE_integer('lapack_threads', 1, 'Threads of the LAPACK (OpenBLAS) calls behind '
                     "jax's CPU eigh: on a loaded shared CPU a multi-threaded OpenBLAS spins and "
                     'its eigendecompositions run 10-15x slower.')
flags.DEFINE_string('output_dir', None, 'Where expand_vs_reduce.md and .png are written '
                    '(default: docs/, or a new temporary folder with --quick).')

FLAVOURS = ('expand', 'reduce')
PHASES = ('statistics', 'inverse', 'precondition', 'total')
CASE_PHASES = ('statistics', 'total')  # Timed for every case; the others once per model.
LOSS = 'softmax_cross_entropy'
NUM_CLASSES = 10
# --quick: the tiny configs' models at these sizes, four cases (compilation dominates their run
# time); the WRN's R sweep is its one batch-sweep case there.
QUICK_BATCH_SIZES = (2, 4)
QUICK_WRN_RESOLUTIONS = (8,)
QUICK_VIT_RESOLUTIONS = (16, 32)
QUICK_REPEATS = 2
# The goal: at the largest batch size on WRN-16-4, reduce's statistics at least this
# much faster than expand's (and the speed-up growing with R).
GOAL_STATISTICS_SPEEDUP = 2.0


class Model(NamedTuple):
  """A benchmarked network.

  Attributes:
    name: as printed in the tables.
    module: the Flax module, called as `module(images, train=False)`.
    base_resolution: image side of the batch-size sweep.
    positions: `resolution -> R`, the weight-sharing size of its layers.
  """

  name: str
  module: nn.Module
  base_resolution: int
  positions: Callable[[int], int]


class Case(NamedTuple):
  """One timed configuration: a model at a batch size and an image side."""

  model: Model
  batch_size: int
  resolution: int


class PhaseResult(NamedTuple):
  """Median seconds and peak MiB of one phase, per flavour."""

  seconds: Dict[str, float]
  peak_mib: Dict[str, float]


# -- Models and inputs -------------------------------------------------------------------------


def wrn_model(config_name: str) -> Model:
  config = wrn_configs.get_config(config_name)
  name = f'WRN-{config.model.depth}-{config.model.widen_factor}'
  return Model(name, WideResNet(**config.model), config.image_size, lambda side: side * side)


def vit_model(config_name: str) -> Model:
  config = vit_configs.get_config(config_name)
  patch = config.model.patch_size
  name = (f'ViT ({config_name} config: width {config.model.width}, depth {config.model.depth}, '
          f'patch {patch})')
  return Model(name, ViT(**config.model), config.image_size, lambda side: (side // patch)**2)


def model_variables(model: Model) -> Tuple[Any, Dict[str, Any]]:
  """`(params, other collections)`: the parameters do not depend on the image side."""
  images = jnp.zeros((1, model.base_resolution, model.base_resolution, 3), jnp.float32)
  with jax.threefry_partitionable(False):  # Compiles several times faster on CPU (the
    variables = dict(jax.jit(model.module.init)(jax.random.PRNGKey(0), images))  # workloads' too).
  params = variables.pop('params')
  return params, variables


def apply_function(model: Model, state: Dict[str, Any]) -> Callable[[Any, jax.Array], jax.Array]:
  """`apply_fn(params, images) -> logits` in evaluation mode, closing over BatchNorm state."""
  def apply_fn(params, images):
    return model.module.apply({'params': params, **state}, images, train=False)
  return apply_fn


def random_batch(case: Case) -> Tuple[jax.Array, jax.Array]:
  """Normal images `[N, side, side, 3]` and uniform labels `[N]` (only the shapes matter)."""
  key_images, key_labels = jax.random.split(jax.random.PRNGKey(case.batch_size + case.resolution))
  images = jax.random.normal(key_images, (case.batch_size, case.resolution, case.resolution, 3))
  labels = jax.random.randint(key_labels, (case.batch_size,), 0, NUM_CLASSES)
  return images, labels


# -- Timing ------------------------------------------------------------------------------------


def time_phase(programs: Dict[str, Tuple[Any, Sequence[Any]]], repeats: int) -> PhaseResult:
  """Median wall-clock of compiled programs, one per flavour, interleaved.

  Args:
    programs: `{flavour: (compiled program, positional arguments)}`.
    repeats: timed runs per flavour, after one warm-up run.
  """
  for compiled, args in programs.values():
    jax.block_until_ready(compiled(*args))
  times = {flavour: [] for flavour in programs}
  for _ in range(repeats):
    for flavour, (compiled, args) in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times[flavour].append(time.perf_counter() - start)
  return PhaseResult(
      seconds={f: statistics.median(t) for f, t in times.items()},
      peak_mib={f: environment.peak_mib(compiled) for f, (compiled, _) in programs.items()})


def compile_programs(functions: Dict[str, Tuple[Callable[..., Any], Tuple[Any, ...]]]
                     ) -> Dict[str, Tuple[Any, Tuple[Any, ...]]]:
  """`{name: (jit(function) compiled for args, args)}` of `{name: (function, args)}`.

  Tracing runs here, one function after the other; XLA's compilations run in parallel threads
  (they release the GIL), which halves the compile time of an expand/reduce pair on 2 cores.
  """
  lowered = {name: jax.jit(function).lower(*args) for name, (function, args) in functions.items()}
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(lowered)) as pool:
    compiled = {name: pool.submit(program.compile) for name, program in lowered.items()}
  return {name: (compiled[name].result(), args) for name, (_, args) in functions.items()}


class CurvaturePrograms(NamedTuple):
  """The optimiser's structure for one model and its flavour-independent programs.

  The factor shapes depend on neither the batch size nor the image side, so one compiled
  inverse and one compiled precondition program serve every case of a model and both flavours.
  """

  plan: planning.Plan
  config: curvature.CurvatureConfig
  initial_state: curvature.CurvatureState
  update_factors: Callable[..., Any]
  inverse: Any
  precondition: Any


def curvature_programs(apply_fn: Callable[..., Any], params: Any, images: jax.Array,
                       grads: Any, fisher_type: str, damping: float) -> CurvaturePrograms:
  """Plans the optimiser's layers (as `kfac.precondition` does), builds its initial state (what
  `kfac.precondition(...).init` returns, the same for both flavours) and compiles the inverse
  (`update_inverses`) and precondition programs."""
  options = planning.validate_options(planning.PreconditionOptions(
      loss=LOSS, sample_inputs=images, fisher_type=fisher_type, damping=damping,
      inverse_method='eigh', cov_update_every=1, inverse_update_every=1))
  plan = planning.make_plan(apply_fn, params, images, options)
  config = planning.curvature_config(plan.layers, options)
  infos = {path: layer.info for path, layer in plan.layers.items()}
  state = jax.jit(functools.partial(curvature.init_curvature_state, config))()

  def precondition_fn(curvature_state, gradients):
    matrices = curvature.precondition_layers(
        curvature_state, param_paths.layer_gradients(infos, gradients), config)
    return param_paths.parameter_updates(infos, matrices)

  programs = compile_programs({
      'inverse': (functools.partial(curvature.update_inverses, config=config), (state,)),
      'precondition': (precondition_fn, (state, grads))})
  return CurvaturePrograms(plan, config, state,
                           jax.jit(functools.partial(curvature.update_statistics, config=config)),
                           programs['inverse'][0], programs['precondition'][0])


def random_gradients(params: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape, p.dtype), params)


def time_case(case: Case, params: Any, state: Dict[str, Any], grads: Any,
              initial_state: curvature.CurvatureState, repeats: int, fisher_type: str,
              damping: float) -> Tuple[Dict[str, PhaseResult], Dict[str, Any]]:
  """The `statistics` and `total` phases of one case, expand against reduce.

  Args:
    case: the model, batch size and image side.
    params, state: the model's parameters and other collections.
    grads: gradients of the parameters' shapes (only the shapes matter).
    initial_state: the preconditioner's initial state (`CurvaturePrograms.initial_state`).
    repeats, fisher_type, damping: as the flags.

  Returns:
    `({phase: PhaseResult}, {flavour: factors})`, the factors for `time_curvature_phases`.
  """
  apply_fn = apply_function(case.model, state)
  images, labels = random_batch(case)
  rng = jax.random.PRNGKey(1)
  results = {}
  statistics_functions = {}
  for flavour in FLAVOURS:
    report = kfac.layer_report(apply_fn, params, images)
    statistics_fn = functools.partial(kfac.compute_statistics, apply_fn, loss=LOSS, report=report,
                                      flavours={path: flavour for path in report.layers},
                                      fisher_type=fisher_type)
    statistics_functions[flavour] = (lambda p, x, y, key, fn=statistics_fn: fn(p, x, y, rng=key),
                                     (params, images, labels, rng))
  statistics_programs = compile_programs(statistics_functions)
  results['statistics'] = time_phase(statistics_programs, repeats)
  factors = {flavour: compiled(*args) for flavour, (compiled, args) in statistics_programs.items()}

  total_functions = {}
  for flavour in FLAVOURS:
    preconditioner = kfac.precondition(
        apply_fn, loss=LOSS, sample_inputs=images, flavour=flavour, fisher_type=fisher_type,
        damping=damping, inverse_method='eigh', cov_update_every=1, inverse_update_every=1)

    def update(gradients, precondition_state, p, x, y, key, preconditioner=preconditioner):
      return preconditioner.update(gradients, precondition_state, p, inputs=x, targets=y, rng=key)

    total_functions[flavour] = (update, (grads, initial_state, params, images, labels, rng))
  results['total'] = time_phase(compile_programs(total_functions), repeats)
  return results, factors


def time_curvature_phases(programs: CurvaturePrograms, factors: Dict[str, Any], grads: Any,
                          repeats: int) -> Dict[str, PhaseResult]:
  """The `inverse` and `precondition` phases on each flavour's factors (one case's)."""
  factor_states = {flavour: programs.update_factors(programs.initial_state, flavour_factors)
                   for flavour, flavour_factors in factors.items()}
  inverse_states = {flavour: programs.inverse(s) for flavour, s in factor_states.items()}
  return {
      'inverse': time_phase({flavour: (programs.inverse, (factor_states[flavour],))
                             for flavour in FLAVOURS}, repeats),
      'precondition': time_phase({flavour: (programs.precondition, (inverse_states[flavour], grads))
                                  for flavour in FLAVOURS}, repeats),
  }


# -- Report ------------------------------------------------------------------------------------


def result_rows(case: Case, sweeps: Sequence[str],
                results: Dict[str, PhaseResult]) -> List[Dict[str, Any]]:
  """The JSON rows of one case, one per phase timed with it."""
  rows = []
  for phase in (phase for phase in PHASES if phase in results):
    result = results[phase]
    rows.append({
        'model': case.model.name, 'batch_size': case.batch_size,
        'R': case.model.positions(case.resolution), 'resolution': case.resolution,
        'sweeps': list(sweeps), 'phase': phase,
        'expand_s': result.seconds['expand'], 'reduce_s': result.seconds['reduce'],
        'expand_peak_mib': result.peak_mib['expand'], 'reduce_peak_mib': result.peak_mib['reduce']})
  return rows


def machine_lines(quick: bool) -> List[str]:
  lines = environment.machine_lines()
  if quick:
    lines.append('- **--quick**: tiny models, XLA backend optimisation off: a smoke run, '
                 'not the benchmark')
  return lines


def markdown_table(rows: List[Dict[str, Any]], key_columns: Sequence[str]) -> List[str]:
  header = [*key_columns, 'phase', 'expand s', 'reduce s', 'reduce/expand', 'speed-up',
            'expand MiB', 'reduce MiB']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    ratio = row['reduce_s'] / row['expand_s']
    lines.append('| ' + ' | '.join([
        *(str(row[column]) for column in key_columns), row['phase'],
        f'{row["expand_s"]:.4f}', f'{row["reduce_s"]:.4f}', f'{ratio:.2f}', f'{1 / ratio:.2f}x',
        f'{row["expand_peak_mib"]:.1f}', f'{row["reduce_peak_mib"]:.1f}']) + ' |')
  return lines


def goal_lines(batch_rows: List[Dict[str, Any]], sweep_rows: List[Dict[str, Any]]) -> List[str]:
  """Whether the measurements meet the goals, stated from the rows."""
  largest = max(r['batch_size'] for r in batch_rows)
  headline = next(r for r in batch_rows
                  if r['batch_size'] == largest and r['phase'] == 'statistics')
  speedup = headline['expand_s'] / headline['reduce_s']
  lines = [f'- {headline["model"]} at batch size {largest}: reduce\'s statistics '
           f'{speedup:.2f}x faster than expand\'s ({headline["reduce_s"]:.3f} s against '
           f'{headline["expand_s"]:.3f} s; goal at least {GOAL_STATISTICS_SPEEDUP:g}x: '
           f'{"met" if speedup >= GOAL_STATISTICS_SPEEDUP else "not met"}), peak memory '
           f'{headline["reduce_peak_mib"]:.0f} MiB against {headline["expand_peak_mib"]:.0f} MiB.']
  for model in dict.fromkeys(r['model'] for r in sweep_rows):
    for phase in ('statistics', 'total'):
      ordered = sorted((r for r in sweep_rows if r['model'] == model and r['phase'] == phase),
                       key=lambda r: r['R'])
      speedups = [r['expand_s'] / r['reduce_s'] for r in ordered]
      growing = all(later > earlier for earlier, later in zip(speedups, speedups[1:]))
      values = ', '.join(f'R={r["R"]}: {v:.2f}x' for r, v in zip(ordered, speedups))
      trend = ('one R only' if len(speedups) < 2 else
               'grows with R' if growing else 'does not grow monotonically with R')
      lines.append(f'- {model}, {phase} speed-up over R: {values} ({trend}).')
  return lines


def write_markdown(path: str, rows: List[Dict[str, Any]], batch_model: str,
                   repeats: int, fisher_type: str, quick: bool, elapsed: float) -> None:
  batch_rows = [r for r in rows if 'batch' in r['sweeps']]
  sweep_rows = [r for r in rows if 'R' in r['sweeps']]
  lines = [
      '# K-FAC-expand vs K-FAC-reduce: the cost of one preconditioned update',
      '',
      'Written by `scripts/bench_expand_vs_reduce.py` (`make bench`); the method is in its '
      'docstring. Random data of the real shapes, model in evaluation mode, '
      f'`fisher_type={fisher_type!r}` (one sample), exact damping, median of {repeats} runs '
      'after compilation and one warm-up run, expand and reduce interleaved. '
      '`reduce/expand` is the time ratio (below 1: reduce is faster), `speed-up` its inverse. '
      'Peak memory is XLA\'s `memory_analysis()` of each compiled program (arguments + outputs '
      '+ temporaries - aliased).',
      '',
      *machine_lines(quick),
      f'- Wall-clock of the whole benchmark: {elapsed / 60:.1f} min',
      '',
      '## Goals',
      '',
      *goal_lines(batch_rows, sweep_rows),
      '',
      f'## {batch_model}, batch-size sweep',
      '',
      *markdown_table([r for r in batch_rows if r['phase'] in CASE_PHASES], ('batch_size', 'R')),
      '',
      f'## Weight-sharing size R (batch size {sweep_rows[0]["batch_size"]})',
      '',
      'R is the number of positions sharing a weight: image locations of the WRN\'s stem and '
      'first group (`side^2`; the later groups have `R / 4` and `R / 16`), tokens of the ViT '
      '(`(side / patch)^2`). Expand\'s extra work is `O(N R P^2)` per layer against the '
      'layer\'s own `O(N R P_in P_out)`: for a 3x3 convolution `P_in = 9 C`, so expand\'s '
      '`A` costs about 9 times the convolution. A ViT also spends `O(N R^2 D)` in attention '
      '(no weights, the same for both flavours), which outgrows every statistic as R grows '
      'when the width D is small.',
      '',
      *markdown_table([r for r in sweep_rows if r['phase'] in CASE_PHASES],
                      ('model', 'resolution', 'R')),
      '',
      '## Inverse and preconditioning (once per model)',
      '',
      'The same compiled program for both flavours and every case of a model (the factor shapes '
      'depend on neither N nor R), timed on the factors of the model\'s first case: the ratios '
      'show the noise level. `total` above contains both in every case.',
      '',
      *markdown_table([r for r in rows if r['phase'] not in CASE_PHASES],
                      ('model', 'batch_size', 'R')),
      '',
  ]
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def plain_log_x_axis(axis: Any, ticks: Sequence[float]) -> None:
  """A log x axis labelled with plain numbers at `ticks` (the measured sizes)."""
  axis.set_xscale('log')
  axis.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(set(ticks))))
  axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f'{value:g}'))
  axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def write_plot(path: str, rows: List[Dict[str, Any]], batch_model: str) -> None:
  figure, (time_axis, ratio_axis, memory_axis) = plt.subplots(1, 3, figsize=(16, 4.5))
  batch_rows = [r for r in rows if 'batch' in r['sweeps']]
  for phase, marker in (('statistics', 'o'), ('total', 's')):
    phase_rows = [r for r in batch_rows if r['phase'] == phase]
    sizes = [r['batch_size'] for r in phase_rows]
    for flavour, style in (('expand', '-'), ('reduce', '--')):
      time_axis.plot(sizes, [r[f'{flavour}_s'] for r in phase_rows], style, marker=marker,
                     label=f'{flavour}, {phase}')
  time_axis.set(yscale='log', xlabel='batch size', ylabel='seconds (median)',
                title=f'{batch_model}: one preconditioned update')
  plain_log_x_axis(time_axis, [r['batch_size'] for r in batch_rows])
  time_axis.legend(fontsize=8)

  sweep_rows = [r for r in rows if 'R' in r['sweeps']]
  for model in dict.fromkeys(r['model'] for r in sweep_rows):
    for phase, style in (('statistics', '-'), ('total', '--')):
      phase_rows = sorted((r for r in sweep_rows if r['model'] == model and r['phase'] == phase),
                          key=lambda r: r['R'])
      ratio_axis.plot([r['R'] for r in phase_rows],
                      [r['expand_s'] / r['reduce_s'] for r in phase_rows], style, marker='o',
                      label=f'{model.split(" (")[0]}, {phase}')
  ratio_axis.axhline(1.0, color='grey', linewidth=0.8)
  ratio_axis.set(xlabel='weight-sharing size R', ylabel='expand time / reduce time',
                 title=f'speed-up of reduce vs R (batch {sweep_rows[0]["batch_size"]})')
  plain_log_x_axis(ratio_axis, [r['R'] for r in sweep_rows])
  ratio_axis.legend(fontsize=8)

  phase_rows = [r for r in batch_rows if r['phase'] == 'statistics']
  for flavour, style in (('expand', '-'), ('reduce', '--')):
    memory_axis.plot([r['batch_size'] for r in phase_rows],
                     [r[f'{flavour}_peak_mib'] for r in phase_rows], style, marker='o',
                     label=flavour)
  memory_axis.set(yscale='log', xlabel='batch size', ylabel='MiB (XLA peak)',
                  title=f'{batch_model}: peak memory of the statistics')
  plain_log_x_axis(memory_axis, [r['batch_size'] for r in phase_rows])
  memory_axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


# -- Main --------------------------------------------------------------------------------------


def benchmark_cases(quick: bool) -> Tuple[List[Tuple[Case, List[str]]], str]:
  """`([(case, sweeps it belongs to)], name of the batch-sweep model)`; a case in both sweeps
  is timed once."""
  if quick:
    wrn, vit = wrn_model('tiny'), vit_model('tiny')
    batch_sizes, sweep_batch = QUICK_BATCH_SIZES, QUICK_BATCH_SIZES[0]
    wrn_sides, vit_sides = QUICK_WRN_RESOLUTIONS, QUICK_VIT_RESOLUTIONS
    wrn = wrn._replace(base_resolution=QUICK_WRN_RESOLUTIONS[-1])
  else:
    wrn, vit = wrn_model('full'), vit_model('small')
    batch_sizes, sweep_batch = [int(b) for b in FLAGS.batch_sizes], FLAGS.sweep_batch_size
    wrn_sides = [int(s) for s in FLAGS.wrn_resolutions]
    vit_sides = [int(s) for s in FLAGS.vit_resolutions]
  cases: Dict[Tuple[str, int, int], Tuple[Case, List[str]]] = {}

  def add(case: Case, sweep: str) -> None:
    key = (case.model.name, case.batch_size, case.resolution)
    cases.setdefault(key, (case, []))[1].append(sweep)

  for batch_size in batch_sizes:
    add(Case(wrn, batch_size, wrn.base_resolution), 'batch')
  for model, sides in ((wrn, wrn_sides), (vit, vit_sides)):
    for side in sides:
      add(Case(model, sweep_batch, side), 'R')
  return list(cases.values()), wrn.name


def run_benchmark() -> None:
  """Times every case, writes the report, prints the JSON rows last."""
  repeats = QUICK_REPEATS if FLAGS.quick else FLAGS.repeats
  started = time.perf_counter()
  cases, batch_model = benchmark_cases(FLAGS.quick)
  models: Dict[str, Tuple[Any, Dict[str, Any], Any, CurvaturePrograms]] = {}
  rows = []
  for case, sweeps in cases:
    case_start = time.perf_counter()
    name = case.model.name
    first_case = name not in models
    if first_case:
      params, state = model_variables(case.model)
      grads = random_gradients(params)
      models[name] = (params, state, grads, curvature_programs(
          apply_function(case.model, state), params, random_batch(case)[0], grads,
          FLAGS.fisher_type, FLAGS.damping))
    params, state, grads, programs = models[name]
    results, factors = time_case(case, params, state, grads, programs.initial_state, repeats,
                                 FLAGS.fisher_type, FLAGS.damping)
    if first_case:
      results.update(time_curvature_phases(programs, factors, grads, repeats))
    case_rows = result_rows(case, sweeps, results)
    rows.extend(case_rows)
    summary = ', '.join(f'{r["phase"]} {r["expand_s"]:.3f}/{r["reduce_s"]:.3f}s' for r in case_rows)
    print(f'{case.model.name} N={case.batch_size} side={case.resolution} '
          f'R={case.model.positions(case.resolution)} (expand/reduce): {summary} '
          f'[{time.perf_counter() - case_start:.0f} s]', flush=True)
  output_dir = FLAGS.output_dir or (tempfile.mkdtemp(prefix='expand_vs_reduce_')
                                    if FLAGS.quick else 'docs')
  os.makedirs(output_dir, exist_ok=True)
  write_markdown(os.path.join(output_dir, 'expand_vs_reduce.md'), rows, batch_model,
                 repeats, FLAGS.fisher_type, FLAGS.quick, time.perf_counter() - started)
  write_plot(os.path.join(output_dir, 'expand_vs_reduce.png'), rows, batch_model)
  print(f'wrote {output_dir}/expand_vs_reduce.md and .png', flush=True)
  print(json.dumps([{key: row[key] for key in ('model', 'batch_size', 'R', 'phase', 'expand_s',
                                               'reduce_s', 'expand_peak_mib', 'reduce_peak_mib')}
                    for row in rows]))


def main(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.quick:
    # Before the first computation initialises the backend: tiny programs compile 3x faster.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_backend_optimization_level=0').strip()
  with threadpoolctl.threadpool_limits(limits=FLAGS.lapack_threads, user_api='blas'):
    run_benchmark()


if __name__ == '__main__':
  app.run(main)
