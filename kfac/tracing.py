"""Tracing an unmodified Flax model (shapes only) to find and classify the layers K-FAC covers.

`flax.linen.intercept_methods` records every `__call__` of `nn.Dense`, `nn.DenseGeneral` (this
includes the q/k/v/out projections of `nn.MultiHeadDotProductAttention`) and `nn.Conv` during a
`jax.eval_shape` of `apply_fn(params, inputs)`. `layer_report` turns the calls into covered
layers (`LayerInfo`, keyed by module path) and explains every other parameter. A module called
several times contributes every call as extra weight-sharing positions (see `kfac.layers`).

Each layer call's example axis is found by a second trace with one more example
(`kfac.example_axis`), never from a size coincidence; graph inputs (`jraph.GraphsTuple`) have their
examples (graphs) matched by row counts (`kfac.graph_rows`).

`apply_fn` must be an unjitted Flax apply (jit the function that calls K-FAC instead): a jitted
one runs its module calls only when first traced.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jraph
import numpy as np

from kfac import example_axis, graph_rows
from kfac.conv import ConvGeometry, conv_geometry
from kfac.param_paths import LayerPath, ParamPath, leaves_by_param_path

NOT_A_LINEAR_LAYER = 'not a Dense/DenseGeneral/Conv layer'


class LayerCall(NamedTuple):
  """One call of a covered module in a forward pass.

  Attributes:
    input_shape, output_shape: shapes of the module's input and output.
    contracted_axes: input axes contracted with the kernel (Dense: the last one; DenseGeneral:
      its sorted `axis`; Conv: the channel axis).
    rows: what the example (row) axis holds: `'examples'`, or for graph inputs `'nodes'`,
      `'edges'` or `'graphs'`.
    example_axis, output_example_axis: the row axis of the input and of the output.
  """

  input_shape: Tuple[int, ...]
  output_shape: Tuple[int, ...]
  contracted_axes: Tuple[int, ...]
  rows: str
  example_axis: int = 0
  output_example_axis: int = 0

  @property
  def num_rows(self) -> int:
    """T, the size of the row axis."""
    return self.input_shape[self.example_axis]


class LayerInfo(NamedTuple):
  """A covered layer and how its parameters map to the Kronecker factors.

  Attributes:
    path: module path, the key of the layer's curvature block.
    kind: `'dense'`, `'dense_general'` or `'conv'`.
    kernel_path, bias_path: parameter paths (`bias_path` None without a bias).
    kernel_shape, bias_shape: the parameters' shapes (`bias_shape` None without a bias).
    p_in, p_out: the kernel's matrix shape (`kfac.param_paths.kernel_matrix`); the gradient
      matrix is `[dim_a, dim_b]` with `dim_a = p_in + has_bias`, `dim_b = p_out`.
    has_bias: whether the layer has a bias (its ones coordinate is the last one of `A`).
    calls: one `LayerCall` per call in a forward pass (several for a shared module).
    conv: the convolution's geometry (`kind == 'conv'`), else None.
  """

  path: LayerPath
  kind: str
  kernel_path: ParamPath
  bias_path: Optional[ParamPath]
  kernel_shape: Tuple[int, ...]
  bias_shape: Optional[Tuple[int, ...]]
  p_in: int
  p_out: int
  has_bias: bool
  calls: Tuple[LayerCall, ...]
  conv: Optional[ConvGeometry]

  @property
  def dims(self) -> Tuple[int, int]:
    """`(dim_a, dim_b)`, the shape of the layer's gradient matrix."""
    return self.p_in + int(self.has_bias), self.p_out


class LayerReport(NamedTuple):
  """Which parameters K-FAC covers, and why the others are not.

  Attributes:
    layers: covered layers by module path.
    uncovered: every parameter outside a covered layer, by parameter path, with the reason.
    num_examples: N, the size of the model output's first axis (graphs for graph inputs).
    refused: the Dense/DenseGeneral/Conv modules K-FAC cannot cover, by module path, with the
      reason (the structured field strict mode reads; other modules are not linear layers).
  """

  layers: Dict[LayerPath, LayerInfo]
  uncovered: Dict[ParamPath, str]
  num_examples: int
  refused: Dict[LayerPath, str]


