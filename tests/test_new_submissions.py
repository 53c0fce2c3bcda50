"""The low-rank K-FAC and MAC submissions (`kfac_reduce_brand`, `kfac_reduce_rsvd`,
`kfac_expand_brand`, `mac`) on the three tiny configs.

Training steps through upstream's API only: `tests/test_submissions_upstream_api.py` runs every
per-workload module 2 steps (these on ogbg in the default suite, on the image workloads with
`make test-slow`). Here: the optimiser each builds from a tiny batch runs the blocks it is named
for (its curvature report, a shape-only trace: the low-rank block of its tuned point on every
covered layer; MAC's `'mac'` blocks, and `'mac_input'` with expand rows on the layers that read
the model input), and for the Brand blocks the report's rows note (too many rows per batch for
Brand's update, `kfac.blocks.lowrank.brand_rows_note`) is checked against the row counts of the
statistics pass itself (`kfac.compute_statistics` on the same batch, `jax.eval_shape`). One run
of `kfac_reduce_brand` checks that it lowers the training loss (slow). On a small MLP: the
plan's `brand_max_rows` and `max_factor_dim` for 'rsvd' (kfac.plan).
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Dict, List, NamedTuple, Tuple

import flax.linen as nn
import jax
import pytest

import kfac
import workloads
from kfac.blocks.lowrank import brand_rows_note
from submissions import kfac_submission
from tests.test_submissions_upstream_api import FOLDER_WORKLOADS, hyperparameters_of

NEW_SUBMISSIONS = ('kfac_reduce_brand', 'kfac_reduce_rsvd', 'kfac_expand_brand', 'mac')
BRAND_METHODS = ('brand', 'brand_rsvd', 'brand_corrected')


class Trained(NamedTuple):
  """What a few submission steps leave: initial and final parameters, the final model state,
  and the first training batch."""

  initial: Any
  params: Any
  model_state: Any
  first_batch: Dict[str, Any]


def train(module, workload, hyperparameters, batch_size: int, num_steps: int) -> Trained:
  """`num_steps` steps of `module` as upstream's runner drives it."""
  data_rng, model_rng, opt_rng, train_rng = jax.random.split(jax.random.PRNGKey(0), 4)
  queue = workload._build_input_queue(data_rng, 'train', None, batch_size)
  params, model_state = workload.init_model_fn(model_rng)
  initial, state, first_batch = params, module.init_optimizer_state(
      workload, params, model_state, hyperparameters, opt_rng), None
  for step in range(num_steps):
    step_rng = jax.random.fold_in(train_rng, step)
    batch = module.data_selection(workload, queue, state, params, model_state, hyperparameters,
                                  step, step_rng)
    first_batch = first_batch or batch
    state, params, model_state = module.update_params(
        workload, params, workload.model_params_types, model_state, hyperparameters, batch,
        workload.loss_type, state, [], step, step_rng)
  return Trained(initial, params, model_state, first_batch)


def statistics_rows(workload, params, model_state, batch: Dict[str, Any],
                    flavours: Dict[str, str]) -> Dict[str, Tuple[int, int]]:
  """`{layer: (rows of a_rows, rows of g_rows)}` of the statistics pass on `batch` (shapes
  only: `jax.eval_shape`)."""
  apply_fn = kfac_submission.training_logits(workload)

  def forward(params, inputs):
    return apply_fn(params, inputs, model_state=model_state, rng=jax.random.PRNGKey(0),
                    dropout_rate=None)

  report = kfac.layer_report(forward, params, batch['inputs'])
  weights = batch.get('weights')
  statistics = jax.eval_shape(lambda params: kfac.compute_statistics(
      forward, params, batch['inputs'], batch['targets'], report=report,
      flavours={path: flavours['/'.join(path)] for path in report.layers},
      loss=kfac_submission.kfac_loss_name(workload.loss_type), fisher_type='mc',
      rng=jax.random.PRNGKey(1),
      mask=None if weights is None else kfac.losses.objective_mask(weights)), params)
  return {'/'.join(path): (rows.a_rows.shape[0], rows.g_rows.shape[0])
          for path, rows in statistics.items()}


def cases() -> List[Any]:
  return [pytest.param(folder, name, id=f'{folder}.{name}')
          for folder in FOLDER_WORKLOADS for name in NEW_SUBMISSIONS]


