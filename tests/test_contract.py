"""The contract against upstream AlgoPerf's API (mlcommons/algorithmic-efficiency 2c90454,
`algoperf/spec.py`, `algoperf/jax_sharding_utils.py`): names, enum values, members, and the
behaviour of the defaults, ShapeTuple, shardings and targets."""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from contract import sharding, spec, submission
from contract.types import ShapeTuple, param_shapes_of
from contract.workload import Workload
from tests.fake_workload import FakeWorkload

# Every public name of upstream's algoperf/spec.py (read from the file at 2c90454).
UPSTREAM_SPEC_NAMES = (
    'LossType', 'ForwardPassMode', 'ParameterType', 'Tensor', 'ShapeTuple', 'Shape',
    'ParameterShapeTree', 'ParameterKey', 'ParameterContainer', 'ParameterTypeTree',
    'RandomState', 'OptimizerState', 'Hyperparameters', 'Timing', 'Steps',
    'ModelAuxiliaryState', 'ModelInitState', 'Workload', 'TrainingCompleteError',
    'InitOptimizerFn', 'init_optimizer_state', 'UpdateReturn', 'UpdateParamsFn', 'update_params',
    'PrepareForEvalFn', 'prepare_for_eval', 'DataSelectionFn', 'data_selection',
    'get_batch_size')
# Upstream's Workload members a submission or runner may use (PyTorch-only ones left out).
UPSTREAM_WORKLOAD_MEMBERS = (
    'target_metric_name', 'has_reached_validation_target', 'has_reached_test_target',
    '_build_input_queue', 'attach_metrics_logger', 'validation_target_value',
    'test_target_value', 'loss_type', 'num_train_examples', 'eval_batch_size',
    'num_eval_train_examples', 'num_validation_examples', 'num_test_examples',
    'max_allowed_runtime_sec', 'eval_period_time_sec', 'step_hint', 'param_shapes',
    'model_params_types', 'is_output_params', 'init_model_fn', 'model_fn',
    'output_activation_fn', 'loss_fn', '_eval_model_on_split', 'eval_model')
UPSTREAM_JAX_SHARDING_UTILS = ('get_replicate_sharding', 'get_batch_dim_sharding',
                               'shard_along_batch_dim', 'replicate', 'display_shard_info')


def test_every_upstream_name_is_provided():
  assert [n for n in UPSTREAM_SPEC_NAMES if not hasattr(spec, n)] == []
  assert [m for m in UPSTREAM_WORKLOAD_MEMBERS if not hasattr(Workload, m)] == []
  assert [f for f in UPSTREAM_JAX_SHARDING_UTILS if not callable(getattr(sharding, f, None))] == []
  assert FakeWorkload().metrics_logger is None


@pytest.mark.parametrize('enum, values', [
    (spec.LossType, {'SOFTMAX_CROSS_ENTROPY': 0, 'SIGMOID_CROSS_ENTROPY': 1,
                     'MEAN_SQUARED_ERROR': 2, 'CTC_LOSS': 3, 'MEAN_ABSOLUTE_ERROR': 4}),
    (spec.ForwardPassMode, {'TRAIN': 0, 'EVAL': 1}),
    (spec.ParameterType, {'WEIGHT': 0, 'BIAS': 1, 'CONV_WEIGHT': 2, 'BATCH_NORM_SCALE': 3,
                          'BATCH_NORM_BIAS': 4, 'LAYER_NORM_SCALE': 5, 'LAYER_NORM_BIAS': 6,
                          'EMBEDDING': 7, 'ATTENTION_Q': 8, 'ATTENTION_K': 9, 'ATTENTION_V': 10,
                          'ATTENTION_OUT': 11, 'ATTENTION_QKV': 12, 'ATTENTION_KV': 13,
                          'ATTENTION_BIAS': 14}),
])
def test_enum_values_are_upstreams(enum, values):
  assert {m.name: m.value for m in enum} == values


