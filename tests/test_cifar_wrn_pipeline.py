"""The CIFAR-10 input pipeline on `tfds.testing.mock_data`, its augmentation, the full config."""

import jax
import numpy as np
import pytest

from workloads import get_workload
from workloads.cifar_wrn import configs, input_pipeline
from contract import errors
from tests import tfds_mock

NUM_MOCK_EXAMPLES = 10
BATCH = 4
DATASETS = (configs.get_config('full').tfds.name,)


def prepared_data_dir(root):
  """A data dir that looks prepared to the workload; mock_data supplies the data."""
  return tfds_mock.prepared_data_dir(root, DATASETS)


@pytest.fixture(scope='module')
def full_workload(tmp_path_factory):
  yield from tfds_mock.mocked_full_workload(tmp_path_factory, 'cifar', DATASETS,
                                            NUM_MOCK_EXAMPLES)


def test_train_batches_shapes_dtypes_labels_and_seeded_order(full_workload):
  def first_batches(seed):
    queue = full_workload.build_input_queue(jax.random.PRNGKey(seed), 'train', None, BATCH)
    return [next(queue) for _ in range(3)]

  batches = first_batches(0)
  for batch in batches:
    assert batch['inputs'].shape == (BATCH, 32, 32, 3) and batch['inputs'].dtype == np.float32
    assert batch['targets'].dtype == np.int32 and batch['weights'].dtype == np.float32
    assert batch['targets'].min() >= 0 and batch['targets'].max() < 10
    assert batch['weights'].all()
  for batch, again in zip(batches, first_batches(0)):
    np.testing.assert_array_equal(batch['inputs'], again['inputs'])
    np.testing.assert_array_equal(batch['targets'], again['targets'])
  assert not np.array_equal(first_batches(1)[0]['inputs'], batches[0]['inputs'])


@pytest.mark.parametrize('split', ['validation', 'test', 'eval_train'])
def test_eval_splits_pass_once_and_pad_the_last_batch(full_workload, split):
  batches = list(full_workload.build_input_queue(jax.random.PRNGKey(0), split, None, BATCH))
  assert [int(b['weights'].sum()) for b in batches] == [4, 4, 2]
  assert all(b['inputs'].shape == (BATCH, 32, 32, 3) for b in batches)
  np.testing.assert_array_equal(batches[-1]['weights'], [1, 1, 0, 0])
  assert not batches[-1]['inputs'][2:].any()


def test_tfds_splits_follow_algoperf():
  assert input_pipeline.tfds_split('train', 45_000) == 'train[:45000]'
  assert input_pipeline.tfds_split('validation', 45_000) == 'train[45000:]'
  assert input_pipeline.tfds_split('test', 45_000) == 'test'


def test_eval_preprocessing_normalises_with_cifar_statistics():
  tf = pytest.importorskip('tensorflow')
  image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
  out = input_pipeline.preprocess_eval(tf.constant(image), configs.CIFAR10_MEAN_RGB,
                                       configs.CIFAR10_STD_RGB).numpy()
  expected = (image / 255.0 - np.array(configs.CIFAR10_MEAN_RGB)) / np.array(
      configs.CIFAR10_STD_RGB)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_train_augmentation_is_a_crop_of_the_4_pixel_padding_maybe_flipped():
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(1)
  image = rng.integers(1, 256, size=(32, 32, 3), dtype=np.uint8)
  mean, std = configs.CIFAR10_MEAN_RGB, configs.CIFAR10_STD_RGB
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
  candidates = {}
  for dy in range(9):
    for dx in range(9):
      crop = padded[dy:dy + 32, dx:dx + 32]
      candidates[(dy, dx, False)] = crop
      candidates[(dy, dx, True)] = crop[:, ::-1]
  found = set()
  for seed in range(12):
    out = input_pipeline.preprocess_train(tf.constant(image), tf.constant([seed, 7], tf.int64),
                                          4, mean, std).numpy()
    pixels = np.round((out * np.array(std) + np.array(mean)) * 255.0)
    matches = [key for key, crop in candidates.items() if np.array_equal(pixels, crop)]
    assert len(matches) == 1
    found.add(matches[0])
  assert len(found) > 1 and len({flip for _, _, flip in found}) == 2


def test_missing_or_empty_data_dir_is_a_benchmark_error(tmp_path):
  with pytest.raises(errors.BenchmarkError, match='needs --data_dir'):
    get_workload('cifar', 'full').check_data_available()
  absent = get_workload('cifar', 'full', data_dir=str(tmp_path / 'absent'))
  with pytest.raises(errors.BenchmarkError, match='does not exist'):
    absent.check_data_available()
  empty = get_workload('cifar', 'full', data_dir=str(tmp_path))
  with pytest.raises(errors.BenchmarkError, match='cifar10.*not prepared'):
    empty.check_data_available()
  with pytest.raises(errors.BenchmarkError, match='cifar10.*not prepared'):
    empty.build_input_queue(jax.random.PRNGKey(0), 'validation', None, BATCH)
  get_workload('cifar', 'full', data_dir=prepared_data_dir(str(tmp_path / 'ok'))
               ).check_data_available()


def test_full_config_targets_and_budgets():
  workload = get_workload('cifar', 'full', data_dir='/')
  assert workload.validation_target_value == 0.85
  assert workload.step_hint == 4_883
  assert workload.max_allowed_runtime_sec == 3_600
  assert 128 <= workload.train_batch_size <= 512
  assert (workload.num_train_examples, workload.num_validation_examples,
          workload.num_test_examples) == (45_000, 5_000, 10_000)
  assert workload.eval_period_steps is None
