"""`make bench`: the cost of one training step, Nesterov vs K-FAC-reduce vs K-FAC-expand vs the
low-rank K-FAC blocks vs MAC.

Side by side in one process, on a small convolutional net, a small transformer and (when
`workloads.ogbg_molpcba` imports) the small ogbg GraphNetwork on a synthetic padded batch, this
times a full jitted training step (loss gradient, optimiser update, parameter update) of:

  * Nesterov: `optax.sgd(lr, momentum=0.9, nesterov=True)`, the AlgoPerf reference;
  * K-FAC-reduce and K-FAC-expand (`kfac.kfac_optimizer`, MC Fisher, exact damping) with
    statistics and inverses every step (`T_cov = T_inv = 1`), and with statistics every step and
    inverses amortised over `T_inv` steps;
  * K-FAC-reduce with both amortised (`T_cov = T_inv`);
  * every K-FAC variant takes the statistics from the gradient's forward pass
    (`kfac.gradient_and_statistics`); K-FAC-reduce "(two passes)" runs `kfac.precondition`'s
    own statistics pass after the gradient pass instead (the step before the fused pass);
  * the low-rank blocks (`kfac.blocks.lowrank`): K-FAC-reduce with B-KFAC's Brand updates
    ('brand', the work is on statistics steps) with statistics every step and amortised, with
    RS-KFAC ('rsvd', the work is on inverse steps) with inverses every step and amortised, and
    K-FAC-expand with Brand (the seed's setting), rank `--inverse_rank`;
  * MAC (`inverse_method='mac'`, the input layers 'mac_input', damping 1.0; docs/mac.md) with
    statistics every step (issue 14's goal: at most 1.1x a Nesterov step) and amortised.

Memory: each variant's compiled step has XLA's peak (`benchmark.environment.peak_mib`); and per
layer, K-FAC-reduce's (`--inverse_method`) and MAC's block state (bytes of `block.init()`) and
the XLA peak of the block's statistics update (`update(state, statistics(rows), w)` on the rows
the layer gets per batch) and of its inverse update, compiled alone per layer.

Each repeat runs `T_inv` consecutive steps (so an amortised repeat holds exactly one inverse
update) and blocks on the result; the time per step is the repeat's time / `T_inv`. The variants
of a model are compiled and warmed up (one repeat, excluded) first, then timed in turns, one
repeat each per round, so that load changes on a shared machine hit them alike. The table shows
the median over repeats (min-max in brackets) and the ratio to Nesterov. The Markdown table goes
to `--output` with the machine (CPU model from /proc/cpuinfo, cores, load average, jax version,
date): these machines are shared, so compare ratios measured in one run, never absolute times
across runs. `--quick` times 3 repeats instead of 9.
"""

from __future__ import annotations

import os

# jaxlib's CPU `eigh` calls LAPACK from scipy's OpenBLAS, whose threads spin-wait for each other:
# on shared or oversubscribed cores a 257 x 257 eigh then takes seconds instead of milliseconds
# (measured on this project's 2-core machines under load: 2.1 s vs 8 ms). Single-threaded LAPACK
# unless the caller chose otherwise; set before numpy and jax load OpenBLAS.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import statistics
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kfac
import kfac.mac
import kfac.plan
from benchmark.environment import MIB, machine_lines, peak_mib

FLAGS = flags.FLAGS
flags.DEFINE_bool('quick', False, 'Short run: 3 timed repeats instead of --repeats.')
flags.DEFINE_integer('repeats', 9, 'Timed repeats of T_inv steps each (median reported).')
flags.DEFINE_integer('inverse_update_every', 10, 'T_inv of the amortised K-FAC variants.')
flags.DEFINE_list('models', ['cnn', 'transformer', 'ogbg'], 'Models to time.')
flags.DEFINE_string('inverse_method', 'eigh', 'inverse_method of the K-FAC variants (kfac.blocks).')
flags.DEFINE_integer('inverse_rank', 32, 'Rank of the low-rank (brand, rsvd) variants.')
flags.DEFINE_string('output', 'docs/bench_kfac_step.md', 'Markdown report path.')

