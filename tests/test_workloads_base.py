"""What every workload shares: the registry's names, upstream's `param_shapes` leaves, a dropout
whose rate may be traced, config-backed members, the data seed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workloads
from contract import types as api_types
from workloads.config_workload import seed_from_rng
from workloads.layers import Dropout
from workloads.ogbg_molpcba import configs as ogbg_configs

BASE_NAMES = ('cifar', 'imagenet_vit', 'ogbg')


def test_registry_uses_upstream_base_names_and_config_variants():
  assert tuple(sorted(workloads.WORKLOADS)) == BASE_NAMES
  assert workloads.split_variant('ogbg') == ('ogbg', 'full')
  assert workloads.split_variant('ogbg_small') == ('ogbg', 'small')
  assert workloads.split_variant('imagenet_vit_tiny') == ('imagenet_vit', 'tiny')
  assert workloads.split_variant('cifar_small') == ('cifar', 'small')
  with pytest.raises(workloads.BenchmarkError):
    workloads.split_variant('ogbg_molpcba')  # The old name is gone.
  for name in BASE_NAMES:
    assert workloads.get_workload(name, 'full').variant_name == name
    assert workloads.get_workload(name, 'tiny').variant_name == f'{name}_tiny'


@pytest.mark.parametrize('name', BASE_NAMES)
def test_param_shapes_leaves_are_shape_tuples_of_the_params(name):
  workload = workloads.get_workload(name, 'tiny')
  params, _ = jax.eval_shape(workload.init_model_fn, jax.random.PRNGKey(0))
  shapes = workload.param_shapes
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  for shape, param in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)):
    assert isinstance(shape, api_types.ShapeTuple)
    assert shape.shape_tuple == param.shape
  # What upstream's baselines do with them.
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape_tuple), shapes)
  assert jax.tree.map(jnp.shape, zeros) == jax.tree.map(lambda p: p.shape, params)


def test_dropout_rate_may_be_traced_and_masks_as_inverted_dropout():
  x = jnp.arange(1.0, 1001.0).reshape(10, 100)
  layer = Dropout()
  rng = jax.random.PRNGKey(3)

  @jax.jit
  def dropped(rate):
    return layer.apply({}, x, rate, deterministic=False, rngs={'dropout': rng})

  out = np.asarray(dropped(0.25))
  kept = out != 0
  # Kept units are scaled by 1 / (1 - rate); dropped ones are 0.
  np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.65 < kept.mean() < 0.85
  np.testing.assert_array_equal(np.asarray(dropped(0.0)), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(dropped(1.0)), np.zeros_like(x))
  grad = jax.grad(lambda r: layer.apply({}, x, r, deterministic=False,
                                        rngs={'dropout': rng}).sum())(1.0)
  assert np.isfinite(grad)
  np.testing.assert_array_equal(layer.apply({}, x, 0.5, deterministic=True), x)


@pytest.mark.parametrize('name', BASE_NAMES)
def test_model_fn_accepts_a_traced_dropout_rate(name):
  workload = workloads.get_workload(name, 'tiny')
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  batch = next(workload.build_input_queue(jax.random.PRNGKey(1), 'train', None, 8))

  @jax.jit
  def loss(params, rate):
    logits, _ = workload.model_fn(params, batch, model_state, api_types.ForwardPassMode.TRAIN,
                                  jax.random.PRNGKey(2), update_batch_norm=True,
                                  dropout_rate=rate)
    return workload.loss_fn(batch['targets'], logits, batch.get('weights'))['summed']

  assert np.isfinite(float(loss(params, 0.1)))


@pytest.mark.parametrize('name', BASE_NAMES)
@pytest.mark.parametrize('config_name', ('full', 'small', 'tiny'))
def test_config_backed_members_read_the_config(name, config_name):
  workload = workloads.get_workload(name, config_name)
  config = workload.get_config(config_name)
  assert workload.step_hint == config.step_hint
  assert workload.validation_target_value == config.validation_target_value
  assert workload.test_target_value == config.test_target_value
  assert workload.eval_batch_size == config.eval_batch_size
  assert workload.train_batch_size == config.batch_size
  assert workload.max_allowed_runtime_sec == config.max_allowed_runtime_sec
  assert workload.eval_period_steps == config.eval_period_steps
  assert workload.data_source == ('tfds' if config_name == 'full' else 'embedded')


def test_ogbg_step_hints_are_upstreams_and_the_papers():
  assert workloads.get_workload('ogbg', 'full').step_hint == 52_000  # AlgoPerf v0.6
  assert workloads.get_workload('ogbg', 'full').max_allowed_runtime_sec == 12_011
  paper = workloads.get_workload('ogbg', 'paper')
  assert (paper.step_hint, paper.max_allowed_runtime_sec) == (80_000, 18_477)  # v0.5
  assert paper.data_source == 'tfds' and paper.variant_name == 'ogbg_paper'
  assert ogbg_configs.PAPER_STEP_HINT == 80_000


def test_full_vit_trains_with_randaugment_and_mixup():
  config = workloads.get_workload('imagenet_vit', 'full').config
  assert config.use_mixup and config.mixup_alpha == 0.2
  assert config.tfds.use_randaug
  assert (config.tfds.randaug_num_layers, config.tfds.randaug_magnitude) == (2, 10)


def test_seed_from_rng_accepts_raw_and_typed_keys():
  raw = seed_from_rng(jax.random.PRNGKey(7))
  assert raw == seed_from_rng(jax.random.wrap_key_data(jax.random.PRNGKey(7)))
  assert raw != seed_from_rng(jax.random.PRNGKey(8))
  assert 0 <= raw < 2**31
