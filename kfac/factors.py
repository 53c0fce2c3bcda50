"""The statistics pass: every covered layer's `LayerStatistics` (and Kronecker factors) of a batch.

One forward pass with probes (`kfac.capture`), one backward pass per cotangent column of the loss
curvature (`kfac.losses`, vmapped), then per-layer expand or reduce rows (`kfac.layers`).
`A kron B` (`A = a_rows^T a_rows`, `B = g_rows^T g_rows`) approximates the GGN/Fisher block of
`concat([kernel_2d, bias[None]])` (row-major) for the batch-mean loss `(1/N) sum_n l_n`
(Eschenhagen et al. 2023).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax

from kfac import capture, graph_rows, layers, losses, mac, tracing
from kfac.blocks import LayerStatistics
from kfac.param_paths import LayerPath, match_pattern

Factors = Dict[LayerPath, Tuple[jax.Array, jax.Array]]


def layer_flavours(report: tracing.LayerReport, flavour: str,
                   flavour_overrides: Optional[Mapping[str, str]] = None) -> Dict[LayerPath, str]:
  """The flavour of every covered layer: the first pattern of `flavour_overrides` (fnmatch on
  `'/'.join(path)`, in the mapping's order) that matches the path, else `flavour`."""
  flavours = {}
  for path in report.layers:
    chosen = match_pattern(path, flavour_overrides) or flavour
    if chosen not in layers.FLAVOURS:
      raise ValueError(f'flavour of {"/".join(path)!r} must be one of {layers.FLAVOURS}; '
                       f'got {chosen!r}')
    flavours[path] = chosen
  return flavours


def compute_statistics(apply_fn: Callable[..., jax.Array], params: Any, inputs: Any,
                       targets: Any, *, report: tracing.LayerReport,
                       flavours: Mapping[LayerPath, str], loss: str, fisher_type: str,
                       rng: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
                       num_samples: int = 1) -> Dict[LayerPath, LayerStatistics]:
  """`{layer_path: LayerStatistics}` of one batch, for the layers of a traced `report`.

  Args: as for `compute_factors`, plus `report` (`kfac.tracing.layer_report` of the same model
  and input shapes, traced once) and `flavours` (`layer_flavours`).
  """
  forward = capture.capture_forward(apply_fn, params, inputs, report)
  return captured_statistics(forward, inputs, targets, report=report, flavours=flavours,
                             loss=loss, fisher_type=fisher_type, rng=rng, mask=mask,
                             num_samples=num_samples)


def captured_statistics(forward: capture.CapturedForward, inputs: Any, targets: Any, *,
                        report: tracing.LayerReport, flavours: Mapping[LayerPath, str],
                        loss: str, fisher_type: str, rng: Optional[jax.Array] = None,
                        mask: Optional[jax.Array] = None, num_samples: int = 1
                        ) -> Dict[LayerPath, LayerStatistics]:
  """The statistics of a captured forward pass (`kfac.capture.capture_forward` of `inputs`):
  one backward pass per cotangent column of the loss curvature (vmapped), then every layer's
  expand or reduce rows. The value projection of every supported attention module gets MAC's
  attention-weighted mean as its `a_mean` (`kfac.mac.with_attention_means`; read by the `'mac'`
  block only, dead code under `jit` for the others). Arguments as for `compute_statistics`."""
  cotangents = losses.output_cotangents(loss, fisher_type, forward.output, targets, mask=mask,
                                        rng=rng, num_samples=num_samples)
  output_gradients = jax.vmap(forward.output_gradients)(cotangents)
  weights = losses.example_weights(mask, report.num_examples)
  statistics = {}
  for path, info in report.layers.items():
    groups = [graph_rows.row_groups(call.rows, call.num_rows, inputs, weights)
              for call in info.calls]
    statistics[path] = layers.layer_statistics(info, flavours[path], forward.layer_inputs[path],
                                               output_gradients[path], groups)
  return mac.with_attention_means(statistics, forward.attention, weights, report)


def compute_factors(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
                    targets: Any, *, loss: str, flavour: str, fisher_type: str,
                    rng: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
                    num_samples: int = 1, flavour_overrides: Optional[Mapping[str, str]] = None,
                    graph_rows: Optional[Mapping[str, str]] = None,
                    report: Optional[tracing.LayerReport] = None) -> Factors:
  """K-FAC factors `{layer_path: (A, B)}` of every Dense/DenseGeneral/Conv layer of a model.

  Jittable: bind the configuration (everything but arrays) with `functools.partial` and `jit`
  the rest, e.g. `jax.jit(functools.partial(compute_factors, apply_fn, loss='mse',
  flavour='reduce', fisher_type='mc'))(params, inputs, targets, rng=rng)`.

  Args:
    apply_fn: `apply_fn(params, inputs) -> output [N, ...]`, an unmodified Flax apply (model
      state, train mode and dropout rngs are closed over by the caller).
    params: the model variables.
    inputs: the batch inputs (array, pytree, or `jraph.GraphsTuple` whose graphs are the
      examples).
    targets: the batch targets (see `kfac.losses`; unused by `'type2'` and `'mc'`).
    loss: `'softmax_cross_entropy'`, `'sigmoid_cross_entropy'` or `'mse'`.
    flavour: `'expand'` or `'reduce'`, for every layer not in `flavour_overrides`.
    fisher_type: `'type2'`, `'mc'` or `'empirical'`.
    rng: PRNG key for `'mc'`.
    mask: loss weights, a prefix shape of the per-entry loss; examples whose mask is all zero
      (padding examples, padding graphs) are excluded from every statistic (A and B).
    num_samples: MC samples per example.
    flavour_overrides: `{fnmatch pattern on '/'.join(path): flavour}`, first match wins.
    graph_rows: `{pattern: 'nodes' | 'edges' | 'graphs'}` for graph layers whose row count is
      ambiguous (see `kfac.graph_rows`).
    report: the model's `kfac.tracing.layer_report` for these input shapes (traced here when
      None).

  Returns:
    `{layer_path: (A [P_in(+1), P_in(+1)], B [P_out, P_out])}`, float32; the bias coordinate
    is the last one of `A`.
  """
  losses.check_loss_and_fisher(loss, fisher_type)
  if report is None:
    report = tracing.layer_report(apply_fn, params, inputs, graph_rows=graph_rows)
  statistics = compute_statistics(
      apply_fn, params, inputs, targets, report=report,
      flavours=layer_flavours(report, flavour, flavour_overrides), loss=loss,
      fisher_type=fisher_type, rng=rng, mask=mask, num_samples=num_samples)
  return {path: (rows.a_rows.T @ rows.a_rows, rows.g_rows.T @ rows.g_rows)
          for path, rows in statistics.items()}