# The goal for the amortised K-FAC-reduce step, as a multiple of a Nesterov step.
GOAL_RATIO = 1.3
# Issue 14's goal for a MAC step with statistics every step.
MAC_GOAL_RATIO = 1.1
LEARNING_RATE = 1e-2
DAMPING = 1e-3
# MAC's decoupled damping lambda: the reference's value for CNNs (docs/mac.md).
MAC_DAMPING = 1.0
KIB = 1024
NUM_CLASSES = 10


class SmallCNN(nn.Module):
  """Three 3x3 convolutions (16, 32, 32 channels; the last two stride 2), global mean, Dense."""

  @nn.compact
  def __call__(self, x):  # x [N, 32, 32, 3]
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
    return nn.Dense(NUM_CLASSES)(x.mean(axis=(1, 2)))


class TransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention and MLP blocks with residuals."""

  width: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x):  # x [N, R, width]
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(nn.LayerNorm()(x))
    y = nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp_dim)(nn.LayerNorm()(x))))
    return x + y


class SmallTransformer(nn.Module):
  """Dense input projection, two transformer blocks, mean over positions, Dense classifier."""

  width: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  depth: int = 2

  @nn.compact
  def __call__(self, x):  # x [N, R, features]
    x = nn.Dense(self.width)(x)
    for _ in range(self.depth):
      x = TransformerBlock(self.width, self.num_heads, self.mlp_dim)(x)
    return nn.Dense(NUM_CLASSES)(nn.LayerNorm()(x).mean(axis=1))


class Case(NamedTuple):
  """One model and batch to time.

  Attributes:
    name: table heading.
    description: model and batch in words.
    apply_fn: `(params, inputs) -> logits`, the training forward pass.
    params: the model variables.
    batch: `inputs`, `targets`, `mask` (None or the loss weights).
    loss: the `kfac` loss name.
  """

  name: str
  description: str
  apply_fn: Callable[[Any, Any], jax.Array]
  params: Any
  batch: Dict[str, Any]
  loss: str


class Variant(NamedTuple):
  """An optimiser to time: `make(case) -> GradientTransformation`; a K-FAC variant
  (`uses_kfac`) takes its statistics from the gradient's forward pass
  (`kfac.gradient_and_statistics` of `options(case)`) unless `two_passes`."""

  name: str
  make: Callable[[Case], optax.GradientTransformation]
  uses_kfac: bool
  options: Optional[Callable[[Case], Dict[str, Any]]] = None
  two_passes: bool = False


def count_parameters(params: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def classification_batch(rng: np.random.Generator, inputs: np.ndarray) -> Dict[str, Any]:
  """`inputs` with random integer labels `[N]` and no mask."""
  labels = rng.integers(0, NUM_CLASSES, len(inputs)).astype(np.int32)
  return {'inputs': inputs, 'targets': labels, 'mask': None}


def cnn_case(rng: np.random.Generator) -> Case:
  batch_size = 32
  model = SmallCNN()
  inputs = rng.standard_normal((batch_size, 32, 32, 3)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), inputs)
  return Case('Small CNN', f'3 convs + Dense, {count_parameters(params):,} params, batch '
              f'{batch_size} of 32x32x3', model.apply, params, classification_batch(rng, inputs),
              'softmax_cross_entropy')


def transformer_case(rng: np.random.Generator) -> Case:
  batch_size, length, features = 16, 64, 32
  model = SmallTransformer()
  inputs = rng.standard_normal((batch_size, length, features)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), inputs)
  return Case('Small transformer', f'width {model.width}, {model.depth} blocks, {model.num_heads} '
              f'heads, MLP {model.mlp_dim}, {count_parameters(params):,} params, batch '
              f'{batch_size} x {length} tokens', model.apply, params,
              classification_batch(rng, inputs), 'softmax_cross_entropy')


def ogbg_case(rng: np.random.Generator) -> Optional[Case]:
  """The `small` ogbg GraphNetwork on one synthetic batch padded like the embedded data."""
  try:
    from workloads.ogbg_molpcba import configs, input_pipeline, model as ogbg_model
    from workloads.ogbg_molpcba.synthetic_data import synthetic_molecules
  except ImportError as error:
    print(f'ogbg skipped: {error}')
    return None
  config = configs.get_config('small')
  data_config = configs.get_data_config('embedded')
  num_tasks = 128
  budget = input_pipeline.padding_budget(config.batch_size, data_config.avg_nodes_per_graph,
                                         data_config.avg_edges_per_graph)
  examples = synthetic_molecules(rng, 2 * config.batch_size, num_tasks)
  batch = next(input_pipeline.batch_examples(examples, budget))
  model = ogbg_model.GNN(num_outputs=num_tasks, latent_dim=config.model.latent_dim,
                         hidden_dims=tuple(config.model.hidden_dims),
                         num_message_passing_steps=config.model.num_message_passing_steps)
  params = jax.jit(lambda key, graph: model.init(key, graph, train=False))(jax.random.PRNGKey(0),
                                                                            batch['inputs'])
  dropout_key = jax.random.PRNGKey(1)

  def apply_fn(variables, graph):
    return model.apply(variables, graph, train=True, dropout_rate=config.model.dropout_rate,
                       rngs={'dropout': dropout_key})

  return Case('ogbg GraphNetwork (small)',
              f'latent {config.model.latent_dim}, {config.model.num_message_passing_steps} '
              f'message-passing steps, {count_parameters(params):,} params, batch of '
              f'{config.batch_size} synthetic molecules padded to {budget.n_node} nodes / '
              f'{budget.n_edge} edges', apply_fn, params,
              {'inputs': batch['inputs'], 'targets': batch['targets'], 'mask': batch['weights']},
              'sigmoid_cross_entropy')


def batch_loss(loss: str, logits: jax.Array, targets: jax.Array,
               mask: Optional[jax.Array]) -> jax.Array:
  """The training objective: mean softmax CE, or masked mean sigmoid CE."""
  if loss == 'softmax_cross_entropy':
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  entries = optax.sigmoid_binary_cross_entropy(logits, targets)
  return jnp.sum(entries * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mac_options(case: Case) -> Dict[str, Any]:
  """MAC's options of `kfac.precondition` for `case`: 'mac' blocks, the layers reading the model
  input 'mac_input' with expand rows (as `submissions.mac`), the decoupled damping."""
  inputs = case.batch['inputs']
  paths = kfac.mac.input_layer_paths(case.apply_fn, case.params, inputs,
                                     kfac.layer_report(case.apply_fn, case.params, inputs))
  methods, flavours = kfac.mac.mac_overrides(paths)
  return dict(inverse_method='mac', inverse_method_overrides=methods, flavour_overrides=flavours,
              flavour='reduce', damping=MAC_DAMPING)


def kfac_options(flavour: str, method: str) -> Callable[[Case], Dict[str, Any]]:
  """`case -> options` of a K-FAC variant."""
  return lambda case: dict(flavour=flavour, inverse_method=method, damping=DAMPING,
                           inverse_rank=FLAGS.inverse_rank)


def variants(inverse_every: int) -> List[Variant]:
  def nesterov(case):
    del case
    return optax.sgd(LEARNING_RATE, momentum=0.9, nesterov=True)

  def schedule_options(options_fn, cov_every, inv_every):
    def options(case):
      return dict(loss=case.loss, sample_inputs=case.batch['inputs'], fisher_type='mc',
                  cov_update_every=cov_every, inverse_update_every=inv_every, **options_fn(case))
    return options

  def curvature_variant(name, options_fn, cov_every, inv_every, two_passes=False):
    options = schedule_options(options_fn, cov_every, inv_every)

    def make(case):
      return kfac.kfac_optimizer(case.apply_fn, learning_rate=LEARNING_RATE, momentum=0.9,
                                 **options(case))
    return Variant(name, make, True, options, two_passes)

  def kfac_variant(name, flavour, cov_every, inv_every, method=None, two_passes=False):
    return curvature_variant(name, kfac_options(flavour, method or FLAGS.inverse_method),
                             cov_every, inv_every, two_passes)

  k = inverse_every
  return [
      Variant('Nesterov', nesterov, False),
      kfac_variant('K-FAC-reduce, T_cov=1, T_inv=1', 'reduce', 1, 1),
      kfac_variant(f'K-FAC-reduce, T_cov=1, T_inv={k}', 'reduce', 1, k),
      kfac_variant(f'K-FAC-reduce (two passes), T_cov=1, T_inv={k}', 'reduce', 1, k,
                   two_passes=True),
      kfac_variant('K-FAC-expand, T_cov=1, T_inv=1', 'expand', 1, 1),
      kfac_variant(f'K-FAC-expand, T_cov=1, T_inv={k}', 'expand', 1, k),
      kfac_variant(f'K-FAC-reduce, T_cov={k}, T_inv={k}', 'reduce', k, k),
      kfac_variant(f'K-FAC-reduce (two passes), T_cov={k}, T_inv={k}', 'reduce', k, k,
                   two_passes=True),
      kfac_variant(f'K-FAC-reduce brand, T_cov=1, T_inv={k}', 'reduce', 1, k, 'brand'),
      kfac_variant(f'K-FAC-reduce brand, T_cov={k}, T_inv={k}', 'reduce', k, k, 'brand'),
      kfac_variant('K-FAC-reduce rsvd, T_cov=1, T_inv=1', 'reduce', 1, 1, 'rsvd'),
      kfac_variant(f'K-FAC-reduce rsvd, T_cov=1, T_inv={k}', 'reduce', 1, k, 'rsvd'),
      kfac_variant(f'K-FAC-expand brand, T_cov=1, T_inv={k}', 'expand', 1, k, 'brand'),
      curvature_variant('MAC, T_cov=1, T_inv=1', mac_options, 1, 1),
      curvature_variant(f'MAC, T_cov={k}, T_inv={k}', mac_options, k, k),
  ]


def make_train_step(case: Case, optimizer: optax.GradientTransformation,
                    variant: Variant) -> Callable:
  """The jitted training step `(params, opt_state, rng) -> (params, opt_state, loss)`: the loss
  gradient, then (K-FAC) the statistics of the same forward pass (`kfac.gradient_and_statistics`)
  or, for `two_passes`, the optimiser's own statistics pass."""
  batch = case.batch
  objective = lambda logits: batch_loss(case.loss, logits, batch['targets'], batch['mask'])  # noqa: E731
  kfac_args = dict(inputs=batch['inputs'], targets=batch['targets'], mask=batch['mask'])
  fused = (variant.uses_kfac and not variant.two_passes and
           kfac.gradient_and_statistics(lambda p, x: (case.apply_fn(p, x), None),
                                        **variant.options(case)))

  @jax.jit
  def train_step(params, opt_state, rng):
    if fused:
      (loss, _), grads, statistics = fused(objective, params, opt_state, rng=rng, **kfac_args)
      extra = {'statistics': statistics}
    else:
      loss, grads = jax.value_and_grad(lambda p: objective(case.apply_fn(p, batch['inputs'])))(
          params)
      extra = dict(kfac_args, rng=rng) if variant.uses_kfac else {}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def prepared_repeat(case: Case, variant: Variant, steps_per_repeat: int
                    ) -> Tuple[Callable[[], float], float]:
  """Compile and warm up `variant` on `case`; returns `() -> seconds per step of one repeat`
  and the XLA peak (MiB) of the compiled step.

  The returned function carries the parameters and optimiser state from repeat to repeat, so
  the step counter (and with it the T_cov / T_inv phase) advances as in training.
  """
  optimizer = variant.make(case)
  train_step = make_train_step(case, optimizer, variant)
  keys = jax.random.split(jax.random.PRNGKey(2), steps_per_repeat)
  carry = {'params': case.params, 'opt_state': jax.jit(optimizer.init)(case.params)}
  peak = peak_mib(train_step.lower(carry['params'], carry['opt_state'], keys[0]).compile())

  def timed_repeat() -> float:
    start = time.perf_counter()
    params, opt_state = carry['params'], carry['opt_state']
    for key in keys:
      params, opt_state, loss = train_step(params, opt_state, key)
    jax.block_until_ready((params, opt_state, loss))
    carry.update(params=params, opt_state=opt_state)
    return (time.perf_counter() - start) / steps_per_repeat

  timed_repeat()  # compile + warm-up
  return timed_repeat, peak


