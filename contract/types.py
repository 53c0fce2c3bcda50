"""The AlgoPerf API types: the aliases, enums and shape records that workloads and submissions
share.

Names and values follow MLCommons AlgoPerf's `algoperf/spec.py` (every public name there has a
twin here or in `contract.errors`, `contract.workload`, `contract.submission`), so that code
written against either side reads the same. Upstream's PyTorch members are left out: this
project is JAX only.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import jax

Tensor = Any  # A jax.Array or numpy array: it knows its own shape and dtype.
ParameterKey = str
ParameterContainer = Any  # A pytree of arrays (a Flax params dict).
ModelAuxiliaryState = Any  # e.g. BatchNorm statistics; `None` where a model has none.
ModelInitState = Tuple[ParameterContainer, ModelAuxiliaryState]
OptimizerState = Any
Hyperparameters = Any  # A namedtuple: `hyperparameters.learning_rate`; None under self-tuning.
RandomState = jax.Array
Batch = Dict[str, Any]  # {'inputs': ..., 'targets': ..., 'weights': ...}
Timing = float  # Upstream annotates `int`; every time the runner books is a float of seconds.
Steps = int
EvalResults = List[Tuple[int, Dict[str, float]]]  # [(global_step, metrics)], oldest first.
UpdateReturn = Tuple[OptimizerState, ParameterContainer, ModelAuxiliaryState]


class ShapeTuple:
  """A parameter's shape as one pytree leaf (`.shape_tuple`), as upstream's `param_shapes` hold.

  A plain tuple would be a pytree node, so `jax.tree.map(f, workload.param_shapes)` would visit
  its ints; a ShapeTuple is a leaf, so `f` receives whole shapes.
  """

  def __init__(self, shape_tuple: Tuple[int, ...]) -> None:
    self.shape_tuple = tuple(shape_tuple)

  def __repr__(self) -> str:
    return f'ShapeTuple({self.shape_tuple})'

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, ShapeTuple) and self.shape_tuple == other.shape_tuple

  def __hash__(self) -> int:
    return hash(self.shape_tuple)


Shape = Union[Tuple[int, ...], ShapeTuple]
ParameterShapeTree = Dict[ParameterKey, Any]  # Nested dicts with ShapeTuple leaves.


def param_shapes_of(params: ParameterContainer) -> ParameterShapeTree:
  """The `param_shapes` tree of `params`: the same structure with a ShapeTuple per array."""
  return jax.tree_util.tree_map(lambda x: ShapeTuple(x.shape), params)


class LossType(enum.Enum):
  SOFTMAX_CROSS_ENTROPY = 0
  SIGMOID_CROSS_ENTROPY = 1
  MEAN_SQUARED_ERROR = 2
  CTC_LOSS = 3
  MEAN_ABSOLUTE_ERROR = 4


class ForwardPassMode(enum.Enum):
  TRAIN = 0
  EVAL = 1


class ParameterType(enum.Enum):
  WEIGHT = 0
  BIAS = 1
  CONV_WEIGHT = 2
  BATCH_NORM_SCALE = 3
  BATCH_NORM_BIAS = 4
  LAYER_NORM_SCALE = 5
  LAYER_NORM_BIAS = 6
  EMBEDDING = 7
  ATTENTION_Q = 8
  ATTENTION_K = 9
  ATTENTION_V = 10
  ATTENTION_OUT = 11
  ATTENTION_QKV = 12
  ATTENTION_KV = 13
  ATTENTION_BIAS = 14


ParameterTypeTree = Dict[ParameterKey, Any]  # Nested dicts with ParameterType leaves.

# The submission functions' signatures (the workload argument is typed `Any` here so that this
# module does not import `contract.workload`; upstream writes `Workload`).
InitOptimizerFn = Callable[[Any, ParameterContainer, ModelAuxiliaryState, Hyperparameters,
                            RandomState], OptimizerState]
UpdateParamsFn = Callable[[Any, ParameterContainer, ParameterTypeTree, ModelAuxiliaryState,
                           Hyperparameters, Batch, LossType, OptimizerState, EvalResults, int,
                           RandomState, Optional[Dict[str, Any]]], UpdateReturn]
PrepareForEvalFn = Callable[[Any, ParameterContainer, ParameterTypeTree, ModelAuxiliaryState,
                             Hyperparameters, LossType, OptimizerState, EvalResults, int,
                             RandomState], UpdateReturn]
DataSelectionFn = Callable[[Any, Iterator[Batch], OptimizerState, ParameterContainer,
                            ModelAuxiliaryState, Hyperparameters, int, RandomState], Batch]
GetBatchSizeFn = Callable[[str], int]
StepPhaseFn = Callable[[int, Hyperparameters], str]
