"""MAC: mean-activation curvature (Seung, Lee, Ko 2025, "MAC: An Efficient Gradient
Preconditioning using Mean Activation Approximated Curvature", arXiv 2506.08464).

For a layer with gradient matrix `G [d_a, d_b]` (input features, bias row last, by output
features), K-FAC's Fisher block is `A kron B`. MAC keeps one vector per layer:

* `A ~ abar abar^T`: the activation factor is dominated by the outer product of the mean
  activation `abar = E[a]` (mean over valid examples and weight-sharing positions: the mean
  im2col patch of a convolution, the mean token of a sequence, the mean node or edge of a graph;
  bias coordinate 1; `LayerStatistics.a_mean` from `kfac.layers`, padding examples excluded).
  `abar` is an exponential average over statistics steps, bias-corrected (`ema_update`).
* `B ~ I`: no output-gradient factor.
* Damped: `F = (abar abar^T + lambda I) kron I`, inverted by Sherman-Morrison:
  `(abar abar^T + lambda I)^-1 = (I - abar abar^T / (lambda + |abar|^2)) / lambda`.
  The paper's step uses the damping *decoupled* from the step size,
  `G <- (I - abar abar^T / (lambda + |abar|^2)) G = lambda (abar abar^T + lambda I)^-1 G`:
  plain SGD except that the component along `abar` is shrunk by `lambda / (lambda + |abar|^2)`.
* Input layers (whose input is the model input, `input_layer_paths`) use the exact input
  covariance `A = E[a a^T]` instead (data, not a learned representation, so not dominated by its
  mean), `lambda (A + lambda I)^-1 G` (`kfac.blocks.mac`, 'mac_input').
* Attention: the value projection's input, as the loss sees it, is `S x` (S the attention
  probabilities), so its `abar` is the attention-weighted mean `E[sum_j S_ij x_j]`
  (`attention_weighted_mean`); query and key projections use the plain mean. `record_attention`
  captures `S` from unmodified `nn.MultiHeadDotProductAttention` calls inside the statistics
  pass's forward (`kfac.capture.capture_forward`), and `with_attention_means` puts the result in
  the value projections' `LayerStatistics.a_mean` (`kfac.factors.captured_statistics`).

The math is pure and jittable; `record_attention` (inside the traced forward pass) and
`input_layer_paths` (a shape-only trace at setup) are the tracing helpers. docs/mac.md has the
derivation and how the public code (hseung88/mac) differs.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfac.param_paths import LayerPath
from kfac.tracing import LayerInfo, LayerReport, layer_input

# -- Exponential average with bias correction ---------------------------------------------------


def ema_update(average: jax.Array, mass: jax.Array, batch_value: jax.Array,
               weight: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """One step of a zero-initialised exponential average and of its weight mass.

  `average <- (1 - w) average + w x`, `mass <- (1 - w) mass + w` (both start at 0), so that
  `average / mass` is the bias-corrected average. With a constant `w = 1 - beta` the mass is
  `1 - beta^k` after k steps: the paper's (and Adam's) correction. With `kfac.curvature`'s
  `w = max(1 - beta, 1 / (count + 1))` the mass is 1 from the first step (no bias to correct).

  Args:
    average: `[...]` current average; mass: `[]` its weight mass.
    batch_value: `[...]` this batch's value; weight: `[]` the EMA weight `w` in (0, 1].

  Returns:
    `(average, mass)` after the step.
  """
  return (1.0 - weight) * average + weight * batch_value, (1.0 - weight) * mass + weight


def bias_corrected(average: jax.Array, mass: jax.Array) -> jax.Array:
  """`average / mass`, zeros while the mass is 0 (no statistics yet)."""
  return jnp.where(mass > 0, average / jnp.where(mass > 0, mass, 1.0), jnp.zeros_like(average))


# -- Sherman-Morrison -----------------------------------------------------------------------------


def sherman_morrison_solve(a_bar: jax.Array, grad: jax.Array, damping: jax.Array) -> jax.Array:
  """`(abar abar^T + lambda I)^-1 G` in O(d_a d_b) time and O(d_a) memory.

  Sherman-Morrison with `M = lambda I`, `u = v = abar`:
  `(lambda I + abar abar^T)^-1 = I / lambda - abar abar^T / (lambda (lambda + abar^T abar))`.

  Args:
    a_bar: `[d_a]` mean activation (bias coordinate last when the layer has a bias).
    grad: `[d_a, d_b]` gradient matrix (bias row last).
    damping: `[]` lambda > 0.

  Returns:
    `[d_a, d_b]`.
  """
  return mac_precondition(a_bar, grad, damping) / damping


def mac_precondition(a_bar: jax.Array, grad: jax.Array, damping: jax.Array) -> jax.Array:
  """The paper's MAC step direction, damping decoupled from the step size:
  `(I - abar abar^T / (lambda + |abar|^2)) G = lambda (abar abar^T + lambda I)^-1 G`.

  Positive definite for `lambda > 0`: eigenvalue `lambda / (lambda + |abar|^2)` along `abar`,
  1 orthogonal to it. Shapes as for `sherman_morrison_solve`.
  """
  a_bar = a_bar.astype(grad.dtype)
  projection = a_bar @ grad  # [d_b]
  return grad - jnp.outer(a_bar, projection) / (damping + jnp.dot(a_bar, a_bar))


# -- Attention ---------------------------------------------------------------------------------


class AttentionCall(NamedTuple):
  """What one `nn.MultiHeadDotProductAttention` call gives MAC (all float32, no gradient).

  Attributes:
    probs: `[N, ..., H, L_q, L_k]` attention probabilities `S` (as Flax computes them, without
      dropout).
    value_input: `[N, ..., L_k, D]` the input of the `value` projection.
    query_valid: `[N, ..., H, L_q]` 1 where the query attends to at least one key (mask), else 0.
  """

  probs: jax.Array
  value_input: jax.Array
  query_valid: jax.Array


def attention_weighted_mean(calls: Sequence[AttentionCall], example_weights: jax.Array,
                            has_bias: bool) -> jax.Array:
  """`abar_V [D (+1)]`: the mean of the value projection's effective input `sum_j S_ij x_j`.

  The head-h output at query i is `sum_j S^h_ij (x_j W_V^h + b^h)`, so the gradient of `W_V^h`
  is `sum_i (S^h x)_i delta_i^T`: the value projection sees the rows `(S^h x)_i`. MAC's mean
  activation for it averages those rows over valid examples n, heads h and valid queries i:
  `abar_V = sum_{n,h,i} w_nhi sum_j S^h_nij x_nj / sum_{n,h,i} w_nhi`, and the bias coordinate
  `sum_j S_ij` (1 for every query that attends somewhere).

  Args:
    calls: the calls of one attention module (`record_attention`).
    example_weights: `[N]` 1 for valid examples, 0 for padding ones.
    has_bias: whether the value projection has a bias.
  """
  total, bias_total, count = 0.0, 0.0, 0.0
  for call in calls:
    weights = call.query_valid * example_weights.reshape(
        (-1,) + (1,) * (call.query_valid.ndim - 1))  # [N, ..., H, L_q]
    key_weights = jnp.einsum('...hqk,...hq->...k', call.probs, weights)  # [N, ..., L_k]
    total = total + jnp.einsum('...k,...kd->d', key_weights, call.value_input)
    bias_total = bias_total + jnp.sum(key_weights)
    count = count + jnp.sum(weights)
  count = jnp.maximum(count, 1.0)
  a_bar = total / count
  if has_bias:
    a_bar = jnp.concatenate([a_bar, jnp.reshape(bias_total / count, (1,))])
  return a_bar


def rows_are_examples(calls: Sequence[AttentionCall], info: LayerInfo, num_examples: int
                      ) -> bool:
  """Whether the example weights `[N]` attach to a value projection's attention calls: every
  call of the projection has the examples as its leading (row) axis, and so has every
  recorded `S` (not so, e.g., for a graph layer whose rows are nodes)."""
  return (all(call.rows == 'examples' and call.example_axis == 0 for call in info.calls)
          and all(call.probs.shape[0] == num_examples for call in calls))


def with_attention_means(statistics: Dict[LayerPath, Any],
                         records: Dict[LayerPath, List[AttentionCall]],
                         example_weights: jax.Array, report: LayerReport) -> Dict[LayerPath, Any]:
  """`{path: LayerStatistics}` with `a_mean` of every recorded value projection replaced by its
  `attention_weighted_mean`: MAC's attention variant, applied by the statistics pass
  (`kfac.factors.captured_statistics`). Value projections whose calls fail `rows_are_examples`
  keep the plain mean.

  Args:
    statistics: `{path: LayerStatistics}` of every covered layer (`kfac.layers`).
    records: the attention calls by value-projection path (`record_attention`).
    example_weights: `[N]` 1 for valid examples, 0 for padding ones.
    report: the covered layers (`has_bias`, the row axis of every call).
  """
  return {path: stats._replace(a_mean=attention_weighted_mean(
              records[path], example_weights, report.layers[path].has_bias))
          if path in records and rows_are_examples(records[path], report.layers[path],
                                                   report.num_examples) else stats
          for path, stats in statistics.items()}


def _attention_call(module: nn.MultiHeadDotProductAttention, frame: Dict[str, Any]
                    ) -> AttentionCall:
  """The `AttentionCall` of a finished attention call from what its sub-modules recorded."""
  probs = nn.dot_product_attention_weights(
      frame['query'], frame['key'], mask=frame['mask'], deterministic=True, dtype=module.dtype,
      precision=module.precision, force_fp32_for_softmax=module.force_fp32_for_softmax)
  if frame['mask'] is None:
    valid = jnp.ones(probs.shape[:-1], jnp.float32)
  else:
    valid = jnp.any(jnp.broadcast_to(frame['mask'], probs.shape), axis=-1).astype(jnp.float32)
  return AttentionCall(probs=jax.lax.stop_gradient(probs.astype(jnp.float32)),
                       value_input=jax.lax.stop_gradient(frame['value'].astype(jnp.float32)),
                       query_valid=valid)


def attention_supported(module: nn.MultiHeadDotProductAttention) -> bool:
  """Whether MAC can recompute the module's attention probabilities: Flax's default
  `attention_fn` and no autoregressive cache."""
  return module.attention_fn is nn.dot_product_attention and not module.decode


@contextlib.contextmanager
def record_attention(records: Dict[LayerPath, List[AttentionCall]]) -> Iterator[None]:
  """Within the context, every supported `nn.MultiHeadDotProductAttention` call appends an
  `AttentionCall` to `records[path of its 'value' projection]`.

  Works on unmodified models: a `flax.linen.intercept_methods` interceptor records the outputs
  of the module's `query`/`key` projections (or of `query_ln`/`key_ln` with `normalize_qk`), the
  input of `value`, and the `mask` argument, and recomputes `S` with Flax's own
  `dot_product_attention_weights`. Use it inside the traced function and return `records` from
  it (e.g. as `has_aux` output): the recorded arrays are tracers of that trace.
  """
  stack: List[Tuple[nn.Module, Dict[str, Any]]] = []

  def interceptor(next_fun: Callable, args: Any, kwargs: Any, context: Any) -> Any:
    module = context.module
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(module, nn.MultiHeadDotProductAttention):
      frame = {'mask': kwargs.get('mask')}
      stack.append((module, frame))
      try:
        out = next_fun(*args, **kwargs)
      finally:
        stack.pop()
      if attention_supported(module) and {'query', 'key', 'value'} <= frame.keys():
        records.setdefault(tuple(module.path) + ('value',), []).append(
            _attention_call(module, frame))
      return out
    out = next_fun(*args, **kwargs)
    if stack and tuple(module.path[:-1]) == tuple(stack[-1][0].path):
      parent, frame = stack[-1]
      name = module.path[-1]
      projections = ('query_ln', 'key_ln') if parent.normalize_qk else ('query', 'key')
      if name in projections:
        frame[name.removesuffix('_ln')] = out
      elif name == 'value':
        frame['value'] = layer_input(args, kwargs)
    return out

  with nn.intercept_methods(interceptor):
    yield


# -- Input layers ------------------------------------------------------------------------------


def input_layer_paths(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
                      report: LayerReport) -> Tuple[LayerPath, ...]:
  """The covered layers whose input *is* an array of the model input (the paper's first layer).

  Found by identity in a shape-only trace: a conv on the images, the node and the edge embedding
  of a graph network. When no covered layer takes a model input directly (the model transforms
  it first), the covered layer called first.
  """
  found: List[LayerPath] = []

  def traced(params: Any, inputs: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(inputs)

    def interceptor(next_fun, args, kwargs, context):
      path = tuple(context.module.path)
      if context.method_name == '__call__' and path in report.layers and path not in found:
        if any(layer_input(args, kwargs) is leaf for leaf in leaves):
          found.append(path)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      return apply_fn(params, inputs)

  jax.eval_shape(traced, params, inputs)
  return tuple(found) or tuple(report.layers)[:1]


def _fnmatch_escape(name: str) -> str:
  """A pattern matching exactly `name` (fnmatch's `[`, `*`, `?` bracketed)."""
  return ''.join(f'[{c}]' if c in '[*?' else c for c in name)


def mac_overrides(input_paths: Sequence[LayerPath]) -> Tuple[Dict[str, str], Dict[str, str]]:
  """`(inverse_method_overrides, flavour_overrides)` that give the input layers the exact input
  covariance ('mac_input', with K-FAC-expand's per-position `A = E[a a^T]`, as the paper's
  per-patch covariance). Put them before any catch-all pattern."""
  patterns = [_fnmatch_escape('/'.join(path)) for path in input_paths]
  return ({p: 'mac_input' for p in patterns}, {p: 'expand' for p in patterns})