@pytest.mark.parametrize('folder,name', cases())
def test_new_submission_builds_the_blocks_it_is_named_for(folder, name):
  workload = workloads.get_workload(FOLDER_WORKLOADS[folder], 'tiny')
  module = importlib.import_module(f'submissions.{folder}.{name}')
  hyperparameters = hyperparameters_of(folder, name)
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  batch = next(workload._build_input_queue(jax.random.PRNGKey(1), 'train', None,
                                           workload.train_batch_size))
  state = module.init_optimizer_state(workload, params, model_state, hyperparameters,
                                      jax.random.PRNGKey(2))
  rows = [row for row in state.build(batch).report() if row.block != 'none']
  assert rows
  blocks = {row.layer: row.block for row in rows}
  if name == 'mac':
    input_layers = {layer for layer, block in blocks.items() if block == 'mac_input'}
    assert input_layers and set(blocks.values()) == {'mac', 'mac_input'}
    assert all(row.flavour == ('expand' if row.layer in input_layers else 'reduce')
               for row in rows)
    assert not any(row.fallback for row in rows)
    return
  assert set(blocks.values()) == {hyperparameters.inverse_method}
  assert {row.flavour for row in rows} == {importlib.import_module(f'submissions.{name}').FLAVOUR}
  if hyperparameters.inverse_method not in BRAND_METHODS:
    assert not any(row.fallback for row in rows)
    return
  counts = statistics_rows(workload, params, model_state, batch,
                           {row.layer: row.flavour for row in rows})
  for row in rows:
    # 'brand' reports the gradient matrix `G [d_a, d_b]`; the blocks that also keep the full
    # averages ('brand_rsvd', ...) report the factors `A [d_a, d_a] full, B [d_b, d_b] full`.
    found = (re.search(r'G \[(\d+), (\d+)\]', row.factors)
             or re.search(r'A \[(\d+), \d+\].*B \[(\d+), \d+\]', row.factors))
    dims = map(int, found.groups())
    expected = [f'{side}: {note}' for side, note in zip('AB', (
        brand_rows_note(dim, hyperparameters.inverse_rank, count)
        for dim, count in zip(dims, counts[row.layer]))) if note]
    assert row.fallback == '; '.join(expected), row


@pytest.mark.slow  # 137 s on the loaded 2-core machine, mostly compilation.
def test_kfac_reduce_brand_lowers_the_training_loss_on_tiny_ogbg():
  """Its tuned point without the warmup (84 steps at the tiny step hint), 8 steps."""
  workload = workloads.get_workload('ogbg', 'tiny')
  module = importlib.import_module('submissions.ogbg_molpcba.kfac_reduce_brand')
  hyperparameters = hyperparameters_of('ogbg_molpcba', 'kfac_reduce_brand')._replace(
      warmup_factor=0.0)
  trained = train(module, workload, hyperparameters, workload.train_batch_size, num_steps=8)
  batch = trained.first_batch

  def loss(params):
    logits, _ = workload.model_fn(params, batch, trained.model_state,
                                  kfac_submission.spec.ForwardPassMode.EVAL, None,
                                  update_batch_norm=False)
    values = workload.loss_fn(batch['targets'], logits, batch.get('weights'))
    return float(values['summed'] / values['n_valid_examples'])

  assert loss(trained.params) < 0.9 * loss(trained.initial)


class TwoLayerMLP(nn.Module):
  """16 -> 32 -> 4, for plan-level checks."""

  @nn.compact
  def __call__(self, x):  # x [N, 16]
    return nn.Dense(4, name='out')(nn.relu(nn.Dense(32, name='hidden')(x)))


def mlp_report(**options: Any) -> Dict[str, kfac.ReportRow]:
  """`{layer: kernel row}` of the MLP's curvature report at batch 64 under `options`."""
  model = TwoLayerMLP()
  inputs = jax.ShapeDtypeStruct((64, 16), jax.numpy.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs)
  rows = kfac.curvature_report(model.apply, params, loss='softmax_cross_entropy',
                               sample_inputs=inputs, **options)
  return {row.layer: row for row in rows if row.parameter.endswith('kernel')}


def test_brand_max_rows_reaches_the_report_and_rsvd_honours_max_factor_dim():
  # hidden: A side 17, B side 32; 64 rows per batch + rank 4 outnumber both.
  plain = mlp_report(inverse_method='brand', inverse_rank=4)
  assert plain['hidden'].fallback == '; '.join(
      f'{side}: {brand_rows_note(dim, 4, 64)}' for side, dim in (('A', 17), ('B', 32)))
  # Sketched to 4 rows: 4 + 4 <= 17 / 2 and 32 / 2, no note.
  assert mlp_report(inverse_method='brand', inverse_rank=4, brand_max_rows=4
                    )['hidden'].fallback == ''
  # 'rsvd' keeps [d, d] factors: a side above max_factor_dim sends the layer to the fallback.
  limited = mlp_report(inverse_method='rsvd', inverse_rank=4, max_factor_dim=32)
  assert limited['hidden'].block == 'rsvd' and limited['hidden'].fallback == ''  # 17, 32.
  assert limited['out'].block == 'diagonal'  # Sides 33 and 4.
  assert 'A diagonal: dimension 33 > max_factor_dim 32' in limited['out'].fallback
