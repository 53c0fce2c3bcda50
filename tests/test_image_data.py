"""The embedded digits data set and what both image workloads share (batching, padding, loss,
evaluation) on it."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import workloads
from workloads import get_workload, image_data, image_pipeline
from workloads.image_classification import softmax_cross_entropy
from contract import errors
from contract import types as api_types

WORKLOADS = ('imagenet_vit', 'cifar')


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  return image_data.load_digits_splits(str(tmp_path_factory.mktemp('data')))


@pytest.fixture(scope='module', params=WORKLOADS)
def tiny(request):
  """A tiny workload of each kind, initialised."""
  workload = get_workload(request.param, 'tiny')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  return workload, params, model_state


# -- Embedded digits -----------------------------------------------------------------------------


def test_split_sizes_partition_all_1797_digits(digits):
  from sklearn.datasets import load_digits

  sizes = {split: len(labels) for split, (_, labels) in digits.items()}
  assert sizes == {'train': 1437, 'validation': 180, 'test': 180}
  assert image_data.split_sizes(image_data.NUM_EXAMPLES) == sizes
  all_labels = np.concatenate([labels for _, labels in digits.values()])
  np.testing.assert_array_equal(np.bincount(all_labels), np.bincount(load_digits().target))


def test_images_are_32x32x3_float_normalised_grey(digits):
  for images, labels in digits.values():
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() <= 9
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
  train_images = digits['train'][0].astype(np.float64)
  np.testing.assert_allclose(train_images.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(train_images.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_split_is_deterministic_and_seeded(digits):
  rebuilt = image_data.build_digits(image_data.SPLIT_SEED)
  for split in image_data.SPLITS:
    np.testing.assert_array_equal(rebuilt[split][0], digits[split][0])
    np.testing.assert_array_equal(rebuilt[split][1], digits[split][1])
  other = image_data.build_digits(image_data.SPLIT_SEED + 1)
  assert not np.array_equal(other['validation'][1], digits['validation'][1])


def test_cache_is_written_and_rebuilt_when_missing(tmp_path):
  path = image_data.cache_path(str(tmp_path))
  first = image_data.load_digits_splits(str(tmp_path))
  assert os.path.isfile(path)
  os.remove(path)
  rebuilt = image_data.load_digits_splits(str(tmp_path))
  assert os.path.isfile(path)
  np.testing.assert_array_equal(first['test'][0], rebuilt['test'][0])


def test_resize_bilinear_matches_jax_image_resize():
  images = np.random.default_rng(0).random((3, 8, 8))
  expected = jax.image.resize(images, (3, 32, 32), 'bilinear')
  np.testing.assert_allclose(image_data.resize_bilinear(images, 32), expected, atol=1e-6)


# -- Batching helpers ----------------------------------------------------------------------------


def test_pad_batch_pads_with_zero_weights():
  batch = image_pipeline.with_weights(np.ones((3, 2, 2, 3)), np.array([4, 5, 6]))
  padded = image_pipeline.pad_batch(batch, 5)
  np.testing.assert_array_equal(padded['weights'], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(padded['targets'], [4, 5, 6, 0, 0])
  assert padded['inputs'].shape == (5, 2, 2, 3) and not padded['inputs'][3:].any()
  assert padded['weights'].dtype == np.float32 and padded['targets'].dtype == np.int32


def test_shuffled_batches_visit_every_example_once_per_epoch():
  targets = np.arange(10)
  batches = image_pipeline.shuffled_batches(np.zeros((10, 1)), targets, 4, seed=3)
  seen = np.concatenate([next(batches)['targets'] for _ in range(5)])  # two epochs
  np.testing.assert_array_equal(np.sort(seen[:10]), targets)
  np.testing.assert_array_equal(np.sort(seen[10:]), targets)
  again = image_pipeline.shuffled_batches(np.zeros((10, 1)), targets, 4, seed=3)
  np.testing.assert_array_equal(np.concatenate([next(again)['targets'] for _ in range(5)]),
                                seen)


# -- Loss ----------------------------------------------------------------------------------------


def test_softmax_cross_entropy_with_smoothing_and_mask():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 2])
  mask = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
  smoothing = 0.1
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.full((4, 3), smoothing / 3)
  targets[np.arange(4), labels] += 1 - smoothing
  expected = -(targets * log_probs).sum(-1) * mask
  loss = softmax_cross_entropy(jnp.asarray(labels), jnp.asarray(logits), jnp.asarray(mask),
                               smoothing)
  np.testing.assert_allclose(loss['per_example'], expected, rtol=1e-5)
  np.testing.assert_allclose(loss['summed'], expected.sum(), rtol=1e-5)
  assert float(loss['n_valid_examples']) == 3.0
  soft = softmax_cross_entropy(jax.nn.one_hot(labels, 3), jnp.asarray(logits))
  hard = softmax_cross_entropy(jnp.asarray(labels), jnp.asarray(logits))
  np.testing.assert_allclose(soft['per_example'], hard['per_example'], rtol=1e-6)
  assert float(hard['n_valid_examples']) == 4.0


# -- Both workloads on the digits ----------------------------------------------------------------


def test_train_queue_is_deterministic_given_the_seed(tiny):
  workload, _, _ = tiny

  def first_targets(seed):
    queue = workload.build_input_queue(jax.random.PRNGKey(seed), 'train', None, 32)
    return np.concatenate([next(queue)['targets'] for _ in range(3)])

  np.testing.assert_array_equal(first_targets(1), first_targets(1))
  assert not np.array_equal(first_targets(1), first_targets(2))
  batch = next(workload.build_input_queue(jax.random.PRNGKey(1), 'train', None, 32))
  assert batch['inputs'].shape == (32, 32, 32, 3) and batch['inputs'].dtype == np.float32
  assert batch['targets'].dtype == np.int32 and batch['weights'].dtype == np.float32
  assert batch['weights'].all()


def test_eval_queue_covers_the_split_once_with_a_padded_final_batch(tiny, digits):
  workload, _, _ = tiny
  batches = list(workload.build_input_queue(jax.random.PRNGKey(0), 'validation', None, 64))
  assert [b['targets'].shape[0] for b in batches] == [64, 64, 64]
  assert [int(b['weights'].sum()) for b in batches] == [64, 64, 52]
  np.testing.assert_array_equal(batches[-1]['weights'][52:], 0)
  labels = np.concatenate([b['targets'][b['weights'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, digits['validation'][1])
  repeated = workload.build_input_queue(jax.random.PRNGKey(0), 'validation', None, 64,
                                        repeat_final_dataset=True, num_batches=5)
  assert len(list(repeated)) == 5


def test_eval_with_padding_equals_a_direct_computation(tiny, digits):
  workload, params, model_state = tiny
  metrics = workload._eval_model_on_split('validation', 180, 64, params, model_state,
                                          jax.random.PRNGKey(0), None)
  images, labels = digits['validation']
  logits, _ = jax.jit(lambda p, s, x: workload.model_fn(
      p, {'inputs': x}, s, api_types.ForwardPassMode.EVAL, None, update_batch_norm=False))(
          params, model_state, images)
  log_probs = jax.nn.log_softmax(logits)
  expected_loss = -np.mean(np.take_along_axis(np.asarray(log_probs), labels[:, None], 1))
  expected_accuracy = np.mean(np.argmax(logits, -1) == labels)
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-4)
  np.testing.assert_allclose(metrics['accuracy'], expected_accuracy)
  results = workload.eval_model(64, params, model_state, jax.random.PRNGKey(0), None)
  assert set(results) == {f'{s}/{m}' for s in ('train', 'validation', 'test')
                          for m in ('loss', 'accuracy')} | {'validation/num_examples',
                                                            'test/num_examples'}


def test_config_and_data_source_must_agree(tiny, tmp_path):
  workload, _, _ = tiny
  with pytest.raises(errors.BenchmarkError, match='embedded'):
    get_workload(workload.workload_name, 'tiny', data_dir=str(tmp_path), data_source='tfds')
  with pytest.raises(errors.BenchmarkError, match='tfds'):
    get_workload(workload.workload_name, 'full', data_source='embedded')


def test_every_abstract_member_is_implemented_and_registered(tiny):
  workload, params, _ = tiny
  assert not type(workload).__abstractmethods__
  assert workloads.split_variant(f'{workload.workload_name}_tiny') == (
      workload.workload_name, 'tiny')
  assert workloads.workload_class(workload.workload_name) is type(workload)
  assert jax.tree.structure(workload.param_shapes) == jax.tree.structure(params)
  assert jax.tree.structure(workload.model_params_types) == jax.tree.structure(params)
  assert workload.eval_period_steps > 0
  assert workload.num_eval_train_examples == 192  # 180 rounded up to batches of 64


def sgd_training(workload, params, model_state, num_steps, learning_rate, seed=0):
  """Nesterov SGD on the mean loss with a jitted step; yields (step, params, model_state,
  loss) after every step."""
  optimizer = optax.sgd(learning_rate, momentum=0.9, nesterov=True)

  @jax.jit
  def step(params, model_state, opt_state, batch, rng):
    def mean_loss(p):
      logits, new_state = workload.model_fn(p, batch, model_state, api_types.ForwardPassMode.TRAIN,
                                            rng, update_batch_norm=True)
      loss = workload.loss_fn(batch['targets'], logits, batch['weights'])
      return loss['summed'] / loss['n_valid_examples'], new_state

    (loss, new_state), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  opt_state = optimizer.init(params)
  queue = workload.build_input_queue(jax.random.PRNGKey(seed), 'train', None,
                                     workload.train_batch_size)
  for index in range(num_steps):
    params, model_state, opt_state, loss = step(params, model_state, opt_state, next(queue),
                                                jax.random.PRNGKey(index))
    yield index + 1, params, model_state, float(loss)


def test_a_few_sgd_steps_reduce_the_training_loss(tiny):
  workload, params, model_state = tiny
  losses = [loss for _, _, _, loss in sgd_training(workload, params, model_state, 30, 0.05)]
  assert np.mean(losses[-5:]) < np.mean(losses[:5])


@pytest.mark.slow
@pytest.mark.parametrize('name', WORKLOADS)
def test_small_config_reaches_its_validation_target_with_nesterov(name):
  workload = get_workload(name, 'small')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  for step, params, model_state, _ in sgd_training(workload, params, model_state,
                                                   workload.step_hint, 0.05):
    if step % workload.eval_period_steps == 0:
      metrics = workload.eval_model(workload.eval_batch_size, params, model_state,
                                    jax.random.PRNGKey(0), None)
      if workload.has_reached_validation_target(metrics):
        return
  pytest.fail(f'{name} small did not reach {workload.validation_target_value} in '
              f'{workload.step_hint} steps')


def test_embedded_path_does_not_import_tensorflow():
  code = ('import sys, jax\n'
          'from workloads import get_workload\n'
          'for name in ("imagenet_vit", "cifar"):\n'
          '  workload = get_workload(name, "tiny")\n'
          '  next(workload.build_input_queue(jax.random.PRNGKey(0), "train", None, 8))\n'
          '  list(workload.build_input_queue(jax.random.PRNGKey(0), "test", None, 64))\n'
          'print("tensorflow" in sys.modules, "tensorflow_datasets" in sys.modules)\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
                          text=True, check=True)
  assert result.stdout.split() == ['False', 'False']
