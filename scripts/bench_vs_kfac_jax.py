"""`make bench-kfac-jax`: our K-FAC training step against kfac-jax's, same model, same schedule.

Issue 13's goal: our K-FAC step no slower than kfac-jax's (0.0.8) on

  * `mlp`: a 784-512-512-10 MLP (`--activation`, tanh by default) at batch 256, softmax
    cross-entropy;
  * `dense_seq`: one Dense layer (128 -> 128) applied over inputs `[64, 64, 128]` (batch 64,
    sequence 64, features 128: a weight-sharing layer), then the mean over positions and softmax
    cross-entropy over the 128 outputs;

with curvature statistics every step, and inverses every step (`T_inv = 1`) and every 10 steps.

**One process per side and model.** kfac-jax lives in an interpreter of its own (`--kfac_jax_python`,
`.venv-kfac-jax/bin/python` by default, which `make bench-kfac-jax` creates), so the project's
environment never holds it. This script is the driver and, with `--worker`, the worker: per
model it runs our side (`--our_python`, this interpreter by default) and then kfac-jax's, each
printing one JSON line (its versions and rows); the driver prints a Markdown table and writes
`--output`, with the machine, the load average at the start and the end, every side's versions
and the exact worker commands. A missing kfac-jax interpreter skips that side with a message.

**jax versions.** kfac-jax 0.0.8 (the newest release) fails on jax >= 0.9.2: its graph matcher
(`tag_graph_matcher.eval_jaxpr_eqn`) unpacks `Primitive.get_bind_params(...)` as
`(subfuns, params)`, and jax 0.9.2 returns the params alone. Its interpreter therefore has jax
and jaxlib 0.9.1 (`make bench-kfac-jax` pins them), ours the project's jax 0.10: the two sides
compile with different XLA versions, and the report says so.

**The same model, batch and settings on both sides.** The parameters come from one NumPy seed
(`{'Dense_i': {'kernel', 'bias'}}`, the Flax layout), the batch from another; ours applies them
with a Flax module (our K-FAC finds Flax Dense layers), kfac-jax with the same `x @ kernel + bias`
in plain jax (it registers the layers itself by matching the graph; its worker reports the
blocks it built). Each row records the loss of its first step, which must agree across sides.
Both sides: MC Fisher with one sample per example (ours `fisher_type='mc'`; kfac-jax
`estimation_mode='fisher_gradients'`), damping `DAMPING`, statistics EMA `EMA_DECAY` every step,
fixed learning rate `LEARNING_RATE` and heavy-ball momentum `MOMENTUM` (ours `nesterov=False`;
kfac-jax `use_adaptive_learning_rate/momentum/damping=False` and the values passed to `step`),
no weight decay (`l2_reg=0`), no warm start / burn-in (ours `warm_start_steps=0`, kfac-jax
`num_burnin_steps=0`), so that every side refreshes its inverses on steps 0, T_inv, 2 T_inv, ...
`dense_seq` runs our K-FAC-expand (`--flavour`): kfac-jax's repeated-dense block is expand
(positions as extra examples).

**The rows.** Ours, through the public API (`kfac.kfac_optimizer`): "two passes" (`jax.grad` of
the loss, then the optimiser's own statistics pass) and, where this `kfac` has it, "fused"
(`kfac.gradient_and_statistics`: one forward pass for the gradient and the statistics, handed to
the optimiser as `statistics=`); each with `inverse_method='eigh'` (our default: exact damping,
`(A kron B + damping I)^-1` through eigendecompositions) and `'cholesky'` (pi-damped Kronecker
factors `(A + d_A I)^-1 kron (B + d_B I)^-1` through Cholesky factors). kfac-jax: its default
(the same pi-damped factors, inverted by `jnp.linalg.inv`: `_USE_CHOLESKY_INVERSION` is off in
0.0.8) and `use_exact_inverses=True` (eigendecompositions, exact damping). Like for like: ours
'cholesky' against kfac-jax's default, ours 'eigh' against its exact inverses.

**Timing.** The whole training step (gradient, statistics, inverses when due, preconditioning,
momentum, parameter update), jitted (kfac-jax jits its own `step`), parameters and optimiser
state donated on both sides. A *period* is T_inv consecutive steps ending in
`jax.block_until_ready`; its time / T_inv is one sample, so every sample of the T_inv = 10 rows
is the mean over a whole period holding exactly one inverse update. After compilation and one
warm-up period, the variants of a worker take turns period by period (load changes on a shared
machine hit them alike) until each has `--steps` timed steps (at least 20); the table shows
the median sample (min-max). These machines are shared: compare the sides measured in one run.

  .venv/bin/python scripts/bench_vs_kfac_jax.py           # both sides, docs/bench_vs_kfac_jax.md
  .venv/bin/python scripts/bench_vs_kfac_jax.py --quick   # tiny sizes: a check, not a benchmark

`--quick` runs tiny models with XLA's optimisations off, one timed period per variant, writes a
report only with `--output`, and prints as its last line the JSON list of rows
`{side, model, variant, inverse, inverse_every, ms_per_step, ...}`.
"""

