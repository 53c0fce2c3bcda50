"""`compute_factors`: the Kronecker factors of every covered layer of an unmodified Flax model.

One forward pass with probes (`kfac.capture`), one backward pass per cotangent column of the loss
curvature (`kfac.losses`, vmapped), then per-layer expand or reduce statistics (`kfac.layers`).
`A kron B` approximates the GGN/Fisher block of `concat([kernel_2d, bias[None]])` (row-major) for
the batch-mean loss `(1/N) sum_n l_n` (Eschenhagen et al. 2023; shared/DESIGN.md section 2).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax

from kfac import capture, layers, losses

Factors = Dict[capture.LayerPath, Tuple[jax.Array, jax.Array]]


def layer_flavours(report: capture.LayerReport, flavour: str,
                   flavour_overrides: Optional[Mapping[str, str]] = None
                   ) -> Dict[capture.LayerPath, str]:
  """The flavour of every covered layer: the first pattern of `flavour_overrides` (fnmatch on
  `'/'.join(path)`, in the mapping's order) that matches the path, else `flavour`."""
  flavours = {}
  for path in report.layers:
    chosen = capture.match_pattern(path, flavour_overrides) or flavour
    if chosen not in layers.FLAVOURS:
      raise ValueError(f'flavour of {"/".join(path)!r} must be one of {layers.FLAVOURS}; '
                       f'got {chosen!r}')
    flavours[path] = chosen
  return flavours


def compute_factors(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
                    targets: Any, *, loss: str, flavour: str, fisher_type: str,
                    rng: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
                    num_samples: int = 1, flavour_overrides: Optional[Mapping[str, str]] = None,
                    graph_rows: Optional[Mapping[str, str]] = None) -> Factors:
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
      (padding examples, padding graphs) are excluded from every statistic.
    num_samples: MC samples per example.
    flavour_overrides: `{fnmatch pattern on '/'.join(path): flavour}`, first match wins.
    graph_rows: `{pattern: 'nodes' | 'edges' | 'graphs'}` for graph layers whose row count is
      ambiguous (see `kfac.capture`).

  Returns:
    `{layer_path: (A [P_in(+1), P_in(+1)], B [P_out, P_out])}`, float32; the bias coordinate
    is the last one of `A`.
  """
  losses.check_loss_and_fisher(loss, fisher_type)
  report = capture.layer_report(apply_fn, params, inputs, graph_rows=graph_rows)
  flavours = layer_flavours(report, flavour, flavour_overrides)
  forward = capture.capture_forward(apply_fn, params, inputs, report)
  cotangents = losses.output_cotangents(loss, fisher_type, forward.output, targets, mask=mask,
                                        rng=rng, num_samples=num_samples)
  output_gradients = jax.vmap(forward.output_gradients)(cotangents)
  weights = losses.example_weights(mask, report.num_examples)
  factors = {}
  for path, info in report.layers.items():
    groups = [layers.row_groups(call, inputs, weights) for call in info.calls]
    factors[path] = layers.layer_factors(info, flavours[path], forward.layer_inputs[path],
                                         output_gradients[path], groups)
  return factors
