"""The example axis of a layer call, found by tracing the model with one more example.

Tracing `apply_fn` (shapes only) a second time with `EXTRA_EXAMPLES` more examples on the first
axis of every input leaf, the one axis of a layer's input (and of its output) whose size changes
is the layer's example axis, whatever its position: a time-major `[R, N, D]` layer is grouped by
its second axis even when `R == N` (a size comparison would take the first). A call with no such
axis, several, or one whose size is not N (examples merged with positions, `[N * R, D]`) has no
example axis, and K-FAC does not cover it.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import numpy as np

# Examples added to the inputs for the second (shape-only) trace that finds the example axes.
EXTRA_EXAMPLES = 1


def grown_inputs(inputs: Any) -> Any:
  """Shapes of `inputs` with `EXTRA_EXAMPLES` more examples on every leaf's first axis."""
  def grow(leaf):
    shape = tuple(np.shape(leaf))
    grown = (shape[0] + EXTRA_EXAMPLES,) + shape[1:] if shape else shape
    return jax.ShapeDtypeStruct(grown, jax.numpy.result_type(leaf))
  return jax.tree_util.tree_map(grow, inputs)


def _changed_axis(shape: Tuple[int, ...], grown: Tuple[int, ...], num_examples: int
                  ) -> Tuple[Optional[int], Optional[str]]:
  """`(axis, None)`: the one axis that grew with the examples, of size N; or `(None, reason)`."""
  if len(shape) != len(grown):
    return None, 'its rank depends on the number of examples'
  axes = [ax for ax, (size, other) in enumerate(zip(shape, grown)) if size != other]
  if len(axes) != 1:
    return None, (f'{len(axes)} axes of its shape {shape} change with the number of examples, '
                  'so it has no single example axis')
  if shape[axes[0]] != num_examples:
    return None, (f'the axis of size {shape[axes[0]]} that grows with the examples is not the '
                  f'example axis (N={num_examples}): examples merged with other axes')
  return axes[0], None


def example_axes(call: Any, grown: Any, num_examples: int
                 ) -> Tuple[Optional[int], Optional[int], Optional[str]]:
  """`(input example axis, output example axis, None)` of a traced layer call, from the same
  call traced with more examples (`grown`); or `(None, None, reason)`."""
  axis, reason = _changed_axis(call.input_shape, grown.input_shape, num_examples)
  output_axis, output_reason = _changed_axis(call.output_shape, grown.output_shape, num_examples)
  reason = reason or output_reason
  if reason is None and axis in call.contracted_axes:
    reason = 'the kernel contracts the example axis'
  if reason is None and call.conv is not None and axis >= len(call.input_shape) - len(
      call.conv.kernel_size) - 1:
    reason = 'the example axis of a convolution is a spatial or channel axis'
  if reason is not None:
    return None, None, f'input {call.input_shape}: {reason}'
  return axis, output_axis, None
