"""One forward pass for the loss gradient and the curvature statistics.

K-FAC's statistics need the covered layers' inputs `a` and the output gradients `g` of sampled
cotangents (`kfac.losses.output_cotangents`); the optimiser needs the loss gradient. Both are
pullbacks of the same probed forward pass (`kfac.capture.capture_forward(...,
with_parameters=True)`):

    output, pullback = vjp(forward, params, probes)
    grads      = pullback(d loss / d output)[params]                    (the loss gradient)
    g_samples  = vmap(pullback)(sampled cotangents)[probes]             (the statistics)

so a statistics step costs one forward pass, the loss backward pass and one activation-gradient
backward pass per sample, instead of a second forward and backward after the gradient pass
(`kfac.precondition` on its own). Under `jit`, XLA drops the parameter gradients of the sampled
pullbacks (unused) and the probe gradients of the loss pullback.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from kfac import capture, factors, tracing
from kfac.blocks import LayerStatistics
from kfac.param_paths import LayerPath


def value_grad_and_statistics(loss_fn: Callable[[jax.Array], jax.Array],
                              apply_fn: Callable[[Any, Any], Tuple[jax.Array, Any]],
                              params: Any, inputs: Any, targets: Any, *,
                              report: tracing.LayerReport, flavours: Mapping[LayerPath, str],
                              loss: str, fisher_type: str, rng: Optional[jax.Array] = None,
                              mask: Optional[jax.Array] = None, num_samples: int = 1,
                              statistics_due: Any = True
                              ) -> Tuple[Tuple[jax.Array, Any], Any,
                                         Dict[LayerPath, LayerStatistics]]:
  """`((loss_fn(output), aux), d loss / d params, statistics)` from one forward pass.

  Args:
    loss_fn: `output [N, ...] -> []`, the training objective of the model output (it may differ
      from K-FAC's `loss`, e.g. label smoothing or a weighted mean; the curvature follows `loss`).
    apply_fn: `apply_fn(params, inputs) -> (output, aux)`, an unmodified Flax apply (`aux`, e.g.
      new batch-norm statistics, is returned as is).
    params, inputs, targets, report, flavours, loss, fisher_type, rng, mask, num_samples: as for
      `kfac.factors.compute_statistics`.
    statistics_due: True, or a traced bool: the sampled backward passes and the rows run under
      a `lax.cond` on it (zero statistics when False). Only they: the forward pass and the loss
      gradient stay outside the conditional, where XLA:CPU compiles them as in a plain step
      (measured on WRN-16-4, batch 8: with the whole pass inside the conditional a plain step
      took 7.3 s instead of 0.8-1.0 s).

  Returns:
    `((value, aux), grads, {layer_path: LayerStatistics})`; `grads` has the structure of
    `params`, equal to `jax.grad(lambda p: loss_fn(apply_fn(p, inputs)[0]))(params)`.
  """
  forward = capture.capture_forward(apply_fn, params, inputs, report, has_aux=True,
                                    with_parameters=True)
  value, output_cotangent = jax.value_and_grad(loss_fn)(forward.output)
  grads = forward.parameter_gradients(output_cotangent)

  def statistics() -> Dict[LayerPath, LayerStatistics]:
    return factors.captured_statistics(forward, inputs, targets, report=report,
                                       flavours=flavours, loss=loss, fisher_type=fisher_type,
                                       rng=rng, mask=mask, num_samples=num_samples)

  if statistics_due is True:
    return (value, forward.aux), grads, statistics()
  shapes = jax.eval_shape(statistics)
  zeros = lambda: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # noqa: E731
  return (value, forward.aux), grads, jax.lax.cond(statistics_due, statistics, zeros)
