"""What the image-classification workloads (ImageNet ViT, CIFAR-10 WRN) share.

`ImageClassificationWorkload` implements the AlgoPerf Workload members whose logic is the same
for both (targets and budgets come from the config, `ConfigWorkload`): softmax cross-entropy with
label smoothing,
top-1 accuracy, the forward pass (dropout, BatchNorm modes), parameter types, the embedded-digits
data path and evaluation. A subclass names its config getter, its model and its tfds pipeline.

Splits: `train` (training stream, augmented, shuffled, endless), `eval_train` (the first
`num_eval_train_examples` training examples, not augmented, one pass), `validation` and `test`
(one pass). `_eval_model_on_split('train', ...)` reads `eval_train`.
"""

from __future__ import annotations

import abc
import itertools
import math
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from contract import errors, sharding
from contract import types as api_types
from workloads import image_data, image_pipeline
from workloads.config_workload import ConfigWorkload, seed_from_rng

EVAL_SPLITS = ('eval_train', 'validation', 'test')


def parameter_types(params: api_types.ParameterContainer) -> Any:
  """The `api_types.ParameterType` of every leaf of a Flax parameter tree, from its path.

  BatchNorm/LayerNorm scale and bias by the module name; the `query`/`key`/`value`/`out`
  projections of a `MultiHeadDotProductAttention`; 4-D kernels are convolutions; other kernels
  are dense weights.
  """
  param_type = api_types.ParameterType
  attention_kernels = {'query': param_type.ATTENTION_Q, 'key': param_type.ATTENTION_K,
                       'value': param_type.ATTENTION_V, 'out': param_type.ATTENTION_OUT}

  def leaf_type(path: Tuple[str, ...], value: jax.Array) -> api_types.ParameterType:
    module = path[-2].lower() if len(path) > 1 else ''
    owner = path[-3] if len(path) > 2 else ''
    leaf = path[-1]
    if 'batchnorm' in module:
      return param_type.BATCH_NORM_SCALE if leaf == 'scale' else param_type.BATCH_NORM_BIAS
    if 'layernorm' in module:
      return param_type.LAYER_NORM_SCALE if leaf == 'scale' else param_type.LAYER_NORM_BIAS
    if 'MultiHeadDotProductAttention' in owner and path[-2] in attention_kernels:
      return attention_kernels[path[-2]] if leaf == 'kernel' else param_type.ATTENTION_BIAS
    if leaf == 'bias':
      return param_type.BIAS
    if leaf == 'embedding':
      return param_type.EMBEDDING
    return param_type.CONV_WEIGHT if value.ndim == 4 else param_type.WEIGHT

  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: leaf_type(path, value) for path, value in flat.items()})


def softmax_cross_entropy(label_batch: jax.Array, logits_batch: jax.Array,
                          mask_batch: Optional[jax.Array] = None,
                          label_smoothing: float = 0.0) -> Dict[str, jax.Array]:
  """Masked softmax cross-entropy with label smoothing (AlgoPerf `loss_fn` semantics).

  `per_example[n] = -sum_c y[n, c] log softmax(logits[n])_c * mask[n]` with the smoothed target
  `y = (1 - s) onehot + s / C`.

  Args:
    label_batch: `[N]` integer labels, or `[N, C]` soft targets (mixup).
    logits_batch: `[N, C]`.
    mask_batch: `[N]` example weights (0 for padding); all ones when None.
    label_smoothing: s.

  Returns:
    `{'summed': scalar, 'n_valid_examples': scalar (sum of the mask), 'per_example': [N]}`.
  """
  num_classes = logits_batch.shape[-1]
  if label_batch.ndim == logits_batch.ndim:
    targets = label_batch
  else:
    targets = jax.nn.one_hot(label_batch, num_classes, dtype=logits_batch.dtype)
  targets = optax.smooth_labels(targets, label_smoothing)
  per_example = -jnp.sum(targets * jax.nn.log_softmax(logits_batch, axis=-1), axis=-1)
  if mask_batch is None:
    n_valid_examples = jnp.asarray(per_example.shape[0], per_example.dtype)
  else:
    per_example = per_example * mask_batch
    n_valid_examples = jnp.sum(mask_batch)
  return {'summed': jnp.sum(per_example), 'n_valid_examples': n_valid_examples,
          'per_example': per_example}


