"""Probe capture: every covered layer's inputs and output gradients in one forward pass.

K-FAC needs, for every linear layer `s = a @ W (+ b)`, the layer input `a` and the gradient `g` of
the network output (times a loss-Hessian square root column) w.r.t. the layer output `s`
(Eschenhagen et al. 2023, section 2). We get both without touching the model:

* `flax.linen.intercept_methods` wraps `__call__` of every covered layer (`kfac.tracing`);
* the interceptor records the call's input and returns `output + probe`, with `probe` a zero array
  of the output's shape that is an argument of the traced function;
* `jax.vjp` w.r.t. the probes returns `d <f, cotangent> / d s` for every layer call at once.

Everything is traceable: it runs inside `jit`, and the probes add nothing to the forward values.
A module called several times has every call recorded (extra weight-sharing positions).

The same forward pass records every `nn.MultiHeadDotProductAttention` call
(`kfac.mac.record_attention`, a second interceptor): MAC's attention variant gives the value
projections the attention-weighted mean activation (`kfac.factors.captured_statistics`). The
other blocks never read it, and under `jit` XLA drops it as dead code.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfac import mac, tracing
from kfac.param_paths import LayerPath


class CapturedForward(NamedTuple):
  """A forward pass with probes on every covered layer call.

  Attributes:
    output: the model output `[N, ...]`.
    layer_inputs: `{path: (input of call 0, input of call 1, ...)}`.
    output_gradients: `cotangent [*output.shape] -> {path: (d<output, cotangent>/d s_call, ...)}`,
      each gradient of its call's output shape (a `jax.vjp` pullback: `jax.vmap` it to get many
      cotangents in one pass).
    attention: `{path of a value projection: [kfac.mac.AttentionCall, ...]}`, one entry per
      supported `nn.MultiHeadDotProductAttention` call (`kfac.mac.record_attention`), for MAC's
      attention-weighted mean.
    aux: what `apply_fn` returned beside the output (`has_aux=True`), else None.
    parameter_gradients: with `with_parameters=True`, `cotangent -> d<output, cotangent>/d params`
      (the same pullback: the loss gradient of the same forward pass), else None.
  """

  output: jax.Array
  layer_inputs: Dict[LayerPath, Tuple[jax.Array, ...]]
  output_gradients: Callable[[jax.Array], Dict[LayerPath, Tuple[jax.Array, ...]]]
  attention: Dict[LayerPath, List[mac.AttentionCall]]
  aux: Any = None
  parameter_gradients: Optional[Callable[[jax.Array], Any]] = None


def capture_forward(apply_fn: Callable[[Any, Any], Any], params: Any, inputs: Any,
                    report: tracing.LayerReport, *, has_aux: bool = False,
                    with_parameters: bool = False) -> CapturedForward:
  """Runs the model once, recording covered layers' inputs, their output pullback and the
  attention calls (`kfac.mac.record_attention`).

  With `with_parameters=True` the pullback is taken w.r.t. the parameters too, so one forward
  pass serves the loss gradient (`parameter_gradients(dloss/doutput)`) and the curvature
  statistics (`output_gradients` of sampled cotangents): under `jit`, XLA drops the parameter
  gradients of the pullbacks whose parameter part is unused.

  Args:
    apply_fn, params, inputs: as for `kfac.tracing.layer_report`; with `has_aux=True`,
      `apply_fn(params, inputs) -> (output, aux)` (e.g. the new batch-norm statistics).
    report: the layers to probe (`layer_report` of the same model and input shapes, possibly
      traced once at init).
    has_aux: whether `apply_fn` returns `(output, aux)`.
    with_parameters: also differentiate w.r.t. `params` (`CapturedForward.parameter_gradients`).

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
      recorded.setdefault(path, []).append(tracing.layer_input(args, kwargs))
      out = next_fun(*args, **kwargs)
      if index >= len(probes[path]):
        return out  # More calls than traced: reported below.
      if out.shape != probes[path][index].shape:
        raise ValueError(f'layer {"/".join(path)} outputs {out.shape} but was traced with '
                         f'{probes[path][index].shape}: the batch shapes must be those of the '
                         'inputs the plan was traced on (sample_inputs)')
      return out + probes[path][index].astype(out.dtype)
    return interceptor

  def forward(params, probes):
    recorded, attention = {}, {}
    with mac.record_attention(attention), nn.intercept_methods(
        interceptor_for(probes, recorded, {})):
      result = apply_fn(params, inputs)
    output, aux = result if has_aux else (result, None)
    return output, ({path: tuple(xs) for path, xs in recorded.items()}, attention, aux)

  probes = {path: tuple(jnp.zeros(call.output_shape, jnp.float32) for call in info.calls)
            for path, info in report.layers.items()}
  if with_parameters:
    output, pullback, (layer_inputs, attention, aux) = jax.vjp(forward, params, probes,
                                                               has_aux=True)
  else:
    output, probe_pullback, (layer_inputs, attention, aux) = jax.vjp(
        lambda p: forward(params, p), probes, has_aux=True)
    pullback = lambda cotangent: (None,) + probe_pullback(cotangent)  # noqa: E731
  calls_seen = {path: len(xs) for path, xs in layer_inputs.items()}
  calls_traced = {path: len(info.calls) for path, info in report.layers.items()}
  if calls_seen != calls_traced:
    raise RuntimeError(f'covered layers called {calls_seen} times in the forward pass but '
                       f'{calls_traced} times in the report: apply_fn must call the same layers '
                       'every time (no jitted apply_fn, no data-dependent calls)')

  def output_gradients(cotangent):
    return pullback(cotangent.astype(output.dtype))[1]

  def parameter_gradients(cotangent):
    return pullback(cotangent.astype(output.dtype))[0]

  return CapturedForward(output=output, layer_inputs=layer_inputs,
                         output_gradients=output_gradients, attention=attention, aux=aux,
                         parameter_gradients=parameter_gradients if with_parameters else None)