class CaseResults(NamedTuple):
  """Seconds per step of every repeat, and the XLA peak (MiB) of the step, per variant."""

  times: Dict[str, List[float]]
  peaks: Dict[str, float]


def time_case(case: Case, all_variants: List[Variant], steps_per_repeat: int, repeats: int
              ) -> CaseResults:
  """Seconds per step of every repeat of every variant, the variants interleaved repeat by
  repeat so that load changes on a shared machine hit them alike."""
  prepared = {variant.name: prepared_repeat(case, variant, steps_per_repeat)
              for variant in all_variants}
  times = {name: [] for name in prepared}
  for _ in range(repeats):
    for name, (timed_repeat, _) in prepared.items():
      times[name].append(timed_repeat())
  for name, values in times.items():
    print(f'{case.name:28s} {name:38s} {1e3 * statistics.median(values):9.2f} ms/step', flush=True)
  return CaseResults(times, {name: peak for name, (_, peak) in prepared.items()})


def case_table(case: Case, results: CaseResults) -> List[str]:
  nesterov = statistics.median(results.times['Nesterov'])
  lines = [f'### {case.name}', '', case.description, '',
           '| optimiser | ms / step, median (min-max) | ratio to Nesterov | XLA peak MiB |',
           '|---|---:|---:|---:|']
  for name, times in results.times.items():
    median = statistics.median(times)
    lines.append(f'| {name} | {1e3 * median:.2f} ({1e3 * min(times):.2f}-{1e3 * max(times):.2f}) '
                 f'| {median / nesterov:.2f}x | {results.peaks[name]:.1f} |')
  return lines + ['']