def test_shape_tuple_is_one_leaf():
  params = {'dense': {'kernel': jnp.zeros((4, 3)), 'bias': jnp.zeros((3,))}}
  shapes = param_shapes_of(params)
  assert shapes == {'dense': {'kernel': ShapeTuple((4, 3)), 'bias': ShapeTuple((3,))}}
  assert len(jax.tree_util.tree_leaves(shapes)) == 2  # a tuple would give 3 int leaves
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape_tuple), shapes)
  assert zeros['dense']['kernel'].shape == (4, 3)


def test_bind_fills_optional_functions_and_leaves_the_module_alone():
  module = types.ModuleType('minimal')
  for name in submission.REQUIRED_FUNCTIONS:
    setattr(module, name, lambda *args, **kwargs: None)
  bound = submission.bind(module, 'minimal')
  assert not hasattr(module, 'prepare_for_eval') and not hasattr(module, 'step_phase')
  assert bound.step_phase(7, None) == 'step' and bound.get_eval_batch_size is None
  state, params, model_state = bound.prepare_for_eval(None, 'p', None, 'm', None, None, 's', [],
                                                      0, None)
  assert (state, params, model_state) == ('s', 'p', 'm')
  assert not bound.update_params_takes_train_state  # (*args, **kwargs) names no train_state
  del module.update_params
  assert submission.missing_functions(module) == ['update_params']
  with pytest.raises(ValueError, match='update_params'):
    submission.bind(module, 'minimal')


def test_shardings_over_all_devices():
  devices = jax.devices()
  assert sharding.get_replicate_sharding().spec == PartitionSpec()
  assert sharding.get_batch_dim_sharding().spec == PartitionSpec('batch')
  batch = {'inputs': np.arange(2 * len(devices) * 3, dtype=np.float32).reshape(-1, 3)}
  sharded = sharding.shard_along_batch_dim(batch)['inputs']
  assert len(sharded.addressable_shards) == len(devices)
  assert sharded.addressable_shards[0].data.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(sharded), batch['inputs'])
  replicated = sharding.replicate({'w': np.ones(5)})['w']
  assert all(s.data.shape == (5,) for s in replicated.addressable_shards)


def test_targets_are_strict_and_a_missing_test_split_has_no_goal():
  workload = FakeWorkload(target=0.3, test_target=0.5)
  assert not workload.has_reached_validation_target({'validation/score': 0.3})
  assert workload.has_reached_validation_target({'validation/score': 0.30001})
  assert not workload.has_reached_test_target({'test/score': 0.5})
  assert FakeWorkload(num_test_examples=0).has_reached_test_target({})


def test_eval_model_reports_upstreams_keys():
  workload = FakeWorkload()
  params, model_state = workload.init_model_fn(jax.random.PRNGKey(0))
  metrics = workload.eval_model(256, params, model_state, jax.random.PRNGKey(1), None, None, 30)
  assert metrics['validation/num_examples'] == 256 and metrics['test/num_examples'] == 256
  assert metrics['validation/score'] == 0.3 and 'train/loss' in metrics
  assert Workload.build_embedded_data() is None  # the default: no embedded data
  probabilities = workload.output_activation_fn(jnp.array([[0.5]]), 'jax')
  np.testing.assert_allclose(probabilities, [[0.5]])  # MSE: identity


def test_shardings_split_the_batch_over_four_devices():
  code = ('import numpy as np\n'
          'from contract import sharding\n'
          'x = sharding.shard_along_batch_dim({"x": np.arange(24.0).reshape(8, 3)})["x"]\n'
          'assert len(x.addressable_shards) == 4\n'
          'assert sorted(s.index[0].start for s in x.addressable_shards) == [0, 2, 4, 6]\n'
          'r = sharding.replicate(np.ones(5))\n'
          'assert [s.data.shape for s in r.addressable_shards] == [(5,)] * 4\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        timeout=120)
  assert done.returncode == 0, done.stderr
