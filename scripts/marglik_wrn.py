"""Marginal-likelihood selection of a Wide ResNet's prior precisions with K-FAC-expand and
K-FAC-reduce Laplace approximations (Eschenhagen et al. 2023, the marginal-likelihood study;
Immer et al. 2021, Algorithm 1).

For each flavour, from the same initialisation and data order, the WRN of the `cifar_wrn`
workload is trained on the negative log joint divided by N (`kfac.laplace`):

    loss = mean_batch CE + (1/2) sum_l delta_l ||theta_l||^2 / N + (1/2) delta_0 ||theta_0||^2 / N,

one prior precision `delta_l` per convolution and the classifier (weight decay `delta_l / N`),
a fixed `delta_0` on the BatchNorm parameters, SGD with Nesterov momentum and a cosine schedule.
Every `--marglik_every` epochs from `--burnin_epochs` on, a *marglik step* fits the
Kronecker-factored Laplace approximation at the current parameters (K-FAC factors and summed
loss over `--marglik_batches` training batches, the model in evaluation mode, scaled to the N
training examples) and takes `--hyper_steps` Adam steps on the log prior precisions. Only the
flavour of the factors differs between the two runs.

Reported per flavour (`docs/marglik_wrn.md`, `docs/marglik_wrn.png`): test accuracy and NLL of
the final model, the learned precisions, the log marginal likelihood over training, and the
wall-clock of the marglik steps (statistics pass, eigendecompositions, hyperparameter steps;
compilation is done before training and excluded, and reported apart).

`--config=small` trains the small config's WRN on the embedded digits (a few minutes on a CPU
for both flavours); `--config=full` trains WRN-16-4 on CIFAR-10 from tensorflow-datasets
(`--data_dir`; hours on an accelerator).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

from absl import app, flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402,F401  (loads the OpenBLAS of jax's CPU LAPACK kernels)
import threadpoolctl  # noqa: E402
import optax  # noqa: E402

import kfac  # noqa: E402
from kfac import laplace, marglik  # noqa: E402
import workloads  # noqa: E402
from contract.types import ForwardPassMode  # noqa: E402
from workloads.cifar_wrn.workload import CifarWrnWorkload  # noqa: E402
from benchmark import environment  # noqa: E402

FLAGS = flags.FLAGS
# The goal: marglik steps with reduce at least this much faster than with expand, at
# equal test accuracy (within ACCURACY_TOLERANCE).
GOAL_MARGLIK_SPEEDUP = 1.5
ACCURACY_TOLERANCE = 0.005
flags.DEFINE_enum('config', 'small', ['small', 'full'], 'Workload config of cifar_wrn.')
flags.DEFINE_string('data_dir', None, 'tensorflow-datasets directory (--config=full).')
flags.DEFINE_list('flavours', ['expand', 'reduce'], 'K-FAC flavours of the Laplace fits.')
flags.DEFINE_integer('epochs', None, 'Training epochs (default per config, RUN_DEFAULTS).')
flags.DEFINE_integer('burnin_epochs', None, 'Epochs before the first marglik step (B).')
flags.DEFINE_integer('marglik_every', None, 'Epochs between marglik steps (F).')
flags.DEFINE_integer('hyper_steps', None, 'Adam steps on the hyperparameters per marglik step (K).')
flags.DEFINE_integer('marglik_batches', None, 'Training batches per Laplace fit (default: one '
                     'pass, N / batch size).')
flags.DEFINE_float('hyper_learning_rate', 0.1, "Adam's learning rate on the log precisions.")
flags.DEFINE_float('learning_rate', None, 'Peak SGD learning rate (cosine decay to 0).')
flags.DEFINE_float('momentum', 0.9, 'Nesterov momentum.')
flags.DEFINE_float('prior_precision', 1.0, 'Initial prior precision of every layer.')
flags.DEFINE_float('rest_prior_precision', 1.0, 'Fixed prior precision of BatchNorm parameters.')
flags.DEFINE_enum('fisher_type', 'mc', kfac.FISHER_TYPES,
                  'GGN of the Laplace fits: one-sample MC (default) or the exact type-2.')
flags.DEFINE_integer('seed', 0, 'Seed of initialisation, data order and MC samples.')
flags.DEFINE_integer('lapack_threads', 1, 'Threads of the LAPACK (OpenBLAS) calls behind '
                     "jax's CPU eigh: on a loaded shared CPU a multi-threaded OpenBLAS spins and "
                     'its eigendecompositions run 10-15x slower.')
flags.DEFINE_string('output_dir', 'docs', 'Where marglik_wrn.md and marglik_wrn.png go.')

# Per-config defaults of the schedule flags (`marglik_batches=None`: one pass over the training
# set per Laplace fit, as Immer et al. 2021). small: a few CPU minutes per flavour on the 1,437
# embedded training digits. full: 100 epochs on CIFAR-10, marglik every 5 epochs after 10, 100
# hyperparameter steps each.
RUN_DEFAULTS = {
    'small': dict(epochs=12, burnin_epochs=2, marglik_every=2, hyper_steps=50,
                  marglik_batches=None, learning_rate=0.1),
    'full': dict(epochs=100, burnin_epochs=10, marglik_every=5, hyper_steps=100,
                 marglik_batches=None, learning_rate=0.1),
}


class RunSettings(NamedTuple):
  """The resolved schedule of one run (flags over `RUN_DEFAULTS`)."""

  epochs: int
  burnin_epochs: int
  marglik_every: int
  hyper_steps: int
  marglik_batches: int
  learning_rate: float


class MarglikRecord(NamedTuple):
  """One marglik step.

  Attributes:
    epoch: the epoch it followed.
    log_marglik_before, log_marglik_after: the Laplace log marginal likelihood per training
      example at the first and at the last of the K hyperparameter steps.
    statistics_s, fit_s, hyper_s: wall-clock of the factor pass, the eigendecompositions and
      the K Adam steps.
  """

  epoch: int
  log_marglik_before: float
  log_marglik_after: float
  statistics_s: float
  fit_s: float
  hyper_s: float

  @property
  def seconds(self) -> float:
    return self.statistics_s + self.fit_s + self.hyper_s


class EpochRecord(NamedTuple):
  """The state of one flavour's run after an epoch.

  Attributes:
    epoch: 0 for the initial model (after compilation), then 1, 2, ...
    test_accuracy, test_nll: on the test split.
    marglik: the marglik step that followed this epoch, if any.
    prior_precisions: `{layer: delta_l}` after it.
    seconds: epoch 0: compilation of every jitted function before training; later: the epoch's
      training steps and marglik step (evaluation excluded).
  """

  epoch: int
  test_accuracy: float
  test_nll: float
  marglik: Optional[MarglikRecord]
  prior_precisions: Dict[str, float]
  seconds: float


class FlavourResult(NamedTuple):
  """A whole run of one flavour: its epoch records (epoch 0 first)."""

  flavour: str
  records: List[EpochRecord]

  @property
  def margliks(self) -> List[MarglikRecord]:
    return [r.marglik for r in self.records if r.marglik is not None]

  @property
  def final(self) -> EpochRecord:
    return self.records[-1]


def run_settings(config_name: str, num_train: int, batch_size: int) -> RunSettings:
  defaults = RUN_DEFAULTS[config_name]
  values = {name: getattr(FLAGS, name) if getattr(FLAGS, name) is not None else default
            for name, default in defaults.items()}
  if values['marglik_batches'] is None:
    values['marglik_batches'] = num_train // batch_size
  return RunSettings(**values)


def layer_name(path: Sequence[str]) -> str:
  return '/'.join(path)


def train_flavour(workload: CifarWrnWorkload, flavour: str, settings: RunSettings,
                  seed: int) -> Iterator[EpochRecord]:
  """Marglik training of the workload's WRN with Laplace fits of one K-FAC flavour, one
  `EpochRecord` per epoch (a generator: `main` advances the flavours in lockstep, so that load
  changes of a shared machine fall on both alike)."""
  batch_size = workload.config.batch_size
  num_train = workload.num_train_examples
  steps_per_epoch = num_train // batch_size
  model = CifarWrnWorkload.build_model(workload.config)
  rng = jax.random.PRNGKey(seed)
  init_rng, data_rng, marglik_data_rng, step_rng = jax.random.split(rng, 4)
  params, model_state = workload.init_model_fn(init_rng)
  train_queue = workload.build_input_queue(data_rng, 'train', FLAGS.data_dir, batch_size)
  marglik_queue = workload.build_input_queue(marglik_data_rng, 'train', FLAGS.data_dir, batch_size)

  def laplace_apply(variables, images):
    return model.apply(variables, images, train=False)

  sample = next(marglik_queue)
  layer_infos = kfac.layer_report(
      laplace_apply, {'params': params, **model_state}, jnp.asarray(sample['inputs'])).layers
  config = laplace.LaplaceConfig(
      likelihood='classification', flavour=flavour, fisher_type=FLAGS.fisher_type,
      rest_prior_precision=FLAGS.rest_prior_precision,
      learning_rate=FLAGS.hyper_learning_rate, num_steps=settings.hyper_steps)
  marglik_state = marglik.init_marglik_state(layer_infos, config, FLAGS.prior_precision)

  schedule = optax.cosine_decay_schedule(settings.learning_rate,
                                         settings.epochs * steps_per_epoch)
  sgd = optax.sgd(schedule, momentum=FLAGS.momentum, nesterov=True)
  opt_state = sgd.init(params)

  @jax.jit
  def train_step(params, model_state, opt_state, hyperparameters, batch, rng):
    def loss_fn(p):
      logits, new_state = workload.model_fn(p, batch, model_state, ForwardPassMode.TRAIN, rng,
                                            update_batch_norm=True)
      nll = laplace.per_example_nll(logits, batch['targets'], hyperparameters.log_sigma, config)
      mean_nll = jnp.sum(nll * batch['weights']) / jnp.sum(batch['weights'])
      prior = marglik.prior_penalty(p, hyperparameters, layer_infos, config)
      return mean_nll + prior / num_train, new_state

    grads, new_state = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = sgd.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state

  statistics_fn = jax.jit(functools.partial(laplace.batch_statistics, laplace_apply,
                                            config=config))
  fit_fn = jax.jit(functools.partial(laplace.laplace_fit, layer_infos=layer_infos, config=config,
                                     num_data=float(num_train)))
  update_fn = jax.jit(functools.partial(marglik.marglik_update, config=config))

  def marglik_step(variables, state, rng):
    """One Laplace fit and K hyperparameter steps, timed by part."""
    start = time.perf_counter()
    total = None
    for index in range(settings.marglik_batches):
      batch = next(marglik_queue)
      statistics = statistics_fn(variables, batch['inputs'], batch['targets'],
                                 rng=jax.random.fold_in(rng, index), mask=batch['weights'])
      total = statistics if total is None else laplace.add_statistics(total, statistics)
    jax.block_until_ready(total)
    fitted = time.perf_counter()
    fit = jax.block_until_ready(fit_fn(total, variables))
    decomposed = time.perf_counter()
    state, trace = jax.block_until_ready(update_fn(state, fit))
    done = time.perf_counter()
    return state, trace, (fitted - start, decomposed - fitted, done - decomposed)

  # Compile everything before training (on throwaway results): not part of the timings.
  compile_start = time.perf_counter()
  variables = {'params': params, **model_state}
  warm = statistics_fn(variables, sample['inputs'], sample['targets'], rng=step_rng,
                       mask=sample['weights'])
  jax.block_until_ready(update_fn(marglik_state, fit_fn(laplace.add_statistics(warm, warm),
                                                        variables)))
  jax.block_until_ready(train_step(params, model_state, opt_state, marglik_state.hyperparameters,
                                   sample, step_rng))
  compile_s = time.perf_counter() - compile_start

  def evaluate(params, model_state):
    metrics = workload.eval_model(workload.eval_batch_size, params, model_state, rng,
                                  FLAGS.data_dir)
    return metrics['test/accuracy'], metrics['test/loss']

  def precisions(state):
    return {layer_name(path): float(value)
            for path, value in marglik.prior_precisions(state.hyperparameters).items()}

  yield EpochRecord(0, *evaluate(params, model_state), None, precisions(marglik_state), compile_s)
  for epoch in range(1, settings.epochs + 1):
    epoch_start = time.perf_counter()
    for step in range(steps_per_epoch):
      batch = next(train_queue)
      params, model_state, opt_state = train_step(
          params, model_state, opt_state, marglik_state.hyperparameters, batch,
          jax.random.fold_in(step_rng, epoch * steps_per_epoch + step))
    # Training steps are dispatched asynchronously: finish them before timing the marglik step.
    jax.block_until_ready((params, model_state))
    marglik = None
    if epoch >= settings.burnin_epochs and epoch % settings.marglik_every == 0:
      marglik_state, trace, seconds = marglik_step(
          {'params': params, **model_state}, marglik_state, jax.random.fold_in(rng, epoch))
      marglik = MarglikRecord(epoch, float(trace[0]) / num_train, float(trace[-1]) / num_train,
                              *seconds)
    epoch_s = time.perf_counter() - epoch_start
    yield EpochRecord(epoch, *evaluate(params, model_state), marglik, precisions(marglik_state),
                      epoch_s)


# -- Report ------------------------------------------------------------------------------------


def marglik_seconds(result: FlavourResult) -> float:
  return sum(r.seconds for r in result.margliks)


def write_markdown(path: str, workload: CifarWrnWorkload, settings: RunSettings,
                   results: List[FlavourResult]) -> None:
  model = workload.config.model
  lines = [
      '# Marginal-likelihood selection of prior precisions: K-FAC-expand vs K-FAC-reduce',
      '',
      f'Written by `scripts/marglik_wrn.py --config={workload.config_name}` (method in its '
      'docstring; library: `kfac/laplace.py`). '
      f'WRN-{model.depth}-{model.widen_factor}, batch {workload.config.batch_size}, '
      f'{workload.num_train_examples} training examples, {settings.epochs} epochs of SGD '
      f'(Nesterov {FLAGS.momentum}, cosine from {settings.learning_rate}); marglik steps after '
      f'epoch {settings.burnin_epochs} and every {settings.marglik_every} epochs: a Laplace fit '
      f'over {settings.marglik_batches} training batches ({FLAGS.fisher_type!r} GGN, scaled to '
      f'N), then {settings.hyper_steps} Adam steps (learning rate {FLAGS.hyper_learning_rate}) '
      f'on the log prior precisions; initial precision {FLAGS.prior_precision}, BatchNorm '
      f'precision fixed at {FLAGS.rest_prior_precision}. Same seed ({FLAGS.seed}), '
      'initialisation and data order for both flavours.',
      '',
      *environment.machine_lines(),
      '',
      '| flavour | test accuracy | test NLL | final log marglik / N | marglik steps | '
      'marglik wall-clock s | of which statistics s | eigh s | hyper steps s | training s '
      '(incl. marglik, excl. evaluation) | compile s |',
      '|' + '---|' * 11,
  ]
  for result in results:
    margliks = result.margliks
    final = margliks[-1].log_marglik_after if margliks else float('nan')
    lines.append(
        f'| {result.flavour} | {result.final.test_accuracy:.4f} | {result.final.test_nll:.4f} | '
        f'{final:.4f} | {len(margliks)} | {marglik_seconds(result):.1f} | '
        f'{sum(r.statistics_s for r in margliks):.1f} | {sum(r.fit_s for r in margliks):.1f} | '
        f'{sum(r.hyper_s for r in margliks):.1f} | '
        f'{sum(r.seconds for r in result.records[1:]):.1f} | {result.records[0].seconds:.1f} |')
  by_flavour = {r.flavour: r for r in results}
  if {'expand', 'reduce'} <= set(by_flavour):
    expand, reduce = by_flavour['expand'], by_flavour['reduce']
    speedup = marglik_seconds(expand) / marglik_seconds(reduce)
    accuracy_gap = reduce.final.test_accuracy - expand.final.test_accuracy
    met = speedup >= GOAL_MARGLIK_SPEEDUP and abs(accuracy_gap) <= ACCURACY_TOLERANCE
    lines += [
        '',
        f'**Marglik steps: reduce {speedup:.2f}x faster than expand** '
        f'({marglik_seconds(reduce):.1f} s against {marglik_seconds(expand):.1f} s); test '
        f'accuracy difference (reduce - expand): {100 * accuracy_gap:+.2f} percentage points '
        f'({workload.num_test_examples} test examples: one example is '
        f'{100 / workload.num_test_examples:.2f} points). Goal (at least '
        f'{GOAL_MARGLIK_SPEEDUP:g}x faster, accuracy within {100 * ACCURACY_TOLERANCE:g} '
        f'points): {"met" if met else "not met"}.',
    ]
  lines += ['', '## Learned prior precisions', '',
            '| layer | ' + ' | '.join(r.flavour for r in results) + ' |',
            '|' + '---|' * (len(results) + 1)]
  for name in results[0].final.prior_precisions:
    lines.append(f'| {name} | '
                 + ' | '.join(f'{r.final.prior_precisions[name]:.4g}' for r in results) + ' |')
  lines += ['', '## Marglik steps', '',
            '| flavour | epoch | log marglik / N, first step | last step | statistics s | '
            'eigh s | hyper steps s |', '|' + '---|' * 7]
  for result in results:
    for r in result.margliks:
      lines.append(f'| {result.flavour} | {r.epoch} | {r.log_marglik_before:.4f} | '
                   f'{r.log_marglik_after:.4f} | {r.statistics_s:.2f} | {r.fit_s:.2f} | '
                   f'{r.hyper_s:.2f} |')
  lines.append('')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def write_plot(path: str, results: List[FlavourResult]) -> None:
  figure, (marglik_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
  for result, style in zip(results, ('-', '--', ':')):
    marglik_axis.plot([r.epoch for r in result.margliks],
                      [r.log_marglik_after for r in result.margliks], style, marker='o',
                      label=result.flavour)
    accuracy_axis.plot([r.epoch for r in result.records],
                       [r.test_accuracy for r in result.records], style, marker='.',
                       label=result.flavour)
  marglik_axis.set(xlabel='epoch', ylabel='log marginal likelihood / N',
                   title='Laplace log marginal likelihood (last step of each marglik step)')
  accuracy_axis.set(xlabel='epoch', ylabel='test accuracy', title='test accuracy')
  for axis in (marglik_axis, accuracy_axis):
    axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run_study() -> None:
  """Trains every flavour, writes the report."""
  workload = workloads.get_workload('cifar', FLAGS.config, data_dir=FLAGS.data_dir)
  workload.check_data_available()
  settings = run_settings(FLAGS.config, workload.num_train_examples, workload.config.batch_size)
  print(f'cifar_wrn/{FLAGS.config}: {settings}', flush=True)
  runs = [train_flavour(workload, flavour, settings, FLAGS.seed) for flavour in FLAGS.flavours]
  results = [FlavourResult(flavour, []) for flavour in FLAGS.flavours]
  for epoch_records in zip(*runs):  # Lockstep: epoch e of every flavour, then epoch e + 1.
    for result, record in zip(results, epoch_records):
      result.records.append(record)
      marglik_text = (f', log marglik/N {record.marglik.log_marglik_after:.4f} '
                      f'(marglik step {record.marglik.seconds:.1f} s)' if record.marglik else '')
      print(f'[{result.flavour}] epoch {record.epoch}: test accuracy {record.test_accuracy:.4f}, '
            f'NLL {record.test_nll:.4f}, {record.seconds:.1f} s{marglik_text}', flush=True)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  write_markdown(os.path.join(FLAGS.output_dir, 'marglik_wrn.md'), workload, settings, results)
  write_plot(os.path.join(FLAGS.output_dir, 'marglik_wrn.png'), results)
  for result in results:
    print(f'{result.flavour}: test accuracy {result.final.test_accuracy:.4f}, NLL '
          f'{result.final.test_nll:.4f}, marglik steps {marglik_seconds(result):.1f} s, '
          f'precisions {result.final.prior_precisions}', flush=True)


def main(argv: Sequence[str]) -> None:
  del argv
  with threadpoolctl.threadpool_limits(limits=FLAGS.lapack_threads, user_api='blas'):
    run_study()


if __name__ == '__main__':
  app.run(main)