class _TracedCall(NamedTuple):
  """What the tracing interceptor sees of one call of a Dense/DenseGeneral/Conv module."""

  path: LayerPath
  kind: str
  uncovered_reason: Optional[str]
  input_shape: Tuple[int, ...]
  output_shape: Tuple[int, ...]
  contracted_axes: Tuple[int, ...]
  kernel_shape: Tuple[int, ...]
  bias_shape: Optional[Tuple[int, ...]]
  conv: Optional[ConvGeometry]


def layer_input(args: Sequence[Any], kwargs: Mapping[str, Any]) -> jax.Array:
  """The input array of a Dense/DenseGeneral/Conv `__call__` (positional or `inputs=`)."""
  return args[0] if args else kwargs['inputs']


def _classify_call(module: nn.Module, x: jax.Array, out: jax.Array) -> Optional[_TracedCall]:
  """Describes a call of a Dense/DenseGeneral/Conv module; None for any other module.

  A module of a covered class that K-FAC cannot treat as one Kronecker block gets an
  `uncovered_reason`: DenseGeneral with `batch_dims` (a kernel per batch index),
  grouped or masked convolutions, inputs without a row axis.
  """
  reason = None
  conv = None
  if isinstance(module, nn.Dense):
    kind, contracted = 'dense', (x.ndim - 1,)
  elif isinstance(module, nn.DenseGeneral):
    kind = 'dense_general'
    axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
    contracted = tuple(sorted(ax % x.ndim for ax in axis))
    if module.batch_dims:
      reason = 'DenseGeneral with batch_dims has one kernel per batch index'
  elif isinstance(module, nn.Conv):
    kind, contracted = 'conv', (x.ndim - 1,)
    conv = conv_geometry(module)
    if module.feature_group_count != 1:
      reason = f'grouped convolution (feature_group_count={module.feature_group_count})'
    elif module.mask is not None:
      reason = 'masked convolution kernel'
    elif x.ndim < len(conv.kernel_size) + 2:
      reason = 'convolution input without a batch axis'
  else:
    return None
  if x.ndim < 2 and reason is None:
    reason = 'input has no row axis'
  variables = module.variables.get('params', {})
  kernel_shape = tuple(variables['kernel'].shape) if 'kernel' in variables else ()
  bias_shape = tuple(variables['bias'].shape) if 'bias' in variables else None
  return _TracedCall(path=tuple(module.path), kind=kind, uncovered_reason=reason,
                     input_shape=tuple(x.shape), output_shape=tuple(out.shape),
                     contracted_axes=contracted, kernel_shape=kernel_shape,
                     bias_shape=bias_shape, conv=conv)


def _trace_modules(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any
                   ) -> Tuple[List[_TracedCall], Dict[LayerPath, str], Tuple[int, ...]]:
  """Shape-only forward pass recording every module call.

  Returns:
    `(calls, module_classes, output_shape)`: the Dense/DenseGeneral/Conv calls in call order,
    the class name of every called module by path, and the model output's shape.
  """
  calls = []
  module_classes = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      module_classes.setdefault(tuple(context.module.path), type(context.module).__name__)
      traced = _classify_call(context.module, layer_input(args, kwargs), out)
      if traced is not None:
        calls.append(traced)
    return out

  with nn.intercept_methods(interceptor):
    # A fresh function: `eval_shape` caches traces per function, and a cached trace would not
    # run the interceptor.
    output = jax.eval_shape(lambda p, x: apply_fn(p, x), params, inputs)
  if not module_classes:
    raise ValueError('no Flax module call was seen while tracing apply_fn: pass an unjitted '
                     'Flax apply (jit the function that calls compute_factors instead)')
  if not hasattr(output, 'shape'):
    raise TypeError('apply_fn must return one array (the logits); got '
                    f'{type(output).__name__}. Close over model state and rngs in apply_fn.')
  return calls, module_classes, tuple(output.shape)


