"""A tiny regression workload for runner tests: its evaluation metric is a known function of the
step on every split, and its evaluation can be made slow, so runner semantics are checked
independently of any training."""

from __future__ import annotations

import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from contract import types as api_types
from contract.workload import Workload
from workloads.config_workload import seed_from_rng

class FakeWorkload(Workload):
  """`<split>/score = global_step / 100` on every split; `<split>/loss` is the real loss.

  The validation target is `target`, the test target `test_target` (default: `target`);
  `num_test_examples=0` leaves the test split out (then there is no test goal).
  """

  workload_name = 'fake'
  config_names = ('small',)

  def __init__(self, eval_sleep_sec: float = 0.0, target: float = 0.25, eval_period_steps=10,
               nan_after_step: Optional[int] = None, test_target: Optional[float] = None,
               num_test_examples: int = 256, eval_period_time_sec: float = 3600,
               max_allowed_runtime_sec: float = 600, **kwargs) -> None:
    super().__init__(config_name='small', **kwargs)
    self.eval_sleep_sec = eval_sleep_sec
    self.target = target
    self.test_target = target if test_target is None else test_target
    self.num_test_examples = num_test_examples
    self.eval_period_time_sec = eval_period_time_sec
    self.max_allowed_runtime_sec = max_allowed_runtime_sec
    self._eval_period_steps = eval_period_steps
    self.nan_after_step = nan_after_step
    self.model = nn.Dense(1)
    rng = np.random.RandomState(0)
    self.x = rng.randn(256, 4).astype(np.float32)
    self.y = (self.x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))[:, None]

  target_metric_name = 'score'
  validation_target_value = property(lambda self: self.target)
  test_target_value = property(lambda self: self.test_target)
  loss_type = api_types.LossType.MEAN_SQUARED_ERROR
  num_train_examples = 256
  num_eval_train_examples = 256
  num_validation_examples = 256
  eval_batch_size = 256
  step_hint = 200
  num_test_examples = 256  # Class defaults of the abstract properties; __init__ sets them.
  eval_period_time_sec = 3600
  max_allowed_runtime_sec = 600

  @property
  def eval_period_steps(self):
    return self._eval_period_steps

  @classmethod
  def batch_size_of_config(cls, config_name: str) -> int:
    return 32

  def is_output_params(self, param_key) -> bool:
    return True

  def init_model_fn(self, rng, dropout_rate=None):
    params = self.model.init(rng, jnp.zeros((1, 4)))
    self._param_shapes = api_types.param_shapes_of(params)
    self._param_types = jax.tree_util.tree_map(lambda x: api_types.ParameterType.WEIGHT, params)
    return params, None

  def model_fn(self, params, batch, model_state, mode, rng, update_batch_norm, dropout_rate=None):
    return self.model.apply(params, batch['inputs']), model_state

  def loss_fn(self, label_batch, logits_batch, mask_batch=None, label_smoothing=0.0):
    per_example = 0.5 * jnp.sum((logits_batch - label_batch) ** 2, axis=-1)
    if self.nan_after_step is not None and self._step >= self.nan_after_step:
      per_example = per_example * jnp.nan
    return {'summed': per_example.sum(), 'n_valid_examples': per_example.shape[0],
            'per_example': per_example}

  _step = 0

  def _build_input_queue(self, data_rng, split, data_dir, global_batch_size, cache=None,
                         repeat_final_dataset=None, num_batches=None):
    rng = np.random.RandomState(seed_from_rng(data_rng))
    while True:
      idx = rng.randint(0, len(self.x), global_batch_size)
      self._step += 1
      yield {'inputs': self.x[idx], 'targets': self.y[idx], 'weights': np.ones(len(idx))}

  def _eval_model_on_split(self, split, num_examples, global_batch_size, params, model_state, rng,
                           data_dir, global_step=0):
    time.sleep(self.eval_sleep_sec)
    logits, _ = self.model_fn(params, {'inputs': self.x}, None, api_types.ForwardPassMode.EVAL, rng,
                              False)
    loss = float(self.loss_fn(self.y, logits)['summed']) / len(self.x)
    return {'loss': loss, 'score': global_step / 100.0}
