"""RandAugment operations against PIL (an independent implementation) and the whole policy."""

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
PIL = pytest.importorskip('PIL')
from PIL import Image, ImageOps  # noqa: E402

from workloads.imagenet_vit import randaugment  # noqa: E402


@pytest.fixture(scope='module')
def image():
  rng = np.random.default_rng(0)
  # Values concentrated in 40..200 so that contrast stretching and equalisation do something.
  return np.clip(rng.normal(120, 30, size=(16, 20, 3)), 40, 200).astype(np.uint8)


@pytest.mark.parametrize('ours,theirs,tolerance', [
    # PIL rounds `x scale - lo scale` in float64, we compute `(x - lo) scale`: off by one at most.
    (randaugment.auto_contrast, ImageOps.autocontrast, 1),
    (randaugment.equalize, ImageOps.equalize, 0),
    (randaugment.invert, ImageOps.invert, 0),
    (lambda im: randaugment.posterize(im, 3), lambda im: ImageOps.posterize(im, 3), 0),
    (lambda im: randaugment.solarize(im, 128.0), lambda im: ImageOps.solarize(im, 128), 0),
])
def test_pixel_operations_match_pil(image, ours, theirs, tolerance):
  expected = np.asarray(theirs(Image.fromarray(image))).astype(int)
  np.testing.assert_allclose(ours(tf.constant(image)).numpy().astype(int), expected, rtol=0,
                             atol=tolerance)


def test_geometric_operations_move_pixels_as_specified(image):
  shifted = randaugment.translate_x(tf.constant(image), 3.0).numpy()
  np.testing.assert_array_equal(shifted[:, :-3], image[:, 3:])
  np.testing.assert_array_equal(shifted[:, -3:], randaugment.FILL_VALUE)
  square = image[:16, :16]
  rotated = randaugment.rotate(tf.constant(square), 90.0).numpy()
  np.testing.assert_array_equal(rotated, np.rot90(square, k=1))  # counter-clockwise
  unchanged = randaugment.shear_x(tf.constant(image), 0.0).numpy()
  np.testing.assert_array_equal(unchanged, image)


def test_enhancements_at_factor_one_are_the_identity(image):
  for enhance in (randaugment.color, randaugment.contrast, randaugment.brightness,
                  randaugment.sharpness):
    np.testing.assert_array_equal(enhance(tf.constant(image), 1.0).numpy(), image)


def test_randaugment_keeps_shape_and_dtype_and_is_seeded(image):
  def augment(seed):
    return randaugment.randaugment(tf.constant(image), tf.constant([seed, 0], tf.int64),
                                   num_layers=2, magnitude=10).numpy()

  out = augment(1)
  assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, augment(1))
  assert any(not np.array_equal(augment(seed), image) for seed in range(2, 6))