from __future__ import annotations

import os

# jaxlib's CPU eigh calls LAPACK from OpenBLAS, whose threads spin-wait against XLA's on shared
# cores (docs/bench_kfac_step.md): one thread, set before numpy and jax load it (both sides).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence,  # noqa: E402
                    Tuple)

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool('quick', False, 'Tiny models, one timed period per variant, no XLA '
                  'optimisation: a correctness check, not a benchmark.')
flags.DEFINE_integer('steps', 50, 'Timed steps per variant (at least 20), in whole periods of '
                     'T_inv steps.')
flags.DEFINE_list('models', ['mlp', 'dense_seq'], 'Models to time.')
flags.DEFINE_list('sides', ['ours', 'kfac_jax'], 'Sides to time.')
flags.DEFINE_enum('activation', 'tanh', ['tanh', 'relu'], 'Hidden activation of the MLP.')
flags.DEFINE_enum('flavour', 'expand', ['expand', 'reduce'], 'Our K-FAC flavour (dense_seq; '
                  'the MLP has no weight sharing, where both are the same).')
flags.DEFINE_string('kfac_jax_python', '.venv-kfac-jax/bin/python',
                    'The interpreter with kfac-jax installed.')
flags.DEFINE_string('our_python', None, 'The interpreter of our side (default: this one).')
flags.DEFINE_string('output', 'docs/bench_vs_kfac_jax.md', 'Markdown report path.')
flags.DEFINE_enum('worker', None, ['ours', 'kfac_jax'], 'Internal: time this side of --models '
                  'and print one JSON line.')

SIDES = ('ours', 'kfac_jax')
SIDE_NAMES = {'ours': 'ours', 'kfac_jax': 'kfac-jax'}
INVERSE_EVERY = (1, 10)  # T_inv of the rows; statistics every step.
LEARNING_RATE = 1e-3
MOMENTUM = 0.9
DAMPING = 1e-3  # kfac.defaults.DAMPING
EMA_DECAY = 0.95  # kfac.defaults.EMA_DECAY; kfac-jax's curvature_ema default.
MIN_TIMED_STEPS = 20
PARAMS_SEED, BATCH_SEED, STEP_SEED = 0, 1, 2
# The first-step losses of one model must agree across sides and variants (float32 sums).
LOSS_RTOL = 1e-4
# kfac-jax's block classes that hold a Kronecker-factored dense block (anything else, e.g. a
# generic diagonal block, would make the comparison unfair).
KFAC_JAX_DENSE_BLOCKS = ('DenseTwoKroneckerFactored', 'RepeatedDenseKroneckerFactored')
ROW_KEYS = ('side', 'model', 'variant', 'inverse', 'damping', 'inverse_every', 'ms_per_step',
            'ms_min', 'ms_max', 'samples', 'first_loss')

Row = Dict[str, Any]  # ROW_KEYS
Params = Dict[str, Dict[str, jax.Array]]


