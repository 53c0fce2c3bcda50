"""CIFAR-10 input pipeline of the Wide ResNet workload (tfds `cifar10`).

Splits as AlgoPerf: training reads the first 45,000 of the 50,000 tfds training images,
validation the last 5,000, test the tfds test split. Training: zero-pad 4 pixels on every side,
take a random 32x32 crop, flip left-right with probability 1/2 (the standard CIFAR augmentation
of He et al. 2016 and the Wide ResNet paper), scale to [0, 1] and normalise with the CIFAR-10
channel mean and standard deviation. Evaluation: normalise only. Randomness is stateless, seeded
per example from the queue seed and the example's index in the stream.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import ml_collections

from workloads import image_pipeline


def tfds_split(split: str, num_train: int) -> str:
  """The tfds split string of a workload split."""
  return {'train': f'train[:{num_train}]', 'eval_train': f'train[:{num_train}]',
          'validation': f'train[{num_train}:]', 'test': 'test'}[split]


def preprocess_train(image: Any, seed: Any, padding: int, mean: tuple, std: tuple) -> Any:
  """Pad-and-crop, flip, normalise: `[32, 32, 3]` uint8 -> `[32, 32, 3]` float32."""
  import tensorflow as tf

  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return preprocess_eval(image, mean, std)


def preprocess_eval(image: Any, mean: tuple, std: tuple) -> Any:
  """`[H, W, 3]` uint8 -> float32 `(image / 255 - mean) / std`."""
  import tensorflow as tf

  return image_pipeline.tf_normalize(tf.cast(image, tf.float32) / 255.0, mean, std)


def train_batches(data_dir: str, seed: int, batch_size: int,
                  config: ml_collections.ConfigDict) -> Iterator[image_pipeline.Batch]:
  """Endless shuffled, augmented training batches (the 45,000 training images, cached).

  Args:
    data_dir: the tfds directory.
    seed: fixes the shuffle order and every augmentation.
    batch_size: examples per batch.
    config: the config's `tfds` section.
  """
  return image_pipeline.tfds_train_batches(
      config.name, data_dir, tfds_split('train', config.num_train), seed, batch_size,
      config.shuffle_buffer_batches * batch_size,
      lambda image, example_seed: preprocess_train(image, example_seed, config.padding,
                                                   config.mean_rgb, config.std_rgb),
      cache=True)


def eval_batches(data_dir: str, split: str, batch_size: int, num_examples: Optional[int],
                 cache: bool, config: ml_collections.ConfigDict) -> Iterable[image_pipeline.Batch]:
  """One pass over the first `num_examples` (all when None) of an evaluation split, the last
  batch padded."""
  return image_pipeline.tfds_eval_batches(
      config.name, data_dir, tfds_split(split, config.num_train), batch_size, num_examples,
      lambda image: preprocess_eval(image, config.mean_rgb, config.std_rgb), cache=cache)
