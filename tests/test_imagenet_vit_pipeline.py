"""The ImageNet input pipeline on `tfds.testing.mock_data`, RandAugment against PIL, mixup."""

import os

import jax
import numpy as np
import pytest

from workloads import get_workload
from workloads.image_classification import softmax_cross_entropy
from workloads.imagenet_vit import configs, input_pipeline
from contract import errors
from contract import types as api_types
from tests import tfds_mock

NUM_MOCK_EXAMPLES = 10
BATCH = 4
DATASETS = (configs.get_config('full').tfds.train_name, configs.get_config('full').tfds.test_name)


def prepared_data_dir(root):
  """A data dir that looks prepared to the workload; mock_data supplies the data."""
  return tfds_mock.prepared_data_dir(root, DATASETS)


@pytest.fixture(scope='module')
def full_workload(tmp_path_factory):
  yield from tfds_mock.mocked_full_workload(tmp_path_factory, 'imagenet_vit', DATASETS,
                                            NUM_MOCK_EXAMPLES)


def test_train_batches_shapes_dtypes_labels_and_seeded_order(full_workload):
  def first_batch(seed):
    return next(full_workload.build_input_queue(jax.random.PRNGKey(seed), 'train', None,
                                                BATCH))

  batch = first_batch(0)
  assert batch['inputs'].shape == (BATCH, 224, 224, 3) and batch['inputs'].dtype == np.float32
  # AlgoPerf's ViT trains on mixed-up labels (on by default): each row mixes two one-hot labels.
  assert batch['targets'].shape == (BATCH, 1000) and batch['targets'].dtype == np.float32
  np.testing.assert_allclose(batch['targets'].sum(axis=1), 1.0, rtol=1e-5)
  assert ((batch['targets'] > 0).sum(axis=1) <= 2).all()
  np.testing.assert_array_equal(batch['weights'], np.ones(BATCH, np.float32))
  again = first_batch(0)
  np.testing.assert_array_equal(batch['inputs'], again['inputs'])
  np.testing.assert_array_equal(batch['targets'], again['targets'])
  assert not np.array_equal(first_batch(1)['inputs'], batch['inputs'])


@pytest.mark.parametrize('split', ['validation', 'test', 'eval_train'])
def test_eval_splits_pass_once_and_pad_the_last_batch(full_workload, split):
  batches = list(full_workload.build_input_queue(jax.random.PRNGKey(0), split, None, BATCH))
  assert [int(b['weights'].sum()) for b in batches] == [4, 4, 2]
  assert all(b['inputs'].shape == (BATCH, 224, 224, 3) for b in batches)
  assert not batches[-1]['inputs'][2:].any()
  again = list(full_workload.build_input_queue(jax.random.PRNGKey(5), split, None, BATCH))
  np.testing.assert_array_equal(batches[0]['inputs'], again[0]['inputs'])


def test_missing_or_empty_data_dir_is_a_benchmark_error(tmp_path):
  with pytest.raises(errors.BenchmarkError, match='needs --data_dir'):
    get_workload('imagenet_vit', 'full').check_data_available()
  absent = get_workload('imagenet_vit', 'full', data_dir=str(tmp_path / 'absent'))
  with pytest.raises(errors.BenchmarkError, match='does not exist'):
    absent.check_data_available()
  empty = get_workload('imagenet_vit', 'full', data_dir=str(tmp_path))
  with pytest.raises(errors.BenchmarkError, match='imagenet2012.*not prepared'):
    empty.check_data_available()
  with pytest.raises(errors.BenchmarkError, match='imagenet2012.*not prepared'):
    empty.build_input_queue(jax.random.PRNGKey(0), 'train', None, BATCH)
  train_only = tmp_path / 'train_only'
  prepared_data_dir(str(train_only))
  os.remove(train_only / 'imagenet_v2' / 'matched-frequency' / '3.0.0' / 'dataset_info.json')
  workload = get_workload('imagenet_vit', 'full', data_dir=str(train_only))
  with pytest.raises(errors.BenchmarkError, match='imagenet_v2.*not prepared'):
    workload.check_data_available()
  with pytest.raises(errors.BenchmarkError, match='imagenet_v2.*not prepared'):
    workload.build_input_queue(jax.random.PRNGKey(0), 'test', None, BATCH)
  get_workload('imagenet_vit', 'full', data_dir=prepared_data_dir(str(tmp_path / 'ok'))
               ).check_data_available()


