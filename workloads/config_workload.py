"""The base of every workload here: targets, budgets and batch sizes read from a config.

Each workload names its configs in its `configs.py` (`get_config(name)` returns an
`ml_collections.ConfigDict`); the Workload members that only read a config field live here once.
"""

from __future__ import annotations

import abc
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from contract import types as api_types
from contract.workload import Workload


def seed_from_rng(rng: api_types.RandomState) -> int:
  """A non-negative 31-bit integer seed drawn deterministically from a JAX key (raw or typed).

  Host-side numpy only (no device computation): the input pipelines seed their shuffles with it.
  """
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  words = np.asarray(rng, dtype=np.uint32).reshape(-1)
  return int(np.random.default_rng(words.tolist()).integers(0, 2**31 - 1))


class ConfigWorkload(Workload):
  """A Workload whose targets, budgets and batch sizes are fields of its config.

  Config fields read here: `batch_size`, `eval_batch_size`, `validation_target_value`,
  `test_target_value`, `step_hint`, `max_allowed_runtime_sec`, `eval_period_time_sec`,
  `eval_period_steps` (None: time-based evaluation only) and, optionally, `data_source` (the
  config's default data source).
  """

  def __init__(self, config_name: str = 'small', data_dir: Optional[str] = None,
               data_source: Optional[str] = None) -> None:
    super().__init__(config_name=config_name, data_dir=data_dir, data_source=data_source)
    self.config = self.get_config(config_name)

  @staticmethod
  @abc.abstractmethod
  def get_config(config_name: str) -> ml_collections.ConfigDict:
    """The config of a config name (the workload's `configs.get_config`)."""

  @classmethod
  def default_data_source(cls, config_name: str) -> str:
    """The config's `data_source` field where it has one, else the base class's rule."""
    if config_name in cls.config_names:
      data_source = cls.get_config(config_name).get('data_source')
      if data_source is not None:
        return data_source
    return super().default_data_source(config_name)

  def _set_param_records(self, params: api_types.ParameterContainer, param_types: Any) -> None:
    """Records `param_shapes` (a `ShapeTuple` per array, as upstream) and `model_params_types`."""
    self._param_shapes = api_types.param_shapes_of(params)
    self._param_types = param_types

  @classmethod
  def batch_size_of_config(cls, config_name: str) -> int:
    return cls.get_config(config_name).batch_size

  @property
  def validation_target_value(self) -> float:
    return self.config.validation_target_value

  @property
  def test_target_value(self) -> float:
    return self.config.test_target_value

  @property
  def eval_batch_size(self) -> int:
    return self.config.eval_batch_size

  @property
  def max_allowed_runtime_sec(self) -> int:
    return self.config.max_allowed_runtime_sec

  @property
  def eval_period_time_sec(self) -> int:
    return self.config.eval_period_time_sec

  @property
  def eval_period_steps(self) -> Optional[int]:
    return self.config.eval_period_steps

  @property
  def step_hint(self) -> int:
    return self.config.step_hint
