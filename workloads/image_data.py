"""The embedded image data set: scikit-learn's 1,797 handwritten digits as 32x32x3 images.

`sklearn.datasets.load_digits` ships 8x8 grey images with intensities 0..16 and labels 0..9
(UCI "Optical Recognition of Handwritten Digits", test part). We scale them to [0, 1], resize
them bilinearly to 32x32, repeat the grey channel three times and normalise each channel with
the training split's mean and standard deviation, so that the CIFAR-10 Wide ResNet and the ViT
take them exactly like their full-size inputs. The split is a seeded random 80/10/10 partition
(1,437 / 180 / 180). The arrays are built once and cached under `data/digits/` (git-ignored);
a missing cache is rebuilt.
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, Optional, Tuple

import numpy as np

IMAGE_SIZE = 32
NUM_CLASSES = 10
NUM_EXAMPLES = 1797  # The size of `load_digits()`.
# Seed of the random train/validation/test partition; part of the cache file name.
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1
SPLITS = ('train', 'validation', 'test')

Split = Tuple[np.ndarray, np.ndarray]  # images [N, 32, 32, 3] float32, labels [N] int32


def default_data_root() -> str:
  """`<repository>/data`, where embedded data sets are cached."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


def split_sizes(num_examples: int) -> Dict[str, int]:
  """Example counts of the 80/10/10 split: validation and test get `round(0.1 N)` each."""
  num_validation = int(round(VALIDATION_FRACTION * num_examples))
  num_test = int(round(TEST_FRACTION * num_examples))
  return {'train': num_examples - num_validation - num_test, 'validation': num_validation,
          'test': num_test}


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize with half-pixel centres (as `jax.image.resize`, edges clamped).

  Output pixel i samples the input at `(i + 0.5) * in / out - 0.5`.

  Args:
    images: `[N, h, w]`.
    size: the output side.

  Returns:
    `[N, size, size]` float32.
  """

  def interpolation_matrix(in_size: int) -> np.ndarray:  # [size, in_size], rows sum to 1.
    position = np.clip((np.arange(size) + 0.5) * in_size / size - 0.5, 0, in_size - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    frac = position - low
    matrix = np.zeros((size, in_size))
    matrix[np.arange(size), low] += 1 - frac
    matrix[np.arange(size), high] += frac
    return matrix

  rows = interpolation_matrix(images.shape[1])
  cols = interpolation_matrix(images.shape[2])
  return np.einsum('yh,nhw,xw->nyx', rows, images, cols).astype(np.float32)


def build_digits(seed: int = SPLIT_SEED) -> Dict[str, Split]:
  """Loads, resizes, splits and normalises the digits.

  Returns:
    `{split: (images [N, 32, 32, 3] float32, labels [N] int32)}` for train, validation, test;
    each channel of the train images has mean 0 and standard deviation 1.
  """
  from sklearn.datasets import load_digits  # scikit-learn is only needed to build the cache.

  digits = load_digits()
  grey = resize_bilinear(digits.images / 16.0, IMAGE_SIZE)  # [1797, 32, 32] in [0, 1]
  images = np.repeat(grey[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  sizes = split_sizes(len(labels))
  bounds = np.cumsum([0] + [sizes[s] for s in SPLITS])
  indices = {s: order[bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}
  mean = images[indices['train']].mean(axis=(0, 1, 2), dtype=np.float64)
  std = images[indices['train']].std(axis=(0, 1, 2), dtype=np.float64)
  normalised = ((images - mean) / std).astype(np.float32)
  return {s: (normalised[idx], labels[idx]) for s, idx in indices.items()}


def cache_path(data_root: str, seed: int = SPLIT_SEED) -> str:
  return os.path.join(data_root, 'digits', f'digits_{IMAGE_SIZE}x{IMAGE_SIZE}_seed{seed}.npz')


def load_digits_splits(data_root: Optional[str] = None,
                       seed: int = SPLIT_SEED) -> Dict[str, Split]:
  """The cached digit splits, built (and cached) when the cache file is missing.

  Args:
    data_root: the cache root; `default_data_root()` when None.
    seed: the split seed.

  Returns:
    As `build_digits`.
  """
  path = cache_path(data_root or default_data_root(), seed)
  if not os.path.exists(path):
    splits = build_digits(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write to a temporary file and rename, so concurrent builders never see a partial file.
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.npz')
    with os.fdopen(handle, 'wb') as f:
      np.savez(f, **{f'{s}_{kind}': array for s, (images, labels) in splits.items()
                     for kind, array in (('images', images), ('labels', labels))})
    os.replace(temporary, path)
  with np.load(path) as cached:
    return {s: (cached[f'{s}_images'], cached[f'{s}_labels']) for s in SPLITS}


def build_embedded_data(data_root: Optional[str] = None, seed: int = SPLIT_SEED) -> str:
  """Builds the digits cache unless it exists (`kfac-bench build-data`); returns its path."""
  load_digits_splits(data_root, seed)
  return cache_path(data_root or default_data_root(), seed)
