"""The Workload base class: a model, its data, its loss and its targets, behind the AlgoPerf API.

Members and argument orders follow MLCommons AlgoPerf (`algoperf/spec.py`); see docs/contract.md.
Additions of ours, all optional for AlgoPerf code: `config_name` ('full', 'small', 'tiny'),
`variant_name`, `eval_period_steps` (small configs evaluate on a step period, for determinism),
`build_embedded_data` (the workload's CPU-sized default data; default: none), `describe`.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import jax

from contract.errors import BenchmarkError
from contract.types import (Batch, ForwardPassMode, LossType, ModelAuxiliaryState,
                            ParameterContainer, ParameterShapeTree, ParameterTypeTree,
                            RandomState, Tensor)


class Workload(metaclass=abc.ABCMeta):
  """A model, its data, its loss and its targets, behind the AlgoPerf Workload API.

  Subclasses set `workload_name` and implement the abstract members. The constructor takes the
  config name (`full` for the AlgoPerf/paper size on real tensorflow-datasets data, `small` for a
  CPU-sized model on the embedded default data) and the data source.

  Args:
    config_name: one of `self.config_names`.
    data_dir: the tensorflow-datasets directory; required when `data_source == 'tfds'`.
    data_source: `'embedded'` (default data shipped with installed packages, no download) or
      `'tfds'` (the real data set).
  """

  workload_name: str = ''
  config_names: Tuple[str, ...] = ('full', 'small', 'tiny')

  def __init__(self, config_name: str = 'small', data_dir: Optional[str] = None,
               data_source: Optional[str] = None) -> None:
    if config_name not in self.config_names:
      raise BenchmarkError(
          f'unknown config {config_name!r} for workload {self.workload_name!r}; '
          f'choose one of {", ".join(self.config_names)}')
    self.config_name = config_name
    self.data_dir = data_dir
    self.data_source = data_source or self.default_data_source(config_name)
    if self.data_source not in ('embedded', 'tfds'):
      raise BenchmarkError(
          f'unknown data source {self.data_source!r}; choose "embedded" or "tfds"')
    self._param_shapes: Optional[ParameterShapeTree] = None
    self._param_types: Optional[ParameterTypeTree] = None
    self._eval_iters: Dict[str, Any] = {}
    self.metrics_logger: Any = None

  def attach_metrics_logger(self, metrics_logger: Any) -> None:
    """Keeps the runner's metrics logger (AlgoPerf); our runner attaches none."""
    self.metrics_logger = metrics_logger

  @staticmethod
  def build_embedded_data(data_root: Optional[str] = None) -> Optional[str]:
    """Builds the workload's embedded (CPU-sized, no download) data set; returns its path.

    The default builds nothing and returns None: the workload has no embedded data.
    """
    del data_root
    return None

  def check_data_available(self) -> None:
    """Raises BenchmarkError, naming the problem, when the data source cannot be read.

    Called by the runner before training (not by the constructor, so that `describe` works
    without data). Subclasses extend it (e.g. the data set's folder inside `data_dir`).
    """
    if self.data_source == 'tfds':
      if not self.data_dir:
        raise BenchmarkError(
            f'workload {self.workload_name!r} with data source "tfds" needs --data_dir')
      if not os.path.isdir(self.data_dir):
        raise BenchmarkError(f'data directory {self.data_dir!r} does not exist')

  # Identity ----------------------------------------------------------------------------------

  @staticmethod
  def default_data_source(config_name: str) -> str:
    """`full` reads the real data set; smaller configs read the embedded default."""
    return 'tfds' if config_name == 'full' else 'embedded'

  @property
  def variant_name(self) -> str:
    """`ogbg` for the full config, `ogbg_small`, `ogbg_tiny` etc. otherwise (`<base>_<config>`)."""
    if self.config_name == 'full':
      return self.workload_name
    return f'{self.workload_name}_{self.config_name}'

  # Targets and budgets ------------------------------------------------------------------------

  @property
  @abc.abstractmethod
  def target_metric_name(self) -> str:
    """The validation metric compared with the target, e.g. `mean_average_precision`."""

  def _beats(self, value: float, target: float) -> bool:
    """Strictly better than the target (`>` or `<`), as upstream's workloads compare."""
    return value > target if self.target_metric_higher_is_better else value < target

  def has_reached_validation_target(self, eval_result: Dict[str, float]) -> bool:
    return self._beats(eval_result[f'validation/{self.target_metric_name}'],
                       self.validation_target_value)

  def has_reached_test_target(self, eval_result: Dict[str, float]) -> bool:
    """Strictly beyond the test target; True for a workload without a test split (no goal)."""
    if not self.num_test_examples:
      return True
    return self._beats(eval_result[f'test/{self.target_metric_name}'], self.test_target_value)

  @property
  def target_metric_higher_is_better(self) -> bool:
    return True

  @property
  @abc.abstractmethod
  def validation_target_value(self) -> float:
    ...

  @property
  @abc.abstractmethod
  def test_target_value(self) -> float:
    ...

  @property
  @abc.abstractmethod
  def loss_type(self) -> LossType:
    ...

  @property
  @abc.abstractmethod
  def num_train_examples(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def num_eval_train_examples(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def num_validation_examples(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def num_test_examples(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def eval_batch_size(self) -> int:
    ...

  @classmethod
  @abc.abstractmethod
  def batch_size_of_config(cls, config_name: str) -> int:
    """The training batch size of a config (what submissions' `get_batch_size` return)."""

  @property
  def train_batch_size(self) -> int:
    return self.batch_size_of_config(self.config_name)

  @property
  @abc.abstractmethod
  def max_allowed_runtime_sec(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def eval_period_time_sec(self) -> int:
    ...

  @property
  def eval_period_steps(self) -> Optional[int]:
    """Evaluate every this many steps (small configs, whose runs must be deterministic);
    `None`: evaluate every `eval_period_time_sec` of wall-clock, as AlgoPerf does."""
    return None

  @property
  @abc.abstractmethod
  def step_hint(self) -> int:
    """The step budget submissions may plan schedules with (AlgoPerf's `step_hint`)."""

  # Parameters ---------------------------------------------------------------------------------

  @property
  def param_shapes(self) -> ParameterShapeTree:
    """The params tree with a `contract.types.ShapeTuple` per array (`.shape_tuple`)."""
    if self._param_shapes is None:
      raise ValueError('call init_model_fn before reading param_shapes')
    return self._param_shapes

  @property
  def model_params_types(self) -> ParameterTypeTree:
    if self._param_types is None:
      raise ValueError('call init_model_fn before reading model_params_types')
    return self._param_types

  @abc.abstractmethod
  def is_output_params(self, param_key: Tuple[str, ...]) -> bool:
    """Whether a parameter path belongs to the last (output) layer."""

  # Model, loss, data ------------------------------------------------------------------------

  @abc.abstractmethod
  def init_model_fn(self, rng: RandomState, dropout_rate: Optional[float] = None
                    ) -> Tuple[ParameterContainer, ModelAuxiliaryState]:
    """Returns `(params, model_state)` and sets `param_shapes` / `model_params_types`."""

  @abc.abstractmethod
  def model_fn(self, params: ParameterContainer, augmented_and_preprocessed_input_batch: Batch,
               model_state: ModelAuxiliaryState, mode: ForwardPassMode, rng: RandomState,
               update_batch_norm: bool, dropout_rate: Optional[float] = None
               ) -> Tuple[jax.Array, ModelAuxiliaryState]:
    """Returns `(logits, new_model_state)`."""

  @abc.abstractmethod
  def loss_fn(self, label_batch: jax.Array, logits_batch: jax.Array,
              mask_batch: Optional[jax.Array] = None,
              label_smoothing: float = 0.0) -> Dict[str, jax.Array]:
    """Returns `{'summed', 'n_valid_examples', 'per_example'}`."""

  @abc.abstractmethod
  def _build_input_queue(self, data_rng: RandomState, split: str, data_dir: Optional[str],
                         global_batch_size: int, cache: Optional[bool] = None,
                         repeat_final_dataset: Optional[bool] = None,
                         num_batches: Optional[int] = None) -> Iterator[Batch]:
    ...

  def build_input_queue(self, data_rng: RandomState, split: str, data_dir: Optional[str],
                        global_batch_size: int, cache: Optional[bool] = None,
                        repeat_final_dataset: Optional[bool] = None,
                        num_batches: Optional[int] = None) -> Iterator[Batch]:
    return self._build_input_queue(data_rng, split, data_dir, global_batch_size, cache,
                                   repeat_final_dataset, num_batches)

  @abc.abstractmethod
  def _eval_model_on_split(self, split: str, num_examples: int, global_batch_size: int,
                           params: ParameterContainer, model_state: ModelAuxiliaryState,
                           rng: RandomState, data_dir: Optional[str],
                           global_step: int = 0) -> Dict[str, float]:
    """Metrics (unprefixed: `{'loss': ..., 'mean_average_precision': ...}`) on one split."""

  def eval_model(self, global_batch_size: int, params: ParameterContainer,
                 model_state: ModelAuxiliaryState, rng: RandomState, data_dir: Optional[str],
                 imagenet_v2_data_dir: Optional[str] = None,
                 global_step: int = 0) -> Dict[str, float]:
    """Evaluates on train (a subset of `num_eval_train_examples`), validation and test.

    Returns a flat dict `{'train/loss': ..., 'validation/<metric>': ...,
    'validation/num_examples': ..., 'test/<metric>': ..., 'test/num_examples': ...}` (AlgoPerf's
    keys; a split with no examples is left out).
    """
    del imagenet_v2_data_dir
    results: Dict[str, float] = {}
    for split, num_examples in (('train', self.num_eval_train_examples),
                                ('validation', self.num_validation_examples),
                                ('test', self.num_test_examples)):
      if not num_examples:
        continue
      split_metrics = self._eval_model_on_split(split, num_examples, global_batch_size, params,
                                                model_state, rng, data_dir, global_step)
      results.update({f'{split}/{k}': float(v) for k, v in split_metrics.items()})
      if split != 'train':
        results[f'{split}/num_examples'] = num_examples
    return results

  def output_activation_fn(self, logits_batch: Tensor, framework: str = 'jax') -> Tensor:
    """Logits to probabilities by the loss type (identity for regression losses)."""
    if framework != 'jax':
      raise ValueError(f'this project is JAX only, got framework {framework!r}')
    activations = {LossType.SOFTMAX_CROSS_ENTROPY: jax.nn.softmax,
                   LossType.CTC_LOSS: jax.nn.softmax,
                   LossType.SIGMOID_CROSS_ENTROPY: jax.nn.sigmoid}
    return activations.get(self.loss_type, lambda z: z)(logits_batch)

  def describe(self) -> Dict[str, Any]:
    """Facts a user checks before a run (`kfac-bench describe`)."""
    params, _ = jax.eval_shape(lambda rng: self.init_model_fn(rng), jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves(params)
    return {
        'workload': self.workload_name,
        'config': self.config_name,
        'num_params': int(sum(x.size for x in leaves)),
        'num_param_arrays': len(leaves),
        'target_metric_name': self.target_metric_name,
        'validation_target_value': self.validation_target_value,
        'test_target_value': self.test_target_value,
        'step_hint': self.step_hint,
        'batch_size': self.train_batch_size,
        'eval_batch_size': self.eval_batch_size,
        'max_allowed_runtime_sec': self.max_allowed_runtime_sec,
        'eval_period_time_sec': self.eval_period_time_sec,
        'eval_period_steps': self.eval_period_steps,
        'data_source': self.data_source,
        'data_dir': self.data_dir,
        'num_train_examples': self.num_train_examples,
        'num_validation_examples': self.num_validation_examples,
        'num_test_examples': self.num_test_examples,
    }