class ImageClassificationWorkload(ConfigWorkload):
  """An image classifier on tfds data (full config) or the embedded digits (small, tiny).

  Subclasses implement `get_config`, `build_model`, `tfds_names` and the two tfds hooks.
  """

  build_embedded_data = staticmethod(image_data.build_embedded_data)

  def __init__(self, config_name: str = 'small', data_dir: Optional[str] = None,
               data_source: Optional[str] = None) -> None:
    super().__init__(config_name, data_dir, data_source)
    if self.data_source != self.config.data_source:
      raise errors.BenchmarkError(
          f'config {config_name!r} of workload {self.workload_name!r} reads '
          f'{self.config.data_source!r} data, not {self.data_source!r} '
          f'(the full config reads tfds, the small and tiny configs the embedded digits)')
    self._model = self.build_model(self.config)
    self._dropout_rate = self.config.dropout_rate
    self._embedded_splits: Optional[Dict[str, image_data.Split]] = None
    self._eval_step = jax.jit(self._eval_batch_totals,
                              out_shardings=sharding.get_replicate_sharding())

  # Subclass hooks ---------------------------------------------------------------------------

  @property
  @abc.abstractmethod
  def tfds_names(self) -> Tuple[str, ...]:
    """The tfds data sets (`name:version`) the full config reads."""

  @staticmethod
  @abc.abstractmethod
  def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The Flax model of a config, called as `model(images, train=, dropout_rate=)`."""

  @abc.abstractmethod
  def _tfds_train_batches(self, data_dir: str, seed: int,
                          batch_size: int) -> Iterator[image_pipeline.Batch]:
    """Endless augmented, shuffled training batches of the real data set."""

  @abc.abstractmethod
  def _tfds_eval_batches(self, data_dir: str, split: str, batch_size: int,
                         num_examples: Optional[int],
                         cache: bool) -> Iterable[image_pipeline.Batch]:
    """A re-iterable single pass over an evaluation split of the real data set, padded."""

  def check_data_available(self) -> None:
    """Raises BenchmarkError unless every tfds data set of the config is prepared under
    `data_dir` (the embedded digits are built on demand)."""
    super().check_data_available()
    if self.data_source == 'tfds':
      for name in self.tfds_names:
        image_pipeline.check_tfds_prepared(self.data_dir, name)

  # Targets and sizes -------------------------------------------------------------------------

  @property
  def target_metric_name(self) -> str:
    return 'accuracy'

  @property
  def loss_type(self) -> api_types.LossType:
    return api_types.LossType.SOFTMAX_CROSS_ENTROPY

  @property
  def num_train_examples(self) -> int:
    return self.config.num_train_examples

  @property
  def num_eval_train_examples(self) -> int:
    """As AlgoPerf: the validation size rounded up to whole evaluation batches (at most the
    training set)."""
    rounded = math.ceil(self.num_validation_examples / self.eval_batch_size) * self.eval_batch_size
    return min(rounded, self.num_train_examples)

  @property
  def num_validation_examples(self) -> int:
    return self.config.num_validation_examples

  @property
  def num_test_examples(self) -> int:
    return self.config.num_test_examples

  # Model ------------------------------------------------------------------------------------

  def is_output_params(self, param_key: Tuple[str, ...]) -> bool:
    """The classifier is the Dense layer named `head`."""
    return len(param_key) > 0 and param_key[0] == 'head'

  def init_model_fn(self, rng: api_types.RandomState, dropout_rate: Optional[float] = None
                    ) -> Tuple[api_types.ParameterContainer, api_types.ModelAuxiliaryState]:
    """Initialises the model on a `[1, H, W, 3]` input.

    Args:
      rng: the parameter key.
      dropout_rate: overrides the config's dropout rate for `model_fn` calls without one.

    Returns:
      `(params, model_state)`: `params` the `'params'` collection; `model_state` the other
      collections (`{'batch_stats': ...}` for BatchNorm models) or None when there are none.
    """
    if dropout_rate is not None:
      self._dropout_rate = dropout_rate
    size = self.config.image_size
    # JAX's default partitionable threefry compiles about 5x slower on CPU than the classic one
    # (measured: ~60 s vs ~20 s for the tiny WRN's init on 2 loaded cores); parameters are
    # initialised once, unsharded, so the classic bits serve as well.
    with jax.threefry_partitionable(False):
      variables = jax.jit(self._model.init)(rng, jnp.zeros((1, size, size, 3), jnp.float32))
    variables = dict(variables)
    params = variables.pop('params')
    self._set_param_records(params, parameter_types(params))
    return params, (variables or None)

  def model_fn(self, params: api_types.ParameterContainer,
               augmented_and_preprocessed_input_batch: api_types.Batch,
               model_state: api_types.ModelAuxiliaryState, mode: api_types.ForwardPassMode,
               rng: api_types.RandomState, update_batch_norm: bool,
               dropout_rate: Optional[float] = None
               ) -> Tuple[jax.Array, api_types.ModelAuxiliaryState]:
    """Logits `[N, C]` of `batch['inputs']` `[N, H, W, 3]` and the next model state.

    TRAIN: dropout on (with `rng`), BatchNorm normalises with batch statistics and the returned
    state holds the updated running averages when `update_batch_norm`, the old ones otherwise.
    EVAL: no dropout, BatchNorm uses the running averages, the state is returned unchanged.
    `dropout_rate` may be a traced scalar; None means the config's rate (or `init_model_fn`'s).
    """
    train = mode == api_types.ForwardPassMode.TRAIN
    rate = self._dropout_rate if dropout_rate is None else dropout_rate
    inputs = augmented_and_preprocessed_input_batch['inputs']
    variables = {'params': params, **(model_state or {})}
    rngs = {'dropout': rng} if train and rng is not None else {}
    if train and model_state:
      logits, updated_state = self._model.apply(
          variables, inputs, train=True, dropout_rate=rate, rngs=rngs,
          mutable=list(model_state))
      return logits, (dict(updated_state) if update_batch_norm else model_state)
    logits = self._model.apply(variables, inputs, train=train, dropout_rate=rate, rngs=rngs)
    return logits, model_state

  def loss_fn(self, label_batch: jax.Array, logits_batch: jax.Array,
              mask_batch: Optional[jax.Array] = None,
              label_smoothing: float = 0.0) -> Dict[str, jax.Array]:
    """See `softmax_cross_entropy`."""
    return softmax_cross_entropy(label_batch, logits_batch, mask_batch, label_smoothing)

  # Data -------------------------------------------------------------------------------------

  def _digits(self) -> Dict[str, image_data.Split]:
    if self._embedded_splits is None:
      self._embedded_splits = image_data.load_digits_splits()
    return self._embedded_splits

  def _train_batches(self, data_dir: Optional[str], seed: int,
                     batch_size: int) -> Iterator[image_pipeline.Batch]:
    if self.data_source == 'tfds':
      return self._tfds_train_batches(data_dir, seed, batch_size)
    images, labels = self._digits()['train']
    return image_pipeline.shuffled_batches(images, labels, batch_size, seed)

  def _eval_batches(self, data_dir: Optional[str], split: str, batch_size: int,
                    num_examples: Optional[int] = None,
                    cache: bool = True) -> Iterable[image_pipeline.Batch]:
    """A re-iterable single pass over the first `num_examples` (all when None) of a split."""
    if split not in EVAL_SPLITS:
      raise ValueError(f'unknown split {split!r}; choose train or one of {EVAL_SPLITS}')
    if split == 'eval_train':
      num_examples = min(num_examples or self.num_eval_train_examples,
                         self.num_eval_train_examples)
    if self.data_source == 'tfds':
      return self._tfds_eval_batches(data_dir, split, batch_size, num_examples, cache)
    images, labels = self._digits()['train' if split == 'eval_train' else split]
    return image_pipeline.PaddedBatches(images[:num_examples], labels[:num_examples],
                                        batch_size)

  def _build_input_queue(self, data_rng: api_types.RandomState, split: str,
                         data_dir: Optional[str], global_batch_size: int,
                         cache: Optional[bool] = None,
                         repeat_final_dataset: Optional[bool] = None,
                         num_batches: Optional[int] = None) -> Iterator[image_pipeline.Batch]:
    """Batches of a split: `train` endless and shuffled by `data_rng`; evaluation splits one
    pass in a fixed order with the final batch padded (weights 0), repeated when
    `repeat_final_dataset`. At most `num_batches` batches when given. Each batch is placed split
    along its leading dimension over all devices (`contract.sharding`)."""
    data_dir = data_dir or self.data_dir
    if split == 'train':
      batches = self._train_batches(data_dir, seed_from_rng(data_rng),
                                    global_batch_size)
    else:
      one_pass = self._eval_batches(data_dir, split, global_batch_size,
                                    cache=True if cache is None else cache)
      batches = (itertools.chain.from_iterable(itertools.repeat(one_pass))
                 if repeat_final_dataset else iter(one_pass))
    batches = itertools.islice(batches, num_batches) if num_batches is not None else batches
    return map(sharding.shard_along_batch_dim, batches)  # Split over the devices.

  # Evaluation -------------------------------------------------------------------------------

  def _eval_batch_totals(self, params: api_types.ParameterContainer,
                         model_state: api_types.ModelAuxiliaryState,
                         batch: api_types.Batch) -> Dict[str, jax.Array]:
    """Summed loss, number of correct predictions and number of real examples of a padded batch
    (padding rows have weight 0)."""
    logits, _ = self.model_fn(params, batch, model_state, api_types.ForwardPassMode.EVAL, None,
                              update_batch_norm=False)
    weights = batch['weights']
    loss = self.loss_fn(batch['targets'], logits, weights)
    correct = (jnp.argmax(logits, axis=-1) == batch['targets']) * weights
    return {'loss': loss['summed'], 'accuracy': jnp.sum(correct),
            'num_examples': loss['n_valid_examples']}

  def _eval_model_on_split(self, split: str, num_examples: int, global_batch_size: int,
                           params: api_types.ParameterContainer,
                           model_state: api_types.ModelAuxiliaryState, rng: api_types.RandomState,
                           data_dir: Optional[str], global_step: int = 0) -> Dict[str, float]:
    """Mean loss and accuracy over the first `num_examples` of a split (`train` reads
    `eval_train`). The pass is cached per (split, batch size, size) and the jitted step compiles
    once per batch size."""
    del rng, global_step
    split = 'eval_train' if split == 'train' else split
    key = (split, global_batch_size, num_examples)
    if key not in self._eval_iters:
      self._eval_iters[key] = self._eval_batches(data_dir or self.data_dir, split,
                                                 global_batch_size, num_examples)
    totals = None
    for batch in self._eval_iters[key]:
      batch_totals = self._eval_step(params, model_state, sharding.shard_along_batch_dim(batch))
      totals = batch_totals if totals is None else jax.tree.map(jnp.add, totals, batch_totals)
    count = float(totals.pop('num_examples'))
    return {name: float(value) / count for name, value in totals.items()}