def test_full_config_targets_and_budgets():
  workload = get_workload('imagenet_vit', 'full', data_dir='/')
  assert workload.validation_target_value == 0.77309
  assert workload.test_target_value == 0.6519
  assert workload.step_hint == 167_999
  assert workload.max_allowed_runtime_sec == 69_768
  assert workload.train_batch_size == 1024
  assert workload.num_train_examples == 1_281_167
  assert workload.num_validation_examples == 50_000
  assert workload.eval_period_steps is None
  assert workload.loss_type == api_types.LossType.SOFTMAX_CROSS_ENTROPY
  assert workload.target_metric_name == 'accuracy' and workload.target_metric_higher_is_better


def test_mixup_mixes_each_batch_with_its_roll():
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(4, 2, 2, 3)).astype(np.float32),
           'targets': np.array([0, 1, 2, 1], np.int32), 'weights': np.ones(4, np.float32)}
  mixed = next(input_pipeline.mixup_batches(iter([batch]), seed=0, alpha=0.2, num_classes=3))
  targets = mixed['targets']
  assert targets.shape == (4, 3) and targets.dtype == np.float32
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  lam = targets[0, 0]  # example 0 (class 0) mixed with example 3 (class 1)
  np.testing.assert_allclose(mixed['inputs'],
                             lam * batch['inputs'] + (1 - lam) * np.roll(batch['inputs'], 1, 0),
                             rtol=1e-5, atol=1e-6)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  assert softmax_cross_entropy(targets, logits)['per_example'].shape == (4,)


def test_mixup_flag_turns_train_targets_soft():
  workload = get_workload('imagenet_vit', 'tiny')
  assert not workload.config.use_mixup
  workload.config.use_mixup = True
  batch = next(workload.build_input_queue(jax.random.PRNGKey(0), 'train', None, 8))
  assert batch['targets'].shape == (8, 10)


def test_eval_crop_is_the_resized_centre_square():
  tf = pytest.importorskip('tensorflow')
  image = np.random.default_rng(0).integers(0, 256, size=(40, 64, 3), dtype=np.uint8)
  # Full-resolution chroma: decoding a crop then equals cropping the decoded image.
  jpeg = tf.io.encode_jpeg(tf.constant(image), quality=100, chroma_downsampling=False)
  decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
  side = int(32 / 36 * 40)  # image_size / resize_size of the shorter side
  top, left = (40 - side + 1) // 2, (64 - side + 1) // 2
  expected = tf.image.resize(decoded[top:top + side, left:left + side], [32, 32],
                             method='bicubic').numpy()
  out = input_pipeline.decode_center_crop(jpeg, image_size=32, resize_size=36).numpy()
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize('use_randaug', [False, True])
def test_train_preprocessing_is_seeded_and_normalised(use_randaug):
  tf = pytest.importorskip('tensorflow')
  config = configs.get_config('full').tfds
  config.use_randaug = use_randaug
  image = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
  jpeg = tf.io.encode_jpeg(tf.constant(image))

  def preprocess(seed):
    return input_pipeline.preprocess_train(jpeg, tf.constant([seed, 0], tf.int64), 32,
                                           config).numpy()

  out = preprocess(1)
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, preprocess(1))
  assert not np.array_equal(out, preprocess(2))
  pixels = out * np.array(config.std_rgb) + np.array(config.mean_rgb)
  assert pixels.min() > -30 and pixels.max() < 285  # back on the 0..255 scale (bicubic overshoot)
