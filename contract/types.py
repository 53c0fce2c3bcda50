"""The AlgoPerf API types: the aliases and enums that workloads and submissions share.

Names and values follow MLCommons AlgoPerf's `algoperf/spec.py`, so that code written against
either side reads the same.
"""

from __future__ import annotations

import enum
from typing import Any, Dict

import jax

ParameterContainer = Any  # A pytree of arrays (Flax params dict).
ModelAuxiliaryState = Any  # e.g. BatchNorm statistics; `None` where a model has none.
OptimizerState = Any
Hyperparameters = Any  # A namedtuple / attribute object: `hyperparameters.learning_rate`.
RandomState = jax.Array
Batch = Dict[str, Any]  # {'inputs': ..., 'targets': ..., 'weights': ...}
Timing = float
Steps = int


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