class LayerMemory(NamedTuple):
  """One block's memory: state KiB, XLA peak KiB of its statistics update and of its invert."""

  state: float
  update: float
  invert: float


def block_memory(layer: kfac.plan.LayerPlan, rows: Tuple[int, int]) -> LayerMemory:
  """`LayerMemory` of a planned layer's block fed `rows = (n_a, n_b)` rows per batch."""
  block, (dim_a, dim_b) = layer.block, layer.info.dims
  state = jax.eval_shape(block.init)
  shapes = kfac.LayerStatistics(
      a_rows=jax.ShapeDtypeStruct((rows[0], dim_a), jnp.float32),
      g_rows=jax.ShapeDtypeStruct((rows[1], dim_b), jnp.float32),
      a_mean=jax.ShapeDtypeStruct((dim_a,), jnp.float32))
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  update = jax.jit(lambda s, r, w: block.update(s, block.statistics(r), w)).lower(
      state, shapes, scalar).compile()
  invert = jax.jit(block.invert).lower(state, scalar).compile()
  state_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize
                    for leaf in jax.tree_util.tree_leaves(state))
  return LayerMemory(state_bytes / KIB, peak_mib(update) * MIB / KIB,
                     peak_mib(invert) * MIB / KIB)


def layer_memory(case: Case, options: Dict[str, Any]) -> Dict[str, LayerMemory]:
  """`{layer: LayerMemory}` of every covered layer of `case` under `kfac.precondition`
  `options`."""
  inputs = case.batch['inputs']
  checked = kfac.plan.validate_options(kfac.PreconditionOptions(
      loss=case.loss, sample_inputs=inputs, **options))
  plan = kfac.plan.make_plan(case.apply_fn, case.params, inputs, checked)
  memory = {}
  for path, layer in plan.layers.items():
    rows_a, rows_b = kfac.plan.statistics_rows(layer.info, layer.flavour, plan.report.num_examples,
                                               checked)
    memory['/'.join(path)] = block_memory(layer, (rows_a, rows_b))
  return memory


