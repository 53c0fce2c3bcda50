"""The ogbg-molpcba workload: AlgoPerf's GraphNetwork on molecular graphs, multi-task binary
classification scored by mean average precision.

Configs are in `configs.py`, the network in `model.py`, batches in `input_pipeline.py`, the
embedded data in `embedded_data.py`, mAP in `metrics.py`.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax

from contract import sharding
from contract import types as api_types
from workloads.config_workload import ConfigWorkload, seed_from_rng
from workloads.ogbg_molpcba import configs, embedded_data, input_pipeline, metrics, model

# Splits `_build_input_queue` accepts; 'eval_train' is the first `num_eval_train_examples`
# training molecules in stored order (what `eval_model` scores as 'train').
INPUT_SPLITS = ('train', 'eval_train', 'validation', 'test')


def binary_cross_entropy_with_mask(labels: jax.Array, logits: jax.Array, mask: jax.Array,
                                   label_smoothing: float = 0.0) -> jax.Array:
  """Per-label sigmoid cross-entropy, zero where `mask` is 0 (AlgoPerf's ogbg loss).

  With smoothed labels y~ = optax.smooth_labels(y, s) = (1 - s) y + s / T (AlgoPerf smooths
  over the T tasks of the last axis), the loss of logit x is
  max(x, 0) - x y~ + log(1 + exp(-|x|)), i.e. -y~ log sigmoid(x) - (1 - y~) log(1 - sigmoid(x)).

  Args:
    labels, logits, mask: [n_graph, T]; labels in {0, 1} where mask is nonzero.
    label_smoothing: s.

  Returns:
    [n_graph, T] losses, 0 where masked.
  """
  if not logits.shape == labels.shape == mask.shape:
    raise ValueError(f'shape mismatch: logits {logits.shape}, labels {labels.shape}, '
                     f'mask {mask.shape}')
  if logits.ndim != 2:
    raise ValueError(f'logits must be [n_graph, num_tasks], got shape {logits.shape}')
  valid = mask != 0
  # Masked labels may be NaN in user data: replace them before they reach the gradient.
  labels = optax.smooth_labels(jnp.where(valid, labels, 0.0), label_smoothing)
  losses = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return jnp.where(valid, losses, 0.0)


def parameter_types(params: api_types.ParameterContainer) -> Any:
  """The `api_types.ParameterType` of every parameter, by AlgoPerf's naming rules: LayerNorm scale and
  bias, the `node_embedding`/`edge_embedding` kernels as EMBEDDING, other kernels WEIGHT, other
  biases BIAS."""

  def param_type(path, _) -> api_types.ParameterType:
    module, name = path[-2].key, path[-1].key
    if module.startswith('LayerNorm'):
      return (api_types.ParameterType.LAYER_NORM_SCALE if name == 'scale'
              else api_types.ParameterType.LAYER_NORM_BIAS)
    if name == 'bias':
      return api_types.ParameterType.BIAS
    if module.endswith('embedding'):
      return api_types.ParameterType.EMBEDDING
    return api_types.ParameterType.WEIGHT

  return jax.tree_util.tree_map_with_path(param_type, params)


class OgbgMolpcbaWorkload(ConfigWorkload):
  """ogbg-molpcba (AlgoPerf's `ogbg`) with `full`, `paper`, `small` and `tiny` configs.

  Data sources: `tfds` reads tensorflow-datasets' `ogbg_molpcba:0.1.3` from `data_dir`;
  `embedded` reads the RDKit-derived data set, cached under `data_dir` when one is given, else
  under `<repo>/data` (`embedded_data.py`). The number of tasks (model outputs), split sizes and
  padding budget belong to the data source; the model, batch sizes, targets and budgets to the
  config.
  """

  workload_name = 'ogbg'
  config_names = configs.CONFIG_NAMES
  get_config = staticmethod(configs.get_config)

  build_embedded_data = staticmethod(embedded_data.build_embedded_data)

  def __init__(self, config_name: str = 'small', data_dir: Optional[str] = None,
               data_source: Optional[str] = None) -> None:
    super().__init__(config_name=config_name, data_dir=data_dir, data_source=data_source)
    self.data_config = configs.get_data_config(self.data_source)
    self._model: Optional[model.GNN] = None
    self._dropout_rate = self.config.model.dropout_rate
    self._embedded: Optional[embedded_data.EmbeddedData] = None
    self._eval_outputs = jax.jit(self._eval_outputs_fn,
                                 out_shardings=sharding.get_replicate_sharding())

  # Data --------------------------------------------------------------------------------------

  def check_data_available(self) -> None:
    """Raises BenchmarkError when the tfds data cannot be read (the embedded data is built on
    demand)."""
    if self.data_source == 'tfds':
      input_pipeline.check_tfds_data(self.data_dir, self.data_config.tfds_name)

  def _embedded_data(self) -> embedded_data.EmbeddedData:
    if self._embedded is None:
      self._embedded = embedded_data.load_embedded_data(self.data_dir)
    return self._embedded

  @property
  def num_tasks(self) -> int:
    """Model outputs: 128 on the real data, the kept `fr_` descriptors on the embedded data."""
    if self.data_source == 'tfds':
      return self.data_config.num_tasks
    return self._embedded_data().num_tasks

  def _num_split_examples(self, split: str) -> int:
    if self.data_source == 'tfds':
      return self.data_config[f'num_{split}_examples']
    return self._embedded_data().num_examples(split)

  def padding_budget(self, batch_size: int) -> input_pipeline.PaddingBudget:
    """The padding budget of one device's share of a global batch of `batch_size` graphs."""
    sharding.check_divisible(batch_size)
    return input_pipeline.padding_budget(batch_size // jax.device_count(),
                                         self.data_config.avg_nodes_per_graph,
                                         self.data_config.avg_edges_per_graph)

  def _examples(self, split: str, data_dir: Optional[str], shuffle_seed: Optional[int],
                num_examples: Optional[int]) -> Iterator[input_pipeline.Example]:
    if self.data_source == 'tfds':
      data_dir = data_dir or self.data_dir
      input_pipeline.check_tfds_data(data_dir, self.data_config.tfds_name)
      return input_pipeline.tfds_examples(
          split, data_dir, self.data_config.tfds_name, shuffle_seed=shuffle_seed,
          shuffle_buffer_size=self.data_config.shuffle_buffer_size, num_examples=num_examples)
    return input_pipeline.embedded_examples(self._embedded_data(), split,
                                            shuffle_seed=shuffle_seed, num_examples=num_examples)

  def _build_input_queue(self, data_rng: api_types.RandomState, split: str, data_dir: Optional[str],
                         global_batch_size: int, cache: Optional[bool] = None,
                         repeat_final_dataset: Optional[bool] = None,
                         num_batches: Optional[int] = None) -> Iterator[api_types.Batch]:
    """Batches of `split` padded for `global_batch_size` graphs.

    'train' is shuffled with a seed drawn from `data_rng` and endless; 'eval_train' (the first
    `num_eval_train_examples` training molecules), 'validation' and 'test' are one pass in
    stored order, the final partial batch padded, repeated when `repeat_final_dataset`.
    `num_batches` truncates the stream; `cache` is unused (the embedded data is in memory).
    """
    del cache
    if split not in INPUT_SPLITS:
      raise ValueError(f'unknown split {split!r}; choose one of {", ".join(INPUT_SPLITS)}')
    budget, shards = self.padding_budget(global_batch_size), jax.device_count()
    if split == 'train':
      batches = input_pipeline.batch_examples(
          self._examples('train', data_dir, seed_from_rng(data_rng), None), budget, shards)
    else:
      source_split, num_examples = (('train', self.num_eval_train_examples)
                                    if split == 'eval_train' else (split, None))
      one_pass = functools.partial(self._examples, source_split, data_dir, None, num_examples)
      if repeat_final_dataset:
        batches = itertools.chain.from_iterable(
            input_pipeline.batch_examples(one_pass(), budget, shards) for _ in itertools.count())
      else:
        batches = input_pipeline.batch_examples(one_pass(), budget, shards)
    # Split over the devices: whole molecules on each (see input_pipeline).
    return map(sharding.shard_along_batch_dim, itertools.islice(batches, num_batches))

  # Targets and budgets -----------------------------------------------------------------------

  @property
  def target_metric_name(self) -> str:
    return 'mean_average_precision'

  @property
  def loss_type(self) -> api_types.LossType:
    # AlgoPerf's base class says SOFTMAX_CROSS_ENTROPY, but its loss is the sigmoid one.
    return api_types.LossType.SIGMOID_CROSS_ENTROPY

  @property
  def num_train_examples(self) -> int:
    return self._num_split_examples('train')

  @property
  def num_eval_train_examples(self) -> int:
    """AlgoPerf scores as many training as validation molecules."""
    if self.data_source == 'tfds':
      return self.data_config.num_eval_train_examples
    return self.num_validation_examples

  @property
  def num_validation_examples(self) -> int:
    return self._num_split_examples('validation')

  @property
  def num_test_examples(self) -> int:
    return self._num_split_examples('test')

  # Model -------------------------------------------------------------------------------------

  def init_model_fn(self, rng: api_types.RandomState, dropout_rate: Optional[float] = None
                    ) -> Tuple[api_types.ParameterContainer, api_types.ModelAuxiliaryState]:
    """Initialises on a one-node, one-edge graph; returns `(params, None)` (no model state).

    `dropout_rate`, when given, replaces the config's rate for `model_fn` calls without one.
    """
    if dropout_rate is not None:
      self._dropout_rate = dropout_rate
    model_config = self.config.model
    self._model = model.GNN(num_outputs=self.num_tasks, latent_dim=model_config.latent_dim,
                            hidden_dims=tuple(model_config.hidden_dims),
                            num_message_passing_steps=model_config.num_message_passing_steps)
    params_rng, dropout_rng = jax.random.split(rng)
    fake_graph = jraph.GraphsTuple(
        nodes=jnp.ones((1, embedded_data.NUM_ATOM_FEATURES)),
        edges=jnp.ones((1, embedded_data.NUM_BOND_FEATURES)),
        senders=jnp.zeros((1,), jnp.int32), receivers=jnp.zeros((1,), jnp.int32),
        n_node=jnp.ones((1,), jnp.int32), n_edge=jnp.ones((1,), jnp.int32), globals=None)
    init_fn = jax.jit(functools.partial(self._model.init, train=False))
    params = init_fn({'params': params_rng, 'dropout': dropout_rng}, fake_graph)['params']
    self._set_param_records(params, parameter_types(params))
    return params, None

  def is_output_params(self, param_key: Tuple[str, ...]) -> bool:
    """True for the decoder's kernel and bias (`('Dense_15', 'kernel')` on the full model)."""
    model_config = self.config.model
    return model.decoder_name(model_config.num_message_passing_steps,
                              model_config.hidden_dims) in tuple(param_key)

  def model_fn(self, params: api_types.ParameterContainer,
               augmented_and_preprocessed_input_batch: api_types.Batch,
               model_state: api_types.ModelAuxiliaryState, mode: api_types.ForwardPassMode,
               rng: api_types.RandomState, update_batch_norm: bool,
               dropout_rate: Optional[float] = None
               ) -> Tuple[jax.Array, api_types.ModelAuxiliaryState]:
    """Logits [n_graph, num_tasks]; dropout (with `rng`) in TRAIN mode only. No model state.

    `dropout_rate` may be a traced scalar (a submission's hyperparameter inside `jit`); None
    means the config's rate (or the one given to `init_model_fn`).
    """
    del update_batch_norm  # No batch norm in the GNN.
    if model_state is not None:
      raise ValueError(f'ogbg has no model state, got {model_state!r}')
    if self._model is None:
      raise ValueError('call init_model_fn before model_fn')
    train = mode == api_types.ForwardPassMode.TRAIN
    rate = self._dropout_rate if dropout_rate is None else dropout_rate
    logits = self._model.apply({'params': params},
                               augmented_and_preprocessed_input_batch['inputs'], train=train,
                               dropout_rate=rate,
                               rngs={'dropout': rng} if train and rng is not None else {})
    return logits, None

  def loss_fn(self, label_batch: jax.Array, logits_batch: jax.Array,
              mask_batch: Optional[jax.Array] = None,
              label_smoothing: float = 0.0) -> Dict[str, jax.Array]:
    """AlgoPerf's ogbg loss: `per_example` is the per-label loss [n_graph, T] (0 where masked),
    `summed` its sum, `n_valid_examples` the number of valid labels (sum of the mask), so
    `summed / n_valid_examples` is the mean over valid labels."""
    if mask_batch is None:
      mask_batch = jnp.ones_like(logits_batch)
    per_label = binary_cross_entropy_with_mask(label_batch, logits_batch, mask_batch,
                                               label_smoothing)
    return {
        'summed': per_label.sum(),
        'n_valid_examples': (mask_batch != 0).sum(),
        'per_example': per_label,
    }

  # Evaluation --------------------------------------------------------------------------------

  def _eval_outputs_fn(self, params: api_types.ParameterContainer, batch: api_types.Batch
                       ) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(logits [n_graph, T], summed loss, number of valid labels) of one batch, deterministic."""
    logits, _ = self.model_fn(params, batch, None, api_types.ForwardPassMode.EVAL, None,
                              update_batch_norm=False)
    losses = self.loss_fn(batch['targets'], logits, batch['weights'])
    return logits, losses['summed'], losses['n_valid_examples']

  def _eval_batches(self, split: str, num_examples: int, global_batch_size: int,
                    data_dir: Optional[str]) -> list:
    """The batches of one evaluation pass, read once and kept (as AlgoPerf keeps its eval
    iterators): 'train' means the first `num_examples` training molecules."""
    key = f'{split}:{num_examples}:{global_batch_size}'
    if key not in self._eval_iters:
      examples = self._examples(split, data_dir, None, num_examples)
      self._eval_iters[key] = list(input_pipeline.batch_examples(
          examples, self.padding_budget(global_batch_size), jax.device_count()))
    return self._eval_iters[key]

  def _eval_model_on_split(self, split: str, num_examples: int, global_batch_size: int,
                           params: api_types.ParameterContainer,
                           model_state: api_types.ModelAuxiliaryState, rng: api_types.RandomState,
                           data_dir: Optional[str], global_step: int = 0) -> Dict[str, float]:
    """`loss` (mean over valid labels) and `mean_average_precision` over one pass of the first
    `num_examples` molecules of `split`."""
    del model_state, rng, global_step
    logits, targets, weights = [], [], []
    summed_loss, num_valid = 0.0, 0.0
    for batch in self._eval_batches(split, num_examples, global_batch_size, data_dir):
      batch_logits, batch_loss, batch_valid = self._eval_outputs(
          params, sharding.shard_along_batch_dim(batch))
      logits.append(np.asarray(batch_logits))
      targets.append(batch['targets'])
      weights.append(batch['weights'])
      summed_loss += float(batch_loss)
      num_valid += float(batch_valid)
    return {
        'loss': summed_loss / max(num_valid, 1.0),
        'mean_average_precision': metrics.mean_average_precision(
            np.concatenate(targets), np.concatenate(logits), np.concatenate(weights)),
    }
