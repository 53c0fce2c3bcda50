"""Batching shared by the image workloads: numpy batch streams, eval padding, tfds access.

Batches are dicts of numpy arrays: `inputs` `[B, H, W, 3]` float32, `targets` `[B]` int32 and
`weights` `[B]` float32 (1 for real examples, 0 for padding). Training streams repeat and
reshuffle forever and never pad; evaluation streams go through a split once and pad the final
partial batch with zero images whose weight is 0.

TensorFlow and tensorflow-datasets are imported inside the functions that need them, so the
embedded path never loads them.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from contract import errors


Batch = Dict[str, np.ndarray]


def with_weights(inputs: np.ndarray, targets: np.ndarray) -> Batch:
  """A full batch: float32 inputs, int32 targets, all weights 1."""
  return {'inputs': np.asarray(inputs, np.float32), 'targets': np.asarray(targets, np.int32),
          'weights': np.ones(len(targets), np.float32)}


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads every array of a batch with zeros up to `batch_size` rows; padding rows get weight 0.

  Args:
    batch: `inputs`, `targets` and optionally `weights` with `n <= batch_size` rows.
    batch_size: the padded size.

  Returns:
    The batch with `batch_size` rows and `weights` `[batch_size]` float32.
  """
  num = len(batch['targets'])
  if num > batch_size:
    raise ValueError(f'a batch of {num} examples does not fit in {batch_size}')
  batch = dict(batch)
  batch.setdefault('weights', np.ones(num, np.float32))
  return {key: np.concatenate([value, np.zeros((batch_size - num,) + value.shape[1:],
                                               value.dtype)])
          for key, value in batch.items()}


def shuffled_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int,
                     seed: int) -> Iterator[Batch]:
  """Endless training batches from in-memory arrays.

  The examples are visited in a fresh seeded permutation each epoch; the epochs are
  concatenated and cut into consecutive batches, so every batch is full and every example is
  seen once per epoch.
  """
  generator = np.random.default_rng(seed)
  order = np.zeros(0, dtype=np.int64)
  while True:
    while len(order) < batch_size:
      order = np.concatenate([order, generator.permutation(len(targets))])
    indices, order = order[:batch_size], order[batch_size:]
    yield with_weights(inputs[indices], targets[indices])


class PaddedBatches:
  """One pass over in-memory arrays in order, the last partial batch padded (re-iterable)."""

  def __init__(self, inputs: np.ndarray, targets: np.ndarray, batch_size: int) -> None:
    self.inputs = inputs
    self.targets = targets
    self.batch_size = batch_size

  def __iter__(self) -> Iterator[Batch]:
    for start in range(0, len(self.targets), self.batch_size):
      stop = start + self.batch_size
      yield pad_batch(with_weights(self.inputs[start:stop], self.targets[start:stop]),
                      self.batch_size)


class PaddedTfBatches:
  """One pass over a batched `tf.data.Dataset` of `{'inputs', 'targets'}` as padded numpy
  batches (re-iterable: each pass re-runs the dataset, from its cache when it has one)."""

  def __init__(self, dataset: Any, batch_size: int) -> None:
    self.dataset = dataset
    self.batch_size = batch_size

  def __iter__(self) -> Iterator[Batch]:
    for batch in self.dataset.as_numpy_iterator():
      yield pad_batch(with_weights(batch['inputs'], batch['targets']), self.batch_size)


def check_tfds_prepared(data_dir: Optional[str], name: str) -> None:
  """Raises BenchmarkError unless `data_dir` holds the prepared tfds data set `name` (e.g.
  `cifar10:3.0.2`): tfds's layout `<data_dir>/<name>/<version>/dataset_info.json`."""
  if not data_dir:
    raise errors.BenchmarkError(f'tensorflow-datasets data set {name!r} needs --data_dir')
  if not os.path.isdir(data_dir):
    raise errors.BenchmarkError(f'data directory {data_dir!r} does not exist')
  info = os.path.join(data_dir, *name.replace(':', '/').split('/'), 'dataset_info.json')
  if not os.path.isfile(info):
    raise errors.BenchmarkError(
        f'tensorflow-datasets data set {name!r} is not prepared under {data_dir!r} (no {info}); '
        f'prepare it with `tfds build {name.split(":")[0]} --data_dir={data_dir}` (ImageNet '
        f'needs its manual download first) or pass the --data_dir that holds it')