def memory_table(case: Case) -> List[str]:
  """Per layer: K-FAC-reduce's and MAC's block state and XLA peaks (KiB), side by side."""
  reduce = layer_memory(case, kfac_options('reduce', FLAGS.inverse_method)(case))
  mac = layer_memory(case, mac_options(case))
  method = FLAGS.inverse_method
  lines = [f'Per-layer memory, KiB (block state; XLA peak of the statistics update and of the '
           f'inverse update): K-FAC-reduce ({method}) vs MAC.', '',
           f'| layer | reduce state | reduce update | reduce invert | MAC state | MAC update | '
           f'MAC invert |', '|---|---:|---:|---:|---:|---:|---:|']
  for layer in reduce:
    lines.append(f'| {layer} | ' + ' | '.join(f'{value:,.1f}' for value in (*reduce[layer],
                                                                           *mac[layer])) + ' |')
  totals = [sum(memory[layer][i] for layer in memory) for memory in (reduce, mac)
            for i in range(3)]
  lines.append('| total | ' + ' | '.join(f'{value:,.1f}' for value in totals) + ' |')
  return lines + ['']


def goal_lines(cases: List[Case], all_results: List[CaseResults],
               inverse_every: int) -> List[str]:
  """Whether the amortised K-FAC-reduce step is within `GOAL_RATIO` of a Nesterov step, and MAC
  with statistics every step within `MAC_GOAL_RATIO`."""
  lines = [f'Goals: amortised K-FAC-reduce step at most {GOAL_RATIO}x a Nesterov step; MAC with '
           f'statistics every step at most {MAC_GOAL_RATIO}x (issue 14).', '']
  goals = [(f'K-FAC-reduce, T_cov=1, T_inv={inverse_every}', GOAL_RATIO),
           (f'K-FAC-reduce, T_cov={inverse_every}, T_inv={inverse_every}', GOAL_RATIO),
           ('MAC, T_cov=1, T_inv=1', MAC_GOAL_RATIO)]
  for case, results in zip(cases, all_results):
    nesterov = statistics.median(results.times['Nesterov'])
    for name, goal in goals:
      ratio = statistics.median(results.times[name]) / nesterov
      verdict = 'meets' if ratio <= goal else 'misses'
      lines.append(f'- {case.name}, {name}: {ratio:.2f}x, {verdict} the goal')
  return lines + ['']


