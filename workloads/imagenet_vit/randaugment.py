"""RandAugment (Cubuk et al. 2020) on uint8 images in TensorFlow, stateless.

Each of `num_layers` rounds picks uniformly one of the 16 operations below or the identity and
applies it at the fixed `magnitude` (0..10), with a random sign for the geometric ones, as in the
TPU/big_vision implementation AlgoPerf uses. Magnitude maps (level m on 0..10):
rotate 30 m/10 degrees; shear 0.3 m/10; translate 100 m/10 pixels; cutout half-side 40 m/10;
posterize keeps int(4 m/10) bits; solarize threshold 256 m/10; solarize-add 110 m/10 below 128;
colour, contrast, brightness, sharpness enhancement factor 1.8 m/10 + 0.1. Geometric operations
fill with grey 128. Only imported on the tfds path (it imports TensorFlow).
"""

from __future__ import annotations

import math
from typing import Callable, List

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128
ROTATE_MAX_DEGREES = 30.0
SHEAR_MAX = 0.3
TRANSLATE_MAX_PIXELS = 100.0
CUTOUT_MAX_HALF_SIDE = 40.0
SOLARIZE_ADD_MAX = 110.0


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
  """`degenerate + factor (image - degenerate)` clipped to uint8 (PIL ImageEnhance)."""
  degenerate = tf.cast(degenerate, tf.float32)
  blended = degenerate + factor * (tf.cast(image, tf.float32) - degenerate)
  return tf.cast(tf.clip_by_value(tf.round(blended), 0.0, 255.0), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma, repeated over the three channels, uint8."""
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def _transform(image: tf.Tensor, transform: List[tf.Tensor]) -> tf.Tensor:
  """Projective transform `[a0, a1, a2, b0, b1, b2, c0, c1]` mapping output (x, y) to input
  (a0 x + a1 y + a2, b0 x + b1 y + b2) (c = 0), nearest neighbour, grey fill."""
  transform = tf.cast(tf.stack(transform), tf.float32)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
      fill_value=tf.constant(FILL_VALUE, tf.float32), interpolation='NEAREST',
      fill_mode='CONSTANT')
  return out[0]


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel linearly to 0..255 (unchanged where the channel is constant)."""
  image = tf.cast(image, tf.float32)
  low = tf.reduce_min(image, axis=[0, 1])
  high = tf.reduce_max(image, axis=[0, 1])
  scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
  offset = tf.where(high > low, low, 0.0)
  return tf.cast(tf.clip_by_value((image - offset) * scale, 0.0, 255.0), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalisation of each channel (PIL ImageOps.equalize)."""

  def equalize_channel(channel: tf.Tensor) -> tf.Tensor:  # [H, W] int32
    histogram = tf.math.bincount(tf.reshape(channel, [-1]), minlength=256, maxlength=256)
    last = tf.boolean_mask(histogram, histogram > 0)[-1]
    step = (tf.reduce_sum(histogram) - last) // 255
    lut = (tf.cumsum(histogram) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.where(step == 0, channel, tf.gather(lut, channel))

  channels = tf.unstack(tf.cast(image, tf.int32), axis=-1)
  return tf.cast(tf.stack([equalize_channel(c) for c in channels], axis=-1), tf.uint8)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """Rotation about the image centre."""
  angle = degrees * math.pi / 180.0
  height = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
  width = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  offset_x = (width - (cos * width - sin * height)) / 2.0
  offset_y = (height - (sin * width + cos * height)) / 2.0
  return _transform(image, [cos, -sin, offset_x, sin, cos, offset_y, 0.0, 0.0])


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each value."""
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, threshold: float) -> tf.Tensor:
  """Inverts the values at or above `threshold`."""
  return tf.where(tf.cast(image, tf.float32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: float, threshold: float = 128.0) -> tf.Tensor:
  """Adds `addition` to the values below `threshold` (clipped)."""
  added = tf.cast(tf.clip_by_value(tf.cast(image, tf.float32) + addition, 0.0, 255.0), tf.uint8)
  return tf.where(tf.cast(image, tf.float32) < threshold, added, image)


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor: float) -> tf.Tensor:
  """Blends with the image's mean grey level."""
  mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
  """Blends with a 3x3 smoothing ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) of the interior."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                  padding='VALID')[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0.0, 255.0), tf.uint8)
  interior = tf.ones_like(smooth, dtype=tf.bool)
  mask = tf.pad(interior, [[1, 1], [1, 1], [0, 0]], constant_values=False)
  degenerate = tf.where(mask, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return _blend(degenerate, image, factor)


def shear_x(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
  return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
  return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate_x(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0])


def cutout(image: tf.Tensor, half_side: int, seed: tf.Tensor) -> tf.Tensor:
  """Fills a square of side `2 half_side` (clipped at the border) at a random centre with grey."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  centre = tf.random.stateless_uniform([2], seed, maxval=tf.int32.max, dtype=tf.int32)
  centre_y, centre_x = centre[0] % height, centre[1] % width
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inside = ((tf.abs(rows - centre_y) < half_side) & (tf.abs(cols - centre_x) < half_side))
  return tf.where(inside[:, :, None], tf.constant(FILL_VALUE, tf.uint8), image)


def _operations(magnitude: float, sign: tf.Tensor,
                seed: tf.Tensor) -> List[Callable[[tf.Tensor], tf.Tensor]]:
  """The 16 operations at `magnitude`, geometric ones with `sign` (+1 or -1)."""
  fraction = magnitude / MAX_LEVEL
  enhance = 1.8 * fraction + 0.1
  return [
      auto_contrast,
      equalize,
      invert,
      lambda im: rotate(im, sign * ROTATE_MAX_DEGREES * fraction),
      lambda im: posterize(im, int(4 * fraction)),
      lambda im: solarize(im, 256.0 * fraction),
      lambda im: color(im, enhance),
      lambda im: contrast(im, enhance),
      lambda im: brightness(im, enhance),
      lambda im: sharpness(im, enhance),
      lambda im: shear_x(im, sign * SHEAR_MAX * fraction),
      lambda im: shear_y(im, sign * SHEAR_MAX * fraction),
      lambda im: translate_x(im, sign * TRANSLATE_MAX_PIXELS * fraction),
      lambda im: translate_y(im, sign * TRANSLATE_MAX_PIXELS * fraction),
      lambda im: cutout(im, int(CUTOUT_MAX_HALF_SIDE * fraction), seed),
      lambda im: solarize_add(im, SOLARIZE_ADD_MAX * fraction),
  ]


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int,
                magnitude: float) -> tf.Tensor:
  """`num_layers` rounds of a uniformly chosen operation (or the identity).

  Args:
    image: `[H, W, 3]` uint8.
    seed: a stateless seed `[2]`.
    num_layers: rounds.
    magnitude: 0..10.

  Returns:
    `[H, W, 3]` uint8.
  """
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    choice_seed, sign_seed, op_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seed, 3))
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
    operations = _operations(magnitude, sign, op_seed)
    choice = tf.random.stateless_uniform([], choice_seed, maxval=len(operations) + 1,
                                         dtype=tf.int32)
    branches = [lambda im=image: im] + [lambda op=op, im=image: op(im) for op in operations]
    image = tf.switch_case(choice, branches)
    image.set_shape([None, None, 3])
  return image