class Model(NamedTuple):
  """A stack of Dense layers, the same on both sides.

  Attributes:
    name: `mlp` or `dense_seq`.
    description: in words, for the report.
    input_shape: the batch of inputs, `[N, D]` or `[N, R, D]`.
    widths: output features of each Dense layer; the last is the number of classes.
    activation: between Dense layers (`tanh` or `relu`).
    pool_positions: mean over axis 1 (the positions) after the last layer.
  """

  name: str
  description: str
  input_shape: Tuple[int, ...]
  widths: Tuple[int, ...]
  activation: str
  pool_positions: bool


def make_model(name: str, activation: str, quick: bool) -> Model:
  """The benchmark's `mlp` or `dense_seq` (tiny sizes with `quick`)."""
  if name == 'mlp':
    shape, widths = ((8, 32), (16, 16, 10)) if quick else ((256, 784), (512, 512, 10))
    sizes = '-'.join(str(size) for size in (shape[-1], *widths))
    return Model(name, f'{sizes} MLP ({activation}), batch {shape[0]}, softmax cross-entropy',
                 shape, widths, activation, pool_positions=False)
  if name == 'dense_seq':
    shape, widths = ((4, 6, 8), (8,)) if quick else ((64, 64, 128), (128,))
    return Model(name, f'Dense {shape[-1]} -> {widths[0]} over inputs {list(shape)} (batch, '
                 'sequence, features), mean over positions, softmax cross-entropy', shape,
                 widths, activation, pool_positions=True)
  raise app.UsageError(f'unknown model {name!r}; choose from mlp, dense_seq')


def initial_params(model: Model) -> Dict[str, Dict[str, np.ndarray]]:
  """`{'Dense_i': {'kernel': [D_in, D_out], 'bias': [D_out]}}`: LeCun-normal kernels, zero
  biases, from `PARAMS_SEED` (NumPy, so that both interpreters build the same values)."""
  rng = np.random.default_rng(PARAMS_SEED)
  params, fan_in = {}, model.input_shape[-1]
  for index, width in enumerate(model.widths):
    kernel = rng.standard_normal((fan_in, width)) / math.sqrt(fan_in)
    params[f'Dense_{index}'] = {'kernel': kernel.astype(np.float32),
                                'bias': np.zeros(width, np.float32)}
    fan_in = width
  return params


def model_batch(model: Model) -> Tuple[np.ndarray, np.ndarray]:
  """`(inputs [N, ...], labels [N])` from `BATCH_SEED`: standard normal inputs, uniform labels."""
  rng = np.random.default_rng(BATCH_SEED)
  inputs = rng.standard_normal(model.input_shape).astype(np.float32)
  labels = rng.integers(0, model.widths[-1], model.input_shape[0]).astype(np.int32)
  return inputs, labels


def activate(model: Model, x: jax.Array) -> jax.Array:
  return jnp.tanh(x) if model.activation == 'tanh' else jax.nn.relu(x)


def plain_forward(model: Model, params: Params, x: jax.Array) -> jax.Array:
  """The logits `[N, classes]` in plain jax (`x @ kernel + bias` per layer): kfac-jax's model."""
  for index in range(len(model.widths)):
    layer = params[f'Dense_{index}']
    x = x @ layer['kernel'] + layer['bias']
    if index < len(model.widths) - 1:
      x = activate(model, x)
  return x.mean(axis=1) if model.pool_positions else x


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of `logits [N, C]` against integer `labels [N]`."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


class Runner(NamedTuple):
  """One variant to time: `step(carry, index) -> (carry, loss)` advances one training step (the
  step `index` counts from 0); `carry` starts as `init`."""

  row: Row  # side, model, variant, inverse, damping, inverse_every
  init: Any
  step: Callable[[Any, int], Tuple[Any, jax.Array]]