def main(argv) -> None:
  del argv
  repeats = 3 if FLAGS.quick else FLAGS.repeats
  inverse_every = FLAGS.inverse_update_every
  rng = np.random.default_rng(0)
  builders = {'cnn': cnn_case, 'transformer': transformer_case, 'ogbg': ogbg_case}
  unknown = sorted(set(FLAGS.models) - set(builders))
  if unknown:
    raise app.UsageError(f'unknown models {unknown}; choose from {sorted(builders)}')
  cases = [case for case in (builders[name](rng) for name in FLAGS.models) if case is not None]
  all_results = [time_case(case, variants(inverse_every), inverse_every, repeats) for case in cases]
  lines = ['# K-FAC step cost vs Nesterov', '',
           'Written by `scripts/bench_kfac_step.py` (`make bench`); see its docstring for the '
           'method. One process, side by side; time per training step (loss gradient + optimiser '
           f'+ parameter update), median of {repeats} repeats of {inverse_every} steps, the '
           'variants taking turns, after compilation and a warm-up repeat. LAPACK (eigh) runs '
           f'with OPENBLAS_NUM_THREADS={os.environ["OPENBLAS_NUM_THREADS"]}. K-FAC: MC Fisher '
           f'(1 sample), exact damping '
           f'{DAMPING}, EMA 0.95; low-rank blocks rank {FLAGS.inverse_rank}, pi-damping; MAC '
           f'damping {MAC_DAMPING}.', '', *machine_lines(), '']
  for case, results in zip(cases, all_results):
    lines += case_table(case, results) + memory_table(case)
  lines += goal_lines(cases, all_results, inverse_every)
  os.makedirs(os.path.dirname(FLAGS.output) or '.', exist_ok=True)
  with open(FLAGS.output, 'w') as report:
    report.write('\n'.join(lines))
  print('\n'.join(lines))
  print(f'written to {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
