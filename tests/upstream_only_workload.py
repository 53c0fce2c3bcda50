"""A Workload view that exposes only upstream AlgoPerf's Workload members.

`UpstreamOnlyWorkload(workload)` forwards the members of upstream's `algoperf.spec.Workload`
(mlcommons/algorithmic-efficiency, commit 2c90454) to a workload of ours and raises on any other:
a submission that runs against it uses nothing upstream's workloads lack.
"""

from __future__ import annotations

from typing import Any

# Every member of upstream's `spec.Workload`, public and the private ones its runner calls.
UPSTREAM_WORKLOAD_MEMBERS = frozenset({
    'target_metric_name', 'has_reached_validation_target', 'has_reached_test_target',
    '_build_input_queue', 'attach_metrics_logger', 'metrics_logger', 'validation_target_value',
    'test_target_value', 'loss_type', 'num_train_examples', 'eval_batch_size',
    'num_eval_train_examples', 'num_validation_examples', 'num_test_examples', 'train_mean',
    'train_stddev', 'max_allowed_runtime_sec', 'eval_period_time_sec', 'step_hint',
    'param_shapes', 'model_params_types', 'is_output_params', 'init_model_fn', 'model_fn',
    'output_activation_fn', 'loss_fn', '_eval_model_on_split', 'eval_model',
})


class NotAnUpstreamMember(AttributeError):
  """A submission asked a workload for a member upstream's workloads do not have."""


class UpstreamOnlyWorkload:
  """Forwards upstream's Workload members to `workload`; any other member raises."""

  def __init__(self, workload: Any) -> None:
    object.__setattr__(self, '_workload', workload)

  def __getattr__(self, name: str) -> Any:
    if name not in UPSTREAM_WORKLOAD_MEMBERS:
      raise NotAnUpstreamMember(f'{name!r} is not a member of upstream AlgoPerf\'s Workload')
    return getattr(object.__getattribute__(self, '_workload'), name)

  def __setattr__(self, name: str, value: Any) -> None:
    raise NotAnUpstreamMember(f'submissions do not set workload attributes ({name!r})')