def run_period(runner: Runner, carry: Any, first_index: int, num_steps: int
               ) -> Tuple[Any, jax.Array, float]:
  """`num_steps` steps from step `first_index`, blocked on at the end: `(carry, first loss,
  seconds per step)`."""
  start = time.perf_counter()
  losses = []
  for index in range(first_index, first_index + num_steps):
    carry, loss = runner.step(carry, index)
    losses.append(loss)
  jax.block_until_ready((carry, losses))
  return carry, losses[0], (time.perf_counter() - start) / num_steps


def time_runners(runners: Sequence[Runner], inverse_every: int, periods: int) -> List[Row]:
  """Every runner's rows: compile and warm up (one period each; its first loss is the row's
  `first_loss`), then `periods` timed periods each, the runners taking turns period by period."""
  carries, samples, first_losses = [], [[] for _ in runners], []
  warm_up = max(inverse_every, 2)  # Compiles, and runs both sides of every T_inv branch.
  for runner in runners:
    carry, first_loss, _ = run_period(runner, runner.init, 0, warm_up)
    carries.append(carry)
    first_losses.append(float(first_loss))
  for period in range(periods):
    for position, runner in enumerate(runners):
      carries[position], _, seconds = run_period(
          runner, carries[position], warm_up + period * inverse_every, inverse_every)
      samples[position].append(1e3 * seconds)
  rows = []
  for runner, times, first_loss in zip(runners, samples, first_losses):
    row = {**runner.row, 'ms_per_step': statistics.median(times), 'ms_min': min(times),
           'ms_max': max(times), 'samples': len(times), 'first_loss': first_loss}
    print(f'{row["side"]:8s} {row["model"]:10s} T_inv={inverse_every:<3d} {row["variant"]:10s} '
          f'{row["inverse"]:14s} {row["damping"]:9s} {row["ms_per_step"]:9.2f} ms/step',
          file=sys.stderr, flush=True)
    rows.append(row)
  return rows


def timed_periods(inverse_every: int, quick: bool, steps: int) -> int:
  """Timed periods of `inverse_every` steps: one in `quick` mode, else enough for `steps`."""
  return 1 if quick else math.ceil(max(steps, MIN_TIMED_STEPS) / inverse_every)


def device_tree(tree: Any) -> Any:
  """A fresh device copy of a NumPy tree (each runner donates its own buffers)."""
  return jax.tree_util.tree_map(jnp.array, tree)


def package_versions(names: Sequence[str]) -> Dict[str, Optional[str]]:
  versions = {'python': platform.python_version(), 'executable': sys.executable}
  for name in names:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return versions


# --- Our side: kfac (this project), Flax. -------------------------------------------------------


def our_passes() -> Tuple[List[str], List[str]]:
  """Our steps to time, and a note for each one this `kfac` cannot run: 'two passes', and
  'fused' where `kfac.gradient_and_statistics` exists."""
  import kfac

  if hasattr(kfac, 'gradient_and_statistics'):
    return ['two passes', 'fused'], []
  return ['two passes'], ['ours, fused: not run (this kfac has no gradient_and_statistics)']