def tfds_builder(name: str, data_dir: Optional[str]) -> Any:
  """The tensorflow-datasets builder of `name` under `data_dir` (checked first)."""
  check_tfds_prepared(data_dir, name)
  import tensorflow_datasets as tfds

  return tfds.builder(name, data_dir=data_dir)


def _tfds_split(name: str, data_dir: Optional[str], split: str,
                skip_image_decoding: bool) -> Any:
  """The examples of a tfds split in stored order, element order deterministic under parallel
  maps; images left as encoded bytes when `skip_image_decoding`."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  decoders = {'image': tfds.decode.SkipDecoding()} if skip_image_decoding else None
  dataset = tfds_builder(name, data_dir).as_dataset(split=split, decoders=decoders,
                                                    shuffle_files=False)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def tfds_train_batches(name: str, data_dir: Optional[str], split: str, seed: int,
                       batch_size: int, shuffle_buffer: int,
                       preprocess: Callable[[Any, Any], Any], skip_image_decoding: bool = False,
                       cache: bool = False) -> Iterator[Batch]:
  """Endless training batches of a tfds image classification split.

  The split (cached in memory when `cache`) is repeated, shuffled in a buffer of
  `shuffle_buffer` examples with `seed`, and each image is mapped by
  `preprocess(image, example_seed)`, `example_seed` a stateless TF seed unique to (`seed`, the
  example's index in the stream); so `seed` fixes the order and every augmentation.
  """
  import tensorflow as tf

  dataset = _tfds_split(name, data_dir, split, skip_image_decoding)
  if cache:
    dataset = dataset.cache()
  dataset = dataset.repeat().shuffle(shuffle_buffer, seed=seed)

  def map_example(index: Any, example: Any) -> Any:
    return {'inputs': preprocess(example['image'], tf_seed_pair(seed, index)),
            'targets': example['label']}

  dataset = dataset.enumerate().map(map_example, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return (with_weights(batch['inputs'], batch['targets'])
          for batch in dataset.as_numpy_iterator())


def tfds_eval_batches(name: str, data_dir: Optional[str], split: str, batch_size: int,
                      num_examples: Optional[int], preprocess: Callable[[Any], Any],
                      skip_image_decoding: bool = False,
                      cache: bool = True) -> PaddedTfBatches:
  """One pass over the first `num_examples` (all when None) of a tfds split in stored order,
  images mapped by `preprocess(image)` (cached after preprocessing when `cache`), the last batch
  padded."""
  import tensorflow as tf

  dataset = _tfds_split(name, data_dir, split, skip_image_decoding)
  if num_examples is not None:
    dataset = dataset.take(num_examples)

  def map_example(example: Any) -> Any:
    return {'inputs': preprocess(example['image']), 'targets': example['label']}

  dataset = dataset.map(map_example, num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    dataset = dataset.cache()
  return PaddedTfBatches(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), batch_size)


def tf_seed_pair(seed: int, index: Any) -> Any:
  """A stateless TF seed `[2]` int64 unique to (`seed`, example `index`)."""
  import tensorflow as tf

  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 0], dtype=tf.int64), tf.cast(index, tf.int64))


def tf_normalize(image: Any, mean: Tuple[float, float, float],
                 std: Tuple[float, float, float]) -> Any:
  """`(image - mean) / std` per channel, float32; `image` `[H, W, 3]` on the scale of `mean`."""
  import tensorflow as tf

  image = tf.cast(image, tf.float32)
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)