def _layer_calls(apply_fn, params, inputs, calls: List[_TracedCall], num_examples: int,
                 graph_row_overrides: Optional[Mapping[str, str]]
                 ) -> List[Tuple[Optional[LayerCall], Optional[str]]]:
  """`(LayerCall or None, uncovered reason or None)` of every traced call."""
  if isinstance(inputs, jraph.GraphsTuple):
    results = []
    for call in calls:
      rows, reason = graph_rows.row_kind(call.path, call.input_shape[0], inputs,
                                         graph_row_overrides)
      results.append((LayerCall(call.input_shape, call.output_shape, call.contracted_axes, rows),
                      reason))
    return results
  try:
    grown_calls, _, _ = _trace_modules(apply_fn, params, example_axis.grown_inputs(inputs))
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError('kfac finds each layer\'s example axis by tracing apply_fn (shapes only) '
                     f'with {example_axis.EXTRA_EXAMPLES} more example(s) on the first axis of every input '
                     f'leaf; that trace failed: {error}') from error
  if [call.path for call in grown_calls] != [call.path for call in calls]:
    raise ValueError('apply_fn calls different layers for a batch with one more example; K-FAC '
                     'needs the same layers for every batch size')
  results = []
  for call, grown in zip(calls, grown_calls):
    axis, output_axis, reason = example_axis.example_axes(call, grown, num_examples)
    results.append((LayerCall(call.input_shape, call.output_shape, call.contracted_axes,
                              'examples', axis or 0, output_axis or 0), reason))
  return results


def layer_report(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any, *,
                 graph_rows: Optional[Mapping[str, str]] = None) -> LayerReport:
  """Traces `apply_fn(params, inputs)` (shapes only) and describes the layers K-FAC covers.

  Args:
    apply_fn: `apply_fn(params, inputs) -> output`, an unmodified Flax apply returning one array
      whose first axis is the example axis (N).
    params: the model variables (`{'params': ...}` or the bare parameter tree).
    inputs: a batch of inputs (arrays or `jax.ShapeDtypeStruct`s, a pytree, or a
      `jraph.GraphsTuple`), the examples on the first axis of every leaf.
    graph_rows: for graph inputs, `{fnmatch pattern: 'nodes' | 'edges' | 'graphs'}` to
      resolve layers whose row count matches several of them (`kfac.graph_rows`).

  Returns:
    A `LayerReport`.

  Raises:
    ValueError: graph inputs whose output's first axis is not `n_graph`, an ambiguous graph
      layer, or a model that cannot be traced with one more example.
  """
  calls, module_classes, output_shape = _trace_modules(apply_fn, params, inputs)
  if not output_shape:
    raise ValueError('apply_fn returned a scalar; K-FAC needs the output of every example')
  num_examples = output_shape[0]
  if isinstance(inputs, jraph.GraphsTuple) and num_examples != inputs.n_node.shape[0]:
    raise ValueError(f'with GraphsTuple inputs the examples are the graphs: the output\'s first '
                     f'axis ({num_examples}) must be n_graph ({inputs.n_node.shape[0]})')
  by_path: Dict[LayerPath, list] = {}
  for call, (layer_call, reason) in zip(calls, _layer_calls(apply_fn, params, inputs, calls,
                                                            num_examples, graph_rows)):
    by_path.setdefault(call.path, []).append((call, layer_call, call.uncovered_reason or reason))
  layers, reasons = {}, {}
  for path, path_calls in by_path.items():
    reason = next((r for _, _, r in path_calls if r is not None), None)
    if reason is not None:
      reasons[path] = f'{module_classes[path]}: {reason}'
      continue
    first = path_calls[0][0]
    p_in = int(np.prod([first.input_shape[ax] for ax in first.contracted_axes]))
    if first.kind == 'conv':
      p_in *= int(np.prod(first.conv.kernel_size))
    layers[path] = LayerInfo(
        path=path, kind=first.kind, kernel_path=path + ('kernel',),
        bias_path=None if first.bias_shape is None else path + ('bias',),
        kernel_shape=first.kernel_shape, bias_shape=first.bias_shape, p_in=p_in,
        p_out=int(np.prod(first.kernel_shape)) // p_in, has_bias=first.bias_shape is not None,
        calls=tuple(layer_call for _, layer_call, _ in path_calls), conv=first.conv)
  uncovered = {}
  for param_path in leaves_by_param_path(params):
    module_path = param_path[:-1]
    if module_path not in layers:
      uncovered[param_path] = reasons.get(
          module_path, f'{module_classes.get(module_path, "unused module")}: {NOT_A_LINEAR_LAYER}')
  return LayerReport(layers=layers, uncovered=uncovered, num_examples=num_examples,
                     refused=reasons)