def our_runners(model: Model, inverse_every: int, passes: Sequence[str]) -> List[Runner]:
  """Our `kfac.kfac_optimizer` step per pass (`our_passes`) and inverse method ('eigh' with
  exact damping, 'cholesky' with pi-damped factors)."""
  import flax.linen as nn
  import optax

  import kfac

  class DenseStack(nn.Module):
    """`plain_forward` as a Flax module (the same parameter tree under 'params')."""

    @nn.compact
    def __call__(self, x):
      for index, width in enumerate(model.widths):
        x = nn.Dense(width)(x)
        if index < len(model.widths) - 1:
          x = activate(model, x)
      return x.mean(axis=1) if model.pool_positions else x

  inputs, labels = (jnp.asarray(array) for array in model_batch(model))
  apply_fn = DenseStack().apply
  runners = []
  for method, damping in (('eigh', 'exact'), ('cholesky', 'pi-damped')):
    options = dict(loss='softmax_cross_entropy', sample_inputs=inputs, flavour=FLAGS.flavour,
                   fisher_type='mc', num_samples=1, damping=DAMPING, ema_decay=EMA_DECAY,
                   cov_update_every=1, inverse_update_every=inverse_every, warm_start_steps=0,
                   inverse_method=method)
    optimizer = kfac.kfac_optimizer(apply_fn, learning_rate=LEARNING_RATE, momentum=MOMENTUM,
                                    nesterov=False, **options)
    gradient_fn = (kfac.gradient_and_statistics(lambda p, x: (apply_fn(p, x), None), **options)
                   if 'fused' in passes else None)

    def two_passes(params, opt_state, rng, optimizer=optimizer):
      loss, grads = jax.value_and_grad(
          lambda p: softmax_cross_entropy(apply_fn(p, inputs), labels))(params)
      updates, opt_state = optimizer.update(grads, opt_state, params, inputs=inputs,
                                            targets=labels, rng=rng)
      return optax.apply_updates(params, updates), opt_state, loss

    def fused(params, opt_state, rng, optimizer=optimizer, gradient_fn=gradient_fn):
      (loss, _), grads, stats = gradient_fn(
          lambda logits: softmax_cross_entropy(logits, labels), params, opt_state,
          inputs=inputs, targets=labels, rng=rng)
      updates, opt_state = optimizer.update(grads, opt_state, params, statistics=stats)
      return optax.apply_updates(params, updates), opt_state, loss

    for name, train_step in (('two passes', two_passes), ('fused', fused)):
      if name in passes:
        row = {'side': 'ours', 'model': model.name, 'variant': name, 'inverse': method,
               'damping': damping, 'inverse_every': inverse_every}
        runners.append(our_runner(model, optimizer, train_step, row))
  return runners


def our_runner(model: Model, optimizer: Any, train_step: Callable, row: Row) -> Runner:
  """A `Runner` of `train_step(params, opt_state, rng) -> (params, opt_state, loss)`, jitted
  with the parameters and the optimiser state donated."""
  variables = device_tree({'params': initial_params(model)})
  jitted = jax.jit(train_step, donate_argnums=(0, 1))
  keys = jax.random.PRNGKey(STEP_SEED)

  def step(carry, index):
    params, opt_state = carry
    params, opt_state, loss = jitted(params, opt_state, jax.random.fold_in(keys, index))
    return (params, opt_state), loss

  return Runner(row, (variables, jax.jit(optimizer.init)(variables)), step)


# --- kfac-jax's side (its own interpreter: no kfac, no Flax). -----------------------------------


def kfac_jax_runners(model: Model, inverse_every: int) -> Tuple[List[Runner], List[str]]:
  """kfac-jax's `Optimizer.step`, its default (pi-damped inverses) and exact inverses; and the
  names of the curvature blocks it registered."""
  import kfac_jax

  inputs, labels = (jnp.asarray(array) for array in model_batch(model))

  def loss_fn(params, batch):
    x, y = batch
    logits = plain_forward(model, params, x)
    kfac_jax.register_softmax_cross_entropy_loss(logits, y)
    return softmax_cross_entropy(logits, y)

  runners, blocks = [], []
  for exact, variant, inverse, damping in ((False, 'default', 'jnp.linalg.inv', 'pi-damped'),
                                           (True, 'exact', 'eigh', 'exact')):
    optimizer = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn), l2_reg=0.0,
        use_adaptive_learning_rate=False, use_adaptive_momentum=False,
        use_adaptive_damping=False, estimation_mode='fisher_gradients',
        curvature_ema=EMA_DECAY, curvature_update_period=1, inverse_update_period=inverse_every,
        use_exact_inverses=exact, num_burnin_steps=0, multi_device=False)
    params = device_tree(initial_params(model))
    rng = jax.random.PRNGKey(STEP_SEED)
    state = optimizer.init(params, rng, (inputs, labels))
    # 0.0.8 has no public accessor of its estimator.
    blocks = [type(block).__name__ for block in optimizer._estimator.blocks]  # pylint: disable=protected-access
    unfair = [name for name in blocks if name not in KFAC_JAX_DENSE_BLOCKS]
    if unfair:
      raise RuntimeError(f'kfac-jax registered {blocks} for {model.name}: expected only '
                         f'{KFAC_JAX_DENSE_BLOCKS}')

    def step(carry, index, optimizer=optimizer, rng=rng):
      params, state = carry
      params, state, stats = optimizer.step(
          params, state, jax.random.fold_in(rng, index), batch=(inputs, labels),
          learning_rate=jnp.float32(LEARNING_RATE), momentum=jnp.float32(MOMENTUM),
          damping=jnp.float32(DAMPING), global_step_int=index)
      return (params, state), stats['loss']

    row = {'side': 'kfac_jax', 'model': model.name, 'variant': variant, 'inverse': inverse,
           'damping': damping, 'inverse_every': inverse_every}
    runners.append(Runner(row, (params, state), step))
  return runners, blocks


