"""ImageNet input pipeline of the ViT workload (AlgoPerf's, from the Flax ImageNet example).

Training: decode a random crop of the JPEG covering 8-100% of the image area with aspect ratio
in [3/4, 4/3] (`stateless_sample_distorted_bounding_box`, 10 attempts, falling back to the
evaluation crop), resize it bicubically to 224x224, flip left-right with probability 1/2,
optionally RandAugment, normalise with the ImageNet mean and standard deviation. Evaluation:
decode the centre square of side `224 / 256` of the shorter side, resize it to 224x224,
normalise. Randomness is stateless, seeded per example from the queue seed and the example's
index in the stream, so a seed fixes the order and the augmentations.

Mixup (a numpy transform of training batches, either data source) and RandAugment are behind
config flags, off by default. TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import ml_collections
import numpy as np

from workloads import image_pipeline

# Evaluation split -> (which tfds data set of the config, tfds split).
TFDS_EVAL_SPLITS = {'eval_train': ('train_name', 'train'),
                    'validation': ('train_name', 'validation'),
                    'test': ('test_name', 'test')}
RANDOM_CROP_ATTEMPTS = 10
RANDOM_CROP_MIN_OBJECT_COVERED = 0.1


def resize_bicubic(image: Any, size: int) -> Any:
  """`[h, w, 3]` -> `[size, size, 3]` float32, bicubic."""
  import tensorflow as tf

  return tf.image.resize(image, [size, size], method=tf.image.ResizeMethod.BICUBIC)


def decode_center_crop(image_bytes: Any, image_size: int, resize_size: int) -> Any:
  """Decodes the centre square of side `image_size / resize_size * min(h, w)` and resizes it to
  `[image_size, image_size, 3]` float32 (0..255 scale)."""
  import tensorflow as tf

  shape = tf.io.extract_jpeg_shape(image_bytes)
  height, width = shape[0], shape[1]
  crop = tf.cast(image_size / resize_size * tf.cast(tf.minimum(height, width), tf.float32),
                 tf.int32)
  offset_y = (height - crop + 1) // 2
  offset_x = (width - crop + 1) // 2
  image = tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([offset_y, offset_x, crop, crop]),
                                     channels=3)
  return resize_bicubic(image, image_size)


def decode_random_crop(image_bytes: Any, seed: Any, image_size: int, resize_size: int,
                       area_range: tuple, aspect_ratio_range: tuple) -> Any:
  """Decodes a random crop (area and aspect ratio in the given ranges) resized to
  `[image_size, image_size, 3]`; when no crop is found within the attempts, the centre crop."""
  import tensorflow as tf

  shape = tf.io.extract_jpeg_shape(image_bytes)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=RANDOM_CROP_MIN_OBJECT_COVERED, aspect_ratio_range=aspect_ratio_range,
      area_range=area_range, max_attempts=RANDOM_CROP_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  crop_height, crop_width, _ = tf.unstack(size)
  # The sampler returns the whole image when every attempt failed: use the evaluation crop then.
  failed = tf.logical_and(tf.equal(crop_height, shape[0]), tf.equal(crop_width, shape[1]))
  return tf.cond(
      failed,
      lambda: decode_center_crop(image_bytes, image_size, resize_size),
      lambda: resize_bicubic(tf.io.decode_and_crop_jpeg(
          image_bytes, tf.stack([offset_y, offset_x, crop_height, crop_width]), channels=3),
          image_size))


def preprocess_train(image_bytes: Any, seed: Any, image_size: int,
                     config: ml_collections.ConfigDict) -> Any:
  """Random-resized crop, flip, optional RandAugment, normalise: `[image_size, image_size, 3]`."""
  import tensorflow as tf

  crop_seed, flip_seed, randaug_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = decode_random_crop(image_bytes, crop_seed, image_size, config.resize_size,
                             tuple(config.area_range), tuple(config.aspect_ratio_range))
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  if config.use_randaug:
    from workloads.imagenet_vit import randaugment

    image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    image = randaugment.randaugment(image, randaug_seed, config.randaug_num_layers,
                                    config.randaug_magnitude)
  return image_pipeline.tf_normalize(image, config.mean_rgb, config.std_rgb)


def train_batches(data_dir: str, seed: int, batch_size: int, image_size: int,
                  config: ml_collections.ConfigDict) -> Iterator[image_pipeline.Batch]:
  """Endless shuffled, augmented training batches of `imagenet2012`.

  Args:
    data_dir: the tfds directory.
    seed: fixes the shuffle order and every augmentation.
    batch_size: examples per batch.
    image_size: the model's input side.
    config: the config's `tfds` section.
  """
  return image_pipeline.tfds_train_batches(
      config.train_name, data_dir, 'train', seed, batch_size,
      config.shuffle_buffer_batches * batch_size,
      lambda image_bytes, example_seed: preprocess_train(image_bytes, example_seed, image_size,
                                                         config),
      skip_image_decoding=True)


def eval_batches(data_dir: str, split: str, batch_size: int, num_examples: Optional[int],
                 cache: bool, image_size: int,
                 config: ml_collections.ConfigDict) -> Iterable[image_pipeline.Batch]:
  """One pass over the first `num_examples` (all when None) of an evaluation split, centre
  crops, the last batch padded. `eval_train` and `validation` read `imagenet2012`, `test`
  ImageNet-v2 (as AlgoPerf)."""
  name_key, tfds_split = TFDS_EVAL_SPLITS[split]

  def preprocess(image_bytes: Any) -> Any:
    image = decode_center_crop(image_bytes, image_size, config.resize_size)
    return image_pipeline.tf_normalize(image, config.mean_rgb, config.std_rgb)

  return image_pipeline.tfds_eval_batches(config[name_key], data_dir, tfds_split, batch_size,
                                          num_examples, preprocess, skip_image_decoding=True,
                                          cache=cache)


def mixup_batches(batches: Iterator[image_pipeline.Batch], seed: int, alpha: float,
                  num_classes: int) -> Iterator[image_pipeline.Batch]:
  """Mixup (Zhang et al. 2018) of each batch with itself rolled by one example.

  Per batch `lam ~ Beta(alpha, alpha)`; `inputs = lam x + (1 - lam) roll(x, 1)` and `targets`
  become soft `[B, num_classes]` float32 `lam onehot(y) + (1 - lam) roll(onehot(y), 1)`
  (`loss_fn` takes them as they are).
  """
  generator = np.random.default_rng(seed)
  for batch in batches:
    lam = generator.beta(alpha, alpha)
    one_hot = np.eye(num_classes, dtype=np.float32)[batch['targets']]
    yield {'inputs': (lam * batch['inputs'] + (1 - lam) * np.roll(batch['inputs'], 1, axis=0)
                      ).astype(np.float32),
           'targets': (lam * one_hot + (1 - lam) * np.roll(one_hot, 1, axis=0)
                       ).astype(np.float32),
           'weights': batch['weights']}
