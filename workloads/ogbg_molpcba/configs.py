"""The ogbg-molpcba configs (`full`, `paper`, `small`, `tiny`) and the facts of its two data
sources.

`full` is AlgoPerf's workload `ogbg` as of v0.6 (algoperf/workloads/ogbg/workload.py, jax workload
and input pipeline): the model, batch, padding, targets and budgets below are AlgoPerf's.
`paper` is the same workload with AlgoPerf v0.5's step hint and budget, which the K-FAC paper's
schedules were planned over (Eschenhagen et al. 2023): use it to reproduce the paper. `small` and
`tiny` are CPU-sized models on the embedded data (`embedded_data.py`), evaluated on a step period.
"""

from __future__ import annotations

import ml_collections

CONFIG_NAMES = ('full', 'paper', 'small', 'tiny')

# AlgoPerf v0.6 (upstream `OgbgWorkload.step_hint`, `max_allowed_runtime_sec`).
FULL_STEP_HINT = 52_000
FULL_MAX_RUNTIME_SEC = 12_011
# AlgoPerf v0.5, the paper's: its target-setting schedule ran over 0.75 x 80,000 = 60,000 steps.
PAPER_STEP_HINT = 80_000
PAPER_MAX_RUNTIME_SEC = 18_477

# Small: validation mAP 0.70. Measured with the tuned Nesterov point
# (tuning_search_spaces/ogbg_molpcba/nesterov_tuned.json: lr 0.707, 1 - beta1 0.0928, weight decay
# 6.3e-7, the best of a 4-trial Halton sweep of nesterov_sweep.json), evaluating every 100 steps:
# seed 0 reaches 0.6996 at step 900 and 0.7252 at 1,000; seed 1000 0.7096 at 900; seed 2000 escapes
# the base-rate plateau (mAP ~0.14) later, 0.41 at step 700, 0.6906 at 1,100, 0.7220 at 1,200.
# Steps to 0.70: 1,000 / 900 / 1,200. The first evaluations sit on the plateau, so the target
# takes 9-12 evaluations: reliable, not trivial. AlgoPerf's own Nesterov point
# (lr 2.49) plateaus near 0.50 on this config (0.50 at step 2,000, 0.51 at 3,000, seed 0).
SMALL_VALIDATION_TARGET = 0.70
SMALL_TEST_TARGET = 0.70
# Tiny (tests only): provisional, never used as a reference target.
TINY_VALIDATION_TARGET = 0.40
TINY_TEST_TARGET = 0.40


def get_data_config(data_source: str) -> ml_collections.ConfigDict:
  """Facts of a data source: its padding budget per graph and, for tfds, its sizes.

  `tfds` (AlgoPerf): ogbg-molpcba has on average 26.0 nodes and 28.1 bonds (56.2 directed
  edges) per molecule; AlgoPerf pads to 26 nodes and 56 edges per graph of the batch.
  `embedded`: the 4,991 NCI molecules have on average 16.4 nodes and 33.8 directed edges; the
  budget is those means rounded up (17, 34), so a batch holds about as many molecules as the
  batch size, as on the real data. Split sizes and task count come from the cached data.
  """
  if data_source == 'tfds':
    return ml_collections.ConfigDict({
        'tfds_name': 'ogbg_molpcba:0.1.3',
        'num_tasks': 128,
        'avg_nodes_per_graph': 26,
        'avg_edges_per_graph': 56,
        'shuffle_buffer_size': 2**15,
        'num_train_examples': 350_343,
        'num_eval_train_examples': 43_793,
        'num_validation_examples': 43_793,
        'num_test_examples': 43_793,
    })
  if data_source == 'embedded':
    return ml_collections.ConfigDict({
        'avg_nodes_per_graph': 17,
        'avg_edges_per_graph': 34,
    })
  raise ValueError(f'unknown data source {data_source!r}')


def get_config(config_name: str) -> ml_collections.ConfigDict:
  """The config of `full`, `paper`, `small` or `tiny`.

  Fields: `data_source` (the default one), `model` (GNN widths, depth, dropout), `batch_size`
  and `eval_batch_size` (graphs; batches are padded as `input_pipeline.padding_budget`),
  targets on the validation and test mean average precision, `step_hint`, `max_allowed_runtime_sec`, `eval_period_time_sec` and
  `eval_period_steps` (None: time-based only; the runner prefers the step period when set).
  """
  if config_name in ('full', 'paper'):
    paper = config_name == 'paper'
    return ml_collections.ConfigDict({
        'data_source': 'tfds',
        'model': {'latent_dim': 256, 'hidden_dims': (256,), 'num_message_passing_steps': 5,
                  'dropout_rate': 0.1},
        'batch_size': 512,
        'eval_batch_size': 32_768,
        'validation_target_value': 0.28098,
        'test_target_value': 0.268729,
        'step_hint': PAPER_STEP_HINT if paper else FULL_STEP_HINT,
        'max_allowed_runtime_sec': PAPER_MAX_RUNTIME_SEC if paper else FULL_MAX_RUNTIME_SEC,
        'eval_period_time_sec': 4 * 60,
        'eval_period_steps': None,
    })
  if config_name == 'small':
    # 140,667 parameters; 2.1 GFLOP per training step (XLA cost analysis), about 0.1 s of CPU
    # time on 2 cores. With AlgoPerf's full-size hyperparameters (lr 2.49) Nesterov leaves its
    # initial plateau (mAP ~0.14) late or not at all (final mAP 0.51 / 0.27 over two seeds; with 2
    # message-passing steps 0.81 / 0.73), so the small reference is the tuned Nesterov point
    # (nesterov_tuned.json), which reaches the 0.70 target on every seed measured (see the target
    # above). The targets, make run and the K-FAC measurements are for these 3 steps.
    return ml_collections.ConfigDict({
        'data_source': 'embedded',
        'model': {'latent_dim': 64, 'hidden_dims': (64,), 'num_message_passing_steps': 3,
                  'dropout_rate': 0.1},
        'batch_size': 128,
        'eval_batch_size': 512,
        'validation_target_value': SMALL_VALIDATION_TARGET,
        'test_target_value': SMALL_TEST_TARGET,
        'step_hint': 3_000,
        # 3,000 steps: ~3-5 min on 2 idle cores (estimated from the CPU time per step), 17.5 min
        # measured on the shared 2 cores at load average ~10.
        'max_allowed_runtime_sec': 1_200,
        'eval_period_time_sec': 10,
        'eval_period_steps': 100,
    })
  if config_name == 'tiny':
    # One message-passing step at width 32 trains reliably with Nesterov (4 seeds); width 16
    # stays on the initial plateau (mAP ~0.14) for some seeds, and with step_hint 1,000 (a
    # decay 3x sooner) neither width leaves it. 2.4 ms per jitted step: 3,000 steps in seconds.
    return ml_collections.ConfigDict({
        'data_source': 'embedded',
        'model': {'latent_dim': 32, 'hidden_dims': (32,), 'num_message_passing_steps': 1,
                  'dropout_rate': 0.1},
        'batch_size': 32,
        'eval_batch_size': 256,
        'validation_target_value': TINY_VALIDATION_TARGET,
        'test_target_value': TINY_TEST_TARGET,
        'step_hint': 3_000,
        'max_allowed_runtime_sec': 120,
        'eval_period_time_sec': 1,
        'eval_period_steps': 100,
    })
  raise ValueError(f'unknown config {config_name!r}; choose one of {", ".join(CONFIG_NAMES)}')