# --- The worker and the driver. ------------------------------------------------------------------


def worker_results(side: str) -> Dict[str, Any]:
  """This process's side on every model of `--models`: `{versions, rows, blocks, notes}`."""
  # kfac-jax logs every block it registers, jax that it found no TPU: INFO lines of absl's logger.
  logging.set_verbosity(logging.WARNING)
  if FLAGS.quick:  # Compilation, not execution, is the cost of the tiny programs.
    jax.config.update('jax_disable_most_optimizations', True)
  rows, blocks = [], {}
  passes, notes = our_passes() if side == 'ours' else ([], [])
  for name in FLAGS.models:
    model = make_model(name, FLAGS.activation, FLAGS.quick)
    for inverse_every in INVERSE_EVERY:
      if side == 'ours':
        runners = our_runners(model, inverse_every, passes)
      else:
        runners, blocks[name] = kfac_jax_runners(model, inverse_every)
      rows += time_runners(runners, inverse_every,
                           timed_periods(inverse_every, FLAGS.quick, FLAGS.steps))
  packages = ('jax', 'jaxlib', 'flax', 'optax') if side == 'ours' else (
      'jax', 'jaxlib', 'kfac-jax', 'optax')
  return {'versions': package_versions(packages), 'rows': rows, 'blocks': blocks,
          'notes': notes}


def worker_command(side: str, python: str, model: str) -> List[str]:
  forwarded = [f'--{name}={FLAGS[name].value}' for name in ('steps', 'activation', 'flavour')]
  return [python, os.path.abspath(__file__), f'--worker={side}', f'--models={model}',
          *forwarded, *(['--quick'] if FLAGS.quick else [])]


def run_worker(command: List[str]) -> Dict[str, Any]:
  """One worker process (its progress and errors go to our stderr); its JSON line."""
  done = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                        env={**os.environ, 'OPENBLAS_NUM_THREADS': '1'})
  if done.returncode:
    raise RuntimeError(f'worker failed (exit {done.returncode}; its error is above): '
                       f'{shlex.join(command)}')
  return json.loads(done.stdout.strip().splitlines()[-1])


class Collected(NamedTuple):
  """What the workers said: rows, versions per side, kfac-jax's blocks per model, the worker
  commands, and a note for each side or step that did not run."""

  rows: List[Row]
  versions: Dict[str, Dict[str, Any]]
  blocks: Dict[str, List[str]]
  commands: List[str]
  notes: List[str]


def collect(sides: Sequence[str], models: Sequence[str]) -> Collected:
  """Per model, each side's worker in turn (sides alternate, so load drifts hit both)."""
  pythons = {'ours': FLAGS.our_python or sys.executable, 'kfac_jax': FLAGS.kfac_jax_python}
  collected = Collected([], {}, {}, [], [])
  sides = list(sides)
  if 'kfac_jax' in sides and not os.access(pythons['kfac_jax'], os.X_OK):
    sides.remove('kfac_jax')
    collected.notes.append(f'kfac-jax side skipped: no interpreter at {pythons["kfac_jax"]} '
                           '(create it with `make bench-kfac-jax`, or pass --kfac_jax_python)')
    print(collected.notes[-1], file=sys.stderr, flush=True)
  for model in models:
    for side in sides:
      command = worker_command(side, pythons[side], model)
      results = run_worker(command)
      collected.rows.extend(results['rows'])
      collected.versions[side] = results['versions']
      collected.blocks.update(results['blocks'])
      collected.commands.append(shlex.join(command))
      collected.notes.extend(note for note in results['notes'] if note not in collected.notes)
  return collected


