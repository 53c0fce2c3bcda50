"""Capture of layer inputs and output gradients on unmodified Flax linen models.

K-FAC needs, for every linear layer `s = a @ W (+ b)`, the layer input `a` and the gradient `g` of
the network output (times a loss-Hessian square root column) w.r.t. the layer output `s`
(Eschenhagen et al. 2023, "Kronecker-Factored Approximate Curvature for Modern Neural Network
Architectures", section 2; shared/DESIGN.md section 2). We get both without touching the model:

* `flax.linen.intercept_methods` wraps `__call__` of every `nn.Dense`, `nn.DenseGeneral` (this
  includes the q/k/v/out projections of `nn.MultiHeadDotProductAttention`) and `nn.Conv`;
* the interceptor records the call's input and returns `output + probe`, with `probe` a zero array
  of the output's shape that is an argument of the traced function;
* `jax.vjp` w.r.t. the probes returns `d <f, cotangent> / d s` for every layer call at once.

Everything is traceable: it runs inside `jit`, and the probes add nothing to the forward values.

Layers are keyed by their module path (`('Encoder_0', 'Dense_0')`, the tuple of module names from
the root), which addresses the layer's parameters: `params['params'][path]['kernel' | 'bias']`
(or `params[path]` when the variables have no `'params'` collection).

Modules called several times in one forward pass (one module shared across message-passing steps,
or applied to several inputs): every call is recorded and the calls are treated as *extra
weight-sharing positions* of the same layer. The gradient of a shared kernel is the sum over calls
and positions of `a g^T`, exactly the structure of a weight-sharing layer with the positions of all
calls concatenated, so K-FAC-expand averages `a a^T` over the rows of all calls and K-FAC-reduce
averages `a` over them per example (see `kfac.layers`). Calling a covered module once on
`[N, R1, D]` and once on `[N, R2, D]` gives the factors of one call on `[N, R1 + R2, D]`.

`apply_fn` must be an unjitted Flax apply (jit the function that calls K-FAC instead): a jitted
one runs its module calls only when first traced, and `capture_forward` raises when the layers it
sees differ from the report.

Rows and examples. The first axis of a layer's input is its *row axis*. Without graphs it must be
the example axis (size N, the output's first axis); every axis between it and the feature axis is
a weight-sharing axis. With a `jraph.GraphsTuple` input the examples are the graphs (the output's
first axis must be `n_graph`) and a layer's rows are nodes, edges or graphs, matched by the row
count against the tuple's static sizes (`nodes`, `edges` leading axis, `n_node.shape[0]`). A size
that matches several of them is ambiguous: `graph_rows={pattern: 'nodes' | 'edges' | 'graphs'}`
(fnmatch on `'/'.join(path)`) resolves it, and without it `layer_report` raises. A covered module
whose row axis matches nothing is reported as uncovered, with the reason. Which graphs are
padding is the loss mask's business (`kfac.losses.example_weights`): pass the mask, or jraph's
padding graph counts as an example.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
from flax.linen import linear as flax_linear
import jax
import jax.numpy as jnp
import jraph
import numpy as np

LayerPath = Tuple[str, ...]
ParamPath = Tuple[str, ...]


class ConvGeometry(NamedTuple):
  """The static configuration of an `nn.Conv` call, as `lax.conv_general_dilated` sees it.

  Attributes:
    kernel_size: spatial kernel shape `(k_1, ..., k_d)`.
    strides, input_dilation, kernel_dilation: per spatial dimension.
    padding: `'SAME'`, `'VALID'` or `((lo, hi), ...)` per spatial dimension.
    pre_padding: `(numpy pad mode, ((lo, hi), ...))` applied to the spatial axes before a
      `'VALID'` convolution (Flax's `'CIRCULAR'`, `'REFLECT'` and `'CAUSAL'`), or None.
  """

  kernel_size: Tuple[int, ...]
  strides: Tuple[int, ...]
  padding: Any
  input_dilation: Tuple[int, ...]
  kernel_dilation: Tuple[int, ...]
  pre_padding: Optional[Tuple[str, Tuple[Tuple[int, int], ...]]]


class LayerCall(NamedTuple):
  """One call of a covered module in a forward pass.

  Attributes:
    input_shape, output_shape: shapes of the module's input and output.
    contracted_axes: input axes contracted with the kernel (Dense: the last one; DenseGeneral:
      its sorted `axis`; Conv: the channel axis).
    rows: what the first (row) axis holds: `'examples'`, or for graph inputs `'nodes'`,
      `'edges'` or `'graphs'`.
  """

  input_shape: Tuple[int, ...]
  output_shape: Tuple[int, ...]
  contracted_axes: Tuple[int, ...]
  rows: str


class LayerInfo(NamedTuple):
  """A covered layer and how its parameters map to the Kronecker factors.

  The curvature block `A kron B` (A `[P_in(+1), P_in(+1)]`, B `[P_out, P_out]`) is that of the
  row-major flattening of `concat([kernel.reshape(p_in, p_out), bias.reshape(1, p_out)])`: the
  kernel of every kind is laid out as (input axes..., output axes...), so `reshape` is the whole
  map (Dense `[P_in, P_out]` as is; DenseGeneral contracted axes -> P_in, feature axes -> P_out;
  Conv `[kh, kw, c, o]` -> `[kh*kw*c, o]`). See `kernel_matrix` and `split_kernel_matrix`.

  Attributes:
    path: module path, the key of the layer's factors.
    kind: `'dense'`, `'dense_general'` or `'conv'`.
    kernel_path, bias_path: paths of the parameters inside the `'params'` collection
      (`path + ('kernel',)`, `path + ('bias',)`); `bias_path` is None without a bias.
    kernel_shape, bias_shape: the parameters' shapes (`bias_shape` None without a bias;
      DenseGeneral's bias has the shape of its `features`).
    p_in, p_out: the kernel's matrix shape; `A` has side `p_in + 1` when `has_bias`.
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


class LayerReport(NamedTuple):
  """Which parameters K-FAC covers, and why the others are not.

  Attributes:
    layers: covered layers by module path.
    uncovered: every parameter leaf outside a covered layer, by its path in the `'params'`
      collection, with the reason (e.g. `'LayerNorm: not a Dense/DenseGeneral/Conv layer'`).
    num_examples: N, the size of the model output's first axis (graphs for graph inputs).
  """

  layers: Dict[LayerPath, LayerInfo]
  uncovered: Dict[ParamPath, str]
  num_examples: int


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


def param_collection(params: Any) -> Any:
  """The `'params'` collection of Flax variables, or the tree itself when it has none."""
  if isinstance(params, Mapping) and 'params' in params:
    return params['params']
  return params


def kernel_matrix(info: LayerInfo, kernel: jax.Array,
                  bias: Optional[jax.Array] = None) -> jax.Array:
  """The layer's parameters (or their gradients) as one matrix `[P_in (+1), P_out]`.

  Args:
    info: the layer.
    kernel: kernel-shaped array.
    bias: bias-shaped array, required when `info.has_bias`.

  Returns:
    `concat([kernel.reshape(p_in, p_out), bias.reshape(1, p_out)])` (bias row last), the matrix
    whose row-major flattening the block `A kron B` acts on.
  """
  matrix = kernel.reshape(info.p_in, info.p_out)
  if info.has_bias:
    matrix = jnp.concatenate([matrix, bias.reshape(1, info.p_out)], axis=0)
  return matrix


def split_kernel_matrix(info: LayerInfo,
                        matrix: jax.Array) -> Tuple[jax.Array, Optional[jax.Array]]:
  """Inverse of `kernel_matrix`: `[P_in (+1), P_out]` -> `(kernel, bias or None)`."""
  kernel = matrix[:info.p_in].reshape(info.kernel_shape)
  if not info.has_bias:
    return kernel, None
  return kernel, matrix[info.p_in].reshape(info.bias_shape)


def _layer_input(args: Sequence[Any], kwargs: Mapping[str, Any]) -> jax.Array:
  """The input array of a Dense/DenseGeneral/Conv `__call__` (positional or `inputs=`)."""
  return args[0] if args else kwargs['inputs']


def _conv_geometry(module: nn.Conv) -> ConvGeometry:
  """Flax's canonicalisation of an `nn.Conv`'s attributes (flax/linen/linear.py, `_Conv`)."""
  kernel_size = ((module.kernel_size,) if isinstance(module.kernel_size, int)
                 else tuple(module.kernel_size))
  rank = len(kernel_size)

  def per_dim(value: Any) -> Tuple[int, ...]:
    if value is None:
      value = 1
    return (value,) * rank if isinstance(value, int) else tuple(value)

  kernel_dilation = per_dim(module.kernel_dilation)
  padding = flax_linear.canonicalize_padding(module.padding, rank)
  pre_padding = None
  if padding in ('CIRCULAR', 'REFLECT'):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    pads = tuple(((k - 1) // 2, k // 2) for k in dilated)
    pre_padding = ({'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}[padding], pads)
    padding = 'VALID'
  elif padding == 'CAUSAL':
    pre_padding = ('constant', ((kernel_dilation[0] * (kernel_size[0] - 1), 0),))
    padding = 'VALID'
  elif not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  return ConvGeometry(kernel_size=kernel_size, strides=per_dim(module.strides), padding=padding,
                      input_dilation=per_dim(module.input_dilation),
                      kernel_dilation=kernel_dilation, pre_padding=pre_padding)


def _classify_call(module: nn.Module, x: jax.Array, out: jax.Array) -> Optional[_TracedCall]:
  """Describes a call of a Dense/DenseGeneral/Conv module; None for any other module.

  A module of a covered class that K-FAC cannot treat as one Kronecker block gets an
  `uncovered_reason`: DenseGeneral with `batch_dims` (a kernel per batch index) or contracting
  the row axis, grouped or masked convolutions, inputs without a row axis.
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
    elif 0 in contracted:
      reason = 'DenseGeneral contracts the row (example) axis'
  elif isinstance(module, nn.Conv):
    kind, contracted = 'conv', (x.ndim - 1,)
    conv = _conv_geometry(module)
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


def _trace_modules(apply_fn: Callable[[Any, Any], jax.Array], params: Any,
                   inputs: Any) -> Tuple[list, Dict[LayerPath, str], Tuple[int, ...]]:
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
      traced = _classify_call(context.module, _layer_input(args, kwargs), out)
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


def _graph_sizes(graph: jraph.GraphsTuple) -> Dict[str, int]:
  """Static row counts of a GraphsTuple: total nodes, total edges, graphs."""
  sizes = {'graphs': graph.n_node.shape[0]}
  for kind, features in (('nodes', graph.nodes), ('edges', graph.edges)):
    leaves = jax.tree_util.tree_leaves(features)
    if leaves:
      sizes[kind] = leaves[0].shape[0]
  if graph.senders is not None:
    sizes.setdefault('edges', graph.senders.shape[0])
  return sizes


def match_pattern(path: LayerPath, patterns: Optional[Mapping[str, Any]]) -> Any:
  """The value of the first pattern (fnmatch on `'/'.join(path)`) matching `path`, or None."""
  name = '/'.join(path)
  for pattern, value in (patterns or {}).items():
    if fnmatch.fnmatchcase(name, pattern):
      return value
  return None


def _row_kind(call: _TracedCall, inputs: Any, num_examples: int,
              graph_rows: Optional[Mapping[str, str]]) -> Tuple[Optional[str], Optional[str]]:
  """What the call's row axis holds: `(row kind, None)` or `(None, reason it is uncovered)`.

  Raises:
    ValueError: a graph layer whose row count matches several of nodes/edges/graphs and that
      `graph_rows` does not resolve, or an override naming an unknown row kind.
  """
  num_rows = call.input_shape[0]
  name = '/'.join(call.path)
  if not isinstance(inputs, jraph.GraphsTuple):
    if num_rows != num_examples:
      return None, (f'row axis of size {num_rows} is not the example axis (N={num_examples}); '
                    'K-FAC needs the examples on the first axis of every layer input')
    return 'examples', None
  sizes = _graph_sizes(inputs)
  override = match_pattern(call.path, graph_rows)
  if override is not None:
    if override not in sizes:
      raise ValueError(f'graph_rows for {name!r} is {override!r}; expected one of {sorted(sizes)}')
    if sizes[override] != num_rows:
      raise ValueError(f'graph_rows says {name!r} has {override} rows ({sizes[override]}), but '
                       f'its input has {num_rows} rows')
    return override, None
  candidates = [kind for kind, size in sizes.items() if size == num_rows]
  if len(candidates) > 1:
    raise ValueError(
        f'layer {name!r} has {num_rows} rows, which matches {" and ".join(candidates)} of the '
        f'GraphsTuple; pass graph_rows={{{name!r}: one of {candidates}}} (fnmatch patterns)')
  if not candidates:
    return None, (f'row axis of size {num_rows} matches no node ({sizes.get("nodes")}), edge '
                  f'({sizes.get("edges")}) or graph ({sizes["graphs"]}) count')
  return candidates[0], None


def layer_report(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any, *,
                 graph_rows: Optional[Mapping[str, str]] = None) -> LayerReport:
  """Traces `apply_fn(params, inputs)` (shapes only) and describes the layers K-FAC covers.

  Args:
    apply_fn: `apply_fn(params, inputs) -> output`, an unmodified Flax apply returning one array
      whose first axis is the example axis (N).
    params: the model variables (`{'params': ...}` or the bare parameter tree).
    inputs: a batch of inputs (an array, a pytree, or a `jraph.GraphsTuple`).
    graph_rows: for graph inputs, `{fnmatch pattern on '/'.join(path): 'nodes' | 'edges' |
      'graphs'}` to resolve layers whose row count matches several of them.

  Returns:
    A `LayerReport`: covered layers by path, uncovered parameters with the reason.

  Raises:
    ValueError: graph inputs whose output's first axis is not `n_graph`, or an ambiguous graph
      layer (see `graph_rows`).
  """
  calls, module_classes, output_shape = _trace_modules(apply_fn, params, inputs)
  if not output_shape:
    raise ValueError('apply_fn returned a scalar; K-FAC needs the output of every example')
  num_examples = output_shape[0]
  if isinstance(inputs, jraph.GraphsTuple) and num_examples != inputs.n_node.shape[0]:
    raise ValueError(f'with GraphsTuple inputs the examples are the graphs: the output\'s first '
                     f'axis ({num_examples}) must be n_graph ({inputs.n_node.shape[0]})')
  by_path: Dict[LayerPath, list] = {}
  for call in calls:
    by_path.setdefault(call.path, []).append(call)
  layers = {}
  reasons = {}
  for path, path_calls in by_path.items():
    first = path_calls[0]
    reason = first.uncovered_reason
    layer_calls = []
    for call in path_calls:
      rows, row_reason = _row_kind(call, inputs, num_examples, graph_rows)
      reason = reason or call.uncovered_reason or row_reason
      layer_calls.append(LayerCall(input_shape=call.input_shape, output_shape=call.output_shape,
                                   contracted_axes=call.contracted_axes, rows=rows))
    if reason is not None:
      reasons[path] = f'{module_classes[path]}: {reason}'
      continue
    p_in = int(np.prod([first.input_shape[ax] for ax in first.contracted_axes]))
    if first.kind == 'conv':
      p_in *= int(np.prod(first.conv.kernel_size))
    p_out = int(np.prod(first.kernel_shape)) // p_in
    layers[path] = LayerInfo(path=path, kind=first.kind, kernel_path=path + ('kernel',),
                             bias_path=None if first.bias_shape is None else path + ('bias',),
                             kernel_shape=first.kernel_shape, bias_shape=first.bias_shape,
                             p_in=p_in, p_out=p_out, has_bias=first.bias_shape is not None,
                             calls=tuple(layer_calls), conv=first.conv)
  uncovered = {}
  leaves = jax.tree_util.tree_leaves_with_path(param_collection(params))
  for key_path, _ in leaves:
    param_path = tuple(str(getattr(key, 'key', key)) for key in key_path)
    module_path = param_path[:-1]
    if module_path in layers:
      continue
    uncovered[param_path] = reasons.get(
        module_path,
        f'{module_classes.get(module_path, "unused module")}: not a Dense/DenseGeneral/Conv layer')
  return LayerReport(layers=layers, uncovered=uncovered, num_examples=num_examples)


class CapturedForward(NamedTuple):
  """A forward pass with probes on every covered layer call.

  Attributes:
    output: the model output `[N, ...]`.
    layer_inputs: `{path: (input of call 0, input of call 1, ...)}`.
    output_gradients: `cotangent [*output.shape] -> {path: (d<output, cotangent>/d s_call, ...)}`,
      each gradient of its call's output shape (a `jax.vjp` pullback: `jax.vmap` it to get many
      cotangents in one pass).
  """

  output: jax.Array
  layer_inputs: Dict[LayerPath, Tuple[jax.Array, ...]]
  output_gradients: Callable[[jax.Array], Dict[LayerPath, Tuple[jax.Array, ...]]]


def capture_forward(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
                    report: LayerReport) -> CapturedForward:
  """Runs the model once, recording covered layers' inputs and their output pullback.

  Args:
    apply_fn, params, inputs: as for `layer_report`.
    report: `layer_report(apply_fn, params, inputs)`; its layers get probes.

  Returns:
    A `CapturedForward`.
  """
  def interceptor_for(probes, recorded, counts):
    def interceptor(next_fun, args, kwargs, context):
      path = tuple(context.module.path) if context.method_name == '__call__' else None
      if path not in probes:
        return next_fun(*args, **kwargs)
      index = counts.get(path, 0)
      counts[path] = index + 1
      recorded.setdefault(path, []).append(_layer_input(args, kwargs))
      out = next_fun(*args, **kwargs)
      return out + probes[path][index].astype(out.dtype)
    return interceptor

  def forward(probes):
    recorded = {}
    with nn.intercept_methods(interceptor_for(probes, recorded, {})):
      output = apply_fn(params, inputs)
    return output, {path: tuple(xs) for path, xs in recorded.items()}

  probes = {path: tuple(jnp.zeros(call.output_shape, jnp.float32) for call in info.calls)
            for path, info in report.layers.items()}
  output, pullback, layer_inputs = jax.vjp(forward, probes, has_aux=True)
  calls_seen = {path: len(xs) for path, xs in layer_inputs.items()}
  calls_traced = {path: len(info.calls) for path, info in report.layers.items()}
  if calls_seen != calls_traced:
    raise RuntimeError(f'covered layers called {calls_seen} times in the forward pass but '
                       f'{calls_traced} times in the report: apply_fn must call the same layers '
                       'every time (no jitted apply_fn, no data-dependent calls)')

  def output_gradients(cotangent):
    (gradients,) = pullback(cotangent.astype(output.dtype))
    return gradients

  return CapturedForward(output=output, layer_inputs=layer_inputs,
                         output_gradients=output_gradients)