def first_loss_lines(rows: Sequence[Row]) -> List[str]:
  """Per model, the first-step loss of every row: one value when the sides run the same model
  and batch; raises when they differ."""
  lines = []
  for model in dict.fromkeys(row['model'] for row in rows):
    losses = [row['first_loss'] for row in rows if row['model'] == model]
    if max(losses) - min(losses) > LOSS_RTOL * abs(losses[0]):
      raise RuntimeError(f'{model}: the first-step losses differ across rows: {losses}')
    lines.append(f'- {model}: first-step loss {losses[0]:.6f} in every row (same model and batch)')
  return lines


def kfac_jax_ms(rows: Sequence[Row], row: Row, **match: str) -> Optional[float]:
  """kfac-jax's step time for `row`'s model and T_inv whose row also matches `match` (e.g.
  `variant='default'`), if measured."""
  for other in rows:
    if (other['side'] == 'kfac_jax' and other['model'] == row['model']
        and other['inverse_every'] == row['inverse_every']
        and all(other[key] == value for key, value in match.items())):
      return other['ms_per_step']
  return None


def ratio_text(row: Row, reference: Optional[float]) -> str:
  return '-' if reference is None else f'{row["ms_per_step"] / reference:.2f}x'


def table_lines(rows: Sequence[Row], models: Sequence[str]) -> List[str]:
  """Per model and T_inv, kfac-jax's rows then ours, with the ratios to kfac-jax's default and
  to kfac-jax with the same damping form."""
  lines = ['| model | T_inv | side | step | inverse | damping | ms / step, median (min-max) | '
           'vs kfac-jax default | vs kfac-jax, same damping |',
           '|---|---:|---|---|---|---|---:|---:|---:|']
  def order(row: Row) -> Tuple[int, int, bool]:
    return models.index(row['model']), row['inverse_every'], row['side'] == 'ours'

  for row in sorted(rows, key=order):
    lines.append(f'| {row["model"]} | {row["inverse_every"]} | {SIDE_NAMES[row["side"]]} | '
                 f'{row["variant"]} | {row["inverse"]} | {row["damping"]} | '
                 f'{row["ms_per_step"]:.2f} ({row["ms_min"]:.2f}-{row["ms_max"]:.2f}) | '
                 f'{ratio_text(row, kfac_jax_ms(rows, row, variant="default"))} | '
                 f'{ratio_text(row, kfac_jax_ms(rows, row, damping=row["damping"]))} |')
  return lines


def goal_lines(rows: Sequence[Row]) -> List[str]:
  """Per model and T_inv: our fastest step against kfac-jax's default (the goal: no slower)."""
  lines = []
  for model, inverse_every in dict.fromkeys((row['model'], row['inverse_every']) for row in rows):
    ours = [row for row in rows if row['side'] == 'ours' and row['model'] == model
            and row['inverse_every'] == inverse_every]
    reference = kfac_jax_ms(rows, ours[0], variant='default') if ours else None
    if reference is None:
      continue
    best = min(ours, key=lambda row: row['ms_per_step'])
    verdict = 'meets' if best['ms_per_step'] <= reference else 'misses'
    lines.append(f'- {model}, T_inv={inverse_every}: our fastest ({best["variant"]}, '
                 f'{best["inverse"]}) {best["ms_per_step"]:.2f} ms vs kfac-jax default '
                 f'{reference:.2f} ms: {ratio_text(best, reference)}, {verdict} the goal')
  return lines


def version_lines(versions: Mapping[str, Mapping[str, Any]]) -> List[str]:
  """Every side's interpreter and packages; a warning when the sides ran different jax."""
  lines = [f'- {SIDE_NAMES[side]}: ' + ', '.join(f'{name} {value}' for name, value in
                                                   side_versions.items())
           for side, side_versions in versions.items()]
  jax_versions = {side_versions['jax'] for side_versions in versions.values()}
  if len(jax_versions) > 1:
    lines.append(f'- The sides ran different jax versions ({", ".join(sorted(jax_versions))}): '
                 'kfac-jax 0.0.8 fails on jax >= 0.9.2, and this project needs jax 0.10, so '
                 'XLA differs between the sides (see the script\'s docstring).')
  return lines


def report_lines(collected: Collected, models: Sequence[str], loads: Sequence[Tuple[float, ...]]
                 ) -> List[str]:
  """The Markdown report: method, models, table, goal, machine, versions, commands."""
  from benchmark.environment import cpu_model

  load_text = [', '.join(f'{value:.2f}' for value in load) for load in loads]
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  lines = ['# Our K-FAC step vs kfac-jax', '',
           'Written by `scripts/bench_vs_kfac_jax.py` (`make bench-kfac-jax`); its docstring has '
           'the method. Time per whole jitted training step, median over periods of T_inv steps '
           f'(at least {MIN_TIMED_STEPS} steps; T_inv = 10: each sample is the mean over a whole '
           'period, one inverse update in it), after compilation and a warm-up period. Both '
           f'sides: MC Fisher (1 sample), damping {DAMPING}, EMA {EMA_DECAY} every step, '
           f'learning rate {LEARNING_RATE}, heavy-ball momentum {MOMENTUM}, no burn-in / warm '
           f'start. Ours: K-FAC-{FLAGS.flavour}.', '']
  if FLAGS.quick:
    lines += ['**--quick: tiny models, one period, no XLA optimisation: a check, not a '
              'benchmark.**', '']
  lines += ['## Models', '']
  lines += [f'- `{name}`: {make_model(name, FLAGS.activation, FLAGS.quick).description}'
            + (f'; kfac-jax blocks: {", ".join(collected.blocks[name])}'
               if name in collected.blocks else '') for name in models]
  lines += ['', '## Results', '', *table_lines(collected.rows, models), '',
            *goal_lines(collected.rows), *[f'- {note}' for note in collected.notes], '',
            *first_loss_lines(collected.rows), '', '## Machine', '',
            f'- CPU: {cpu_model()}, {os.cpu_count()} cores (shared: compare sides measured in '
            'one run, not absolute times across runs)',
            f'- Load average (1, 5, 15 min) at the start: {load_text[0]}; at the end: '
            f'{load_text[1]}',
            f'- Date: {date}', '- OPENBLAS_NUM_THREADS=1 in every worker',
            *version_lines(collected.versions), '', '## Commands', '', '```',
            *collected.commands, '```', '']
  return lines


def run_driver() -> List[Row]:
  """The workers of every model and side; the report (always, unless `--quick` without
  `--output`); the rows."""
  unknown = sorted(set(FLAGS.sides) - set(SIDES))
  if unknown:
    raise app.UsageError(f'unknown sides {unknown}; choose from {", ".join(SIDES)}')
  for name in FLAGS.models:
    make_model(name, FLAGS.activation, FLAGS.quick)  # Fails early on an unknown name.
  loads = [os.getloadavg()]
  collected = collect(FLAGS.sides, FLAGS.models)
  loads.append(os.getloadavg())
  lines = report_lines(collected, FLAGS.models, loads)
  print('\n'.join(lines), file=sys.stderr)
  if not FLAGS.quick or FLAGS['output'].present:
    os.makedirs(os.path.dirname(FLAGS.output) or '.', exist_ok=True)
    with open(FLAGS.output, 'w') as report:
      report.write('\n'.join(lines))
    print(f'written to {FLAGS.output}', file=sys.stderr)
  return collected.rows


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if FLAGS.worker is not None:
    print(json.dumps(worker_results(FLAGS.worker)))
  else:
    print(json.dumps([{key: row[key] for key in ROW_KEYS} for row in run_driver()]))


if __name__ == '__main__':
  app.run(main)
