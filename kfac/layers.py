"""K-FAC-expand and K-FAC-reduce statistics of linear weight-sharing layers, per layer kind.

A covered layer call maps `a[t, r, :]` to `s[t, r, :] = a[t, r, :] @ W` (+ bias), `W [P_in, P_out]`:
`t` runs over the rows of the layer input (its first axis) and `r` over the weight-sharing
positions of a row (Eschenhagen et al. 2023, section 3; shared/DESIGN.md section 2):

* Dense / DenseGeneral (`'dense'`, `'dense_general'`): `[T, R..., P_in]`, every axis between the
  row axis and the contracted (feature) axes is shared (sequence tokens, attention heads...);
  DenseGeneral's contracted axes are flattened into `P_in`.
* Conv (`'conv'`): `a` is the im2col patch of an output location, `R` = output locations, in the
  kernel's HWIO order `(k_1, ..., k_d, c)` (`lax.conv_general_dilated_patches` orders its patch
  features `(c, k_1, ..., k_d)`: we permute).
* Graphs: a row is a node, an edge or a graph; rows belong to examples (graphs) through
  `n_node`/`n_edge`, rows of padding graphs are excluded (`RowGroups`). Global layers have one row
  per graph (R = 1): expand and reduce agree there.

With `g[m, t, r, :]` the output gradients for cotangent column `m` (`kfac.losses`), `N` the
number of valid examples (`sum_n w_n`, `w` from the loss mask) and `R_n` the number of rows x
positions of example `n`:

* expand: `A = sum_{valid n, r} a a^T / sum_n w_n R_n`, `B = sum_{m, t, r} g g^T`;
* reduce: `A = 1/N sum_{valid n} abar_n abar_n^T` with `abar_n` the mean of `a` over the rows
  and positions of example `n` (a segment mean for graphs), `B = sum_{m, n} gsum gsum^T` with
  `gsum[m, n]` the sum of `g` over them.

Why these scalings: the exact GGN block of the batch-mean loss is
`sum_{n, m} (sum_r a_nr kron g_nrm)(sum_r a_nr kron g_nrm)^T` (the loss's `1/N` is inside `g`,
see `kfac.losses`). For a deep linear network with a per-position loss, `g_nrm` is non-zero
for one position `r` per column `m`, and `sum_m g_nrm g_nrm^T` is the same for every `(n, r)`:
the block is `A_expand kron B_expand`. When the positions are reduced (mean or sum) before the loss, `g_nrm`
does not depend on `r`, so `sum_r a_nr kron g_nrm = abar_n kron gsum_nm`: the block is
`A_reduce kron B_reduce` (tests/test_kfac_factors.py checks both, and that each is off in the
other setting).

A bias appends a ones coordinate to `a`, last. Reduce never forms per-position outer products:
for convolutions, the per-example sum of patches comes from one extra convolution (the gradient
of the summed output w.r.t. a one-output-channel kernel) instead of the patches. All statistics
are computed in float32 whatever the compute dtype, with the default matmul precision
(`jax_default_matmul_precision`); im2col patches are extracted at `HIGHEST` precision, so they
are exact copies of the input. A layer called several times accumulates
the statistics of all its calls (its calls are extra weight-sharing positions; see
`kfac.capture`), which is why they are sums until `expand_factors` / `reduce_factors`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from kfac.capture import ConvGeometry, LayerCall, LayerInfo

FLAVOURS = ('expand', 'reduce')


class RowGroups(NamedTuple):
  """How the rows (first axis) of one layer call belong to the N examples.

  Attributes:
    segment_ids: `[T]` example index of every row (graph layers on nodes or edges), or None
      when row `t` is example `t`.
    example_weights: `[N]` 1 for valid examples, 0 for padding ones.
  """

  segment_ids: Optional[jax.Array]
  example_weights: jax.Array


class ExpandStatistics(NamedTuple):
  """Sums of K-FAC-expand over the calls of a layer: `a_outer [P, P]`, `num_rows []`,
  `g_outer [P_out, P_out]` (`P` = `P_in (+1)`)."""

  a_outer: jax.Array
  num_rows: jax.Array
  g_outer: jax.Array


class ReduceStatistics(NamedTuple):
  """Per-example sums of K-FAC-reduce over the calls of a layer: `a_sum [N, P]` (rows x
  positions), `num_rows [N]`, `g_sum [M, N, P_out]`."""

  a_sum: jax.Array
  num_rows: jax.Array
  g_sum: jax.Array


def row_groups(call: LayerCall, inputs: Any, example_weights: jax.Array) -> RowGroups:
  """The `RowGroups` of a layer call (`call.rows` from `kfac.capture.layer_report`).

  Node and edge rows get segment ids `repeat(arange(n_graph), n_node | n_edge)` with the static
  row count as `total_repeat_length`, so this traces under `jit`.
  """
  if call.rows in ('examples', 'graphs'):
    return RowGroups(segment_ids=None, example_weights=example_weights)
  counts = inputs.n_node if call.rows == 'nodes' else inputs.n_edge
  segment_ids = jnp.repeat(jnp.arange(counts.shape[0]), counts,
                           total_repeat_length=call.input_shape[0])
  return RowGroups(segment_ids=segment_ids, example_weights=example_weights)


def _per_example_sum(values: jax.Array, groups: RowGroups) -> jax.Array:
  """`[T, ...] -> [N, ...]`: sums the rows of every example."""
  if groups.segment_ids is None:
    return values
  return jax.ops.segment_sum(values, groups.segment_ids,
                             num_segments=groups.example_weights.shape[0],
                             indices_are_sorted=True)


def _row_weights(groups: RowGroups) -> jax.Array:
  """`[T]`: the weight (1 valid, 0 padding) of every row's example."""
  if groups.segment_ids is None:
    return groups.example_weights
  return groups.example_weights[groups.segment_ids]


def _conv_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """Channels-last input/output and `[k_1, ..., k_d, c, o]` kernel, like Flax's `nn.Conv`."""
  lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def _conv_input(geometry: ConvGeometry, x: jax.Array) -> jax.Array:
  """Flattens all batch axes into one, `[B, *spatial, c]`, and applies Flax's pre-padding."""
  spatial = len(geometry.kernel_size)
  x = x.reshape((-1,) + x.shape[-(spatial + 1):])
  if geometry.pre_padding is not None:
    mode, pads = geometry.pre_padding
    x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), mode=mode)
  return x


def _conv_patches(geometry: ConvGeometry, x: jax.Array) -> jax.Array:
  """im2col patches `[B, *out_spatial, prod(k) * c]` in HWIO order `(k_1, ..., k_d, c)`."""
  x = _conv_input(geometry, x)
  channels = x.shape[-1]
  patches = lax.conv_general_dilated_patches(
      x, geometry.kernel_size, geometry.strides, geometry.padding,
      lhs_dilation=geometry.input_dilation, rhs_dilation=geometry.kernel_dilation,
      dimension_numbers=_conv_dimension_numbers(x.ndim), precision=lax.Precision.HIGHEST)
  leading = patches.shape[:-1]
  patches = patches.reshape(leading + (channels,) + geometry.kernel_size)  # (c, k...)
  patches = jnp.moveaxis(patches, len(leading), -1)  # (k..., c)
  return patches.reshape(leading + (-1,))


def _conv_patch_sums(geometry: ConvGeometry, x: jax.Array) -> jax.Array:
  """Sum of the im2col patches over output locations, `[B, prod(k) * c]`, HWIO order.

  `sum_r patch_r = d/dK sum_r conv(x, K)_r` for a kernel `K [*k, c, 1]`: one convolution per
  example, no patches materialised.
  """
  x = _conv_input(geometry, x)
  kernel = jnp.zeros(geometry.kernel_size + (x.shape[-1], 1), x.dtype)
  dimension_numbers = _conv_dimension_numbers(x.ndim)

  def summed_output(kernel, example):
    return jnp.sum(lax.conv_general_dilated(
        example[None], kernel, geometry.strides, geometry.padding,
        lhs_dilation=geometry.input_dilation, rhs_dilation=geometry.kernel_dilation,
        dimension_numbers=dimension_numbers, precision=lax.Precision.HIGHEST))

  sums = jax.vmap(jax.grad(summed_output), in_axes=(None, 0))(kernel, x)
  return sums.reshape(x.shape[0], -1)


def input_rows(info: LayerInfo, call: LayerCall, x: jax.Array) -> jax.Array:
  """The layer inputs `a` of a call as `[T, R, P_in]` float32 (without the bias coordinate)."""
  x = x.astype(jnp.float32)
  num_rows = call.input_shape[0]
  if info.kind == 'conv':
    return _conv_patches(info.conv, x).reshape(num_rows, -1, info.p_in)
  shared = [ax for ax in range(x.ndim) if ax not in call.contracted_axes]
  x = jnp.transpose(x, shared + list(call.contracted_axes))
  return x.reshape(num_rows, -1, info.p_in)


def input_row_sums(info: LayerInfo, call: LayerCall, x: jax.Array) -> jax.Array:
  """`sum_r a[t, r]` of a call, `[T, P_in]` float32, without per-position patches for convs."""
  if info.kind == 'conv':
    sums = _conv_patch_sums(info.conv, x.astype(jnp.float32))
    return sums.reshape(call.input_shape[0], -1, info.p_in).sum(axis=1)
  return input_rows(info, call, x).sum(axis=1)


def output_rows(info: LayerInfo, call: LayerCall, g: jax.Array) -> jax.Array:
  """Output gradients `[M, *output_shape]` as `[M, T, R, P_out]` float32.

  The output of every kind is laid out (row axis, shared axes..., output features...).
  """
  return g.astype(jnp.float32).reshape(g.shape[0], call.input_shape[0], -1, info.p_out)


def num_positions(info: LayerInfo, call: LayerCall) -> int:
  """R, the weight-sharing positions per row of a call (output elements per row / P_out)."""
  return int(np.prod(call.output_shape)) // (call.input_shape[0] * info.p_out)


def expand_statistics(info: LayerInfo, call: LayerCall, x: jax.Array, g: jax.Array,
                      groups: RowGroups) -> ExpandStatistics:
  """K-FAC-expand sums of one call: `sum w a a^T`, `sum w` over rows x positions, `sum g g^T`.

  Args:
    info, call: the layer and the call (`kfac.capture`).
    x: the call's input.
    g: `[M, *output_shape]` output gradients, one per cotangent column.
    groups: the call's `RowGroups`.
  """
  a = input_rows(info, call, x)  # [T, R, P_in]
  if info.has_bias:
    a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), a.dtype)], axis=-1)
  weights = _row_weights(groups)  # [T]
  a_outer = jnp.einsum('trp,trq,t->pq', a, a, weights)
  g = output_rows(info, call, g).reshape(-1, info.p_out)
  return ExpandStatistics(a_outer=a_outer, num_rows=jnp.sum(weights) * a.shape[1],
                          g_outer=g.T @ g)


def reduce_statistics(info: LayerInfo, call: LayerCall, x: jax.Array, g: jax.Array,
                      groups: RowGroups) -> ReduceStatistics:
  """K-FAC-reduce per-example sums of one call: `sum_r a`, row x position counts, `sum_r g`.

  Args: as for `expand_statistics`.
  """
  positions = num_positions(info, call)
  a_sum = input_row_sums(info, call, x)  # [T, P_in]
  if info.has_bias:
    a_sum = jnp.concatenate([a_sum, jnp.full(a_sum.shape[:-1] + (1,), positions, a_sum.dtype)],
                            axis=-1)
  num_rows = jnp.full((call.input_shape[0],), positions, jnp.float32)
  g_sum = output_rows(info, call, g).sum(axis=2)  # [M, T, P_out]
  return ReduceStatistics(
      a_sum=_per_example_sum(a_sum, groups), num_rows=_per_example_sum(num_rows, groups),
      g_sum=jax.vmap(lambda values: _per_example_sum(values, groups))(g_sum))


def expand_factors(statistics: ExpandStatistics) -> Tuple[jax.Array, jax.Array]:
  """`(A, B)` of K-FAC-expand from the summed statistics of a layer's calls."""
  a_factor = statistics.a_outer / jnp.maximum(statistics.num_rows, 1.0)
  return a_factor, statistics.g_outer


def reduce_factors(statistics: ReduceStatistics,
                   example_weights: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """`(A, B)` of K-FAC-reduce from the summed statistics of a layer's calls.

  `A` averages `abar abar^T` over the valid examples that have rows in this layer (a graph
  without edges has none in an edge layer); `B` sums `gsum gsum^T`.
  """
  has_rows = example_weights * (statistics.num_rows > 0)
  a_mean = statistics.a_sum / jnp.maximum(statistics.num_rows, 1.0)[:, None]
  a_factor = jnp.einsum('np,nq,n->pq', a_mean, a_mean, has_rows) / jnp.maximum(
      jnp.sum(has_rows), 1.0)
  g_sum = statistics.g_sum.reshape(-1, statistics.g_sum.shape[-1])
  return a_factor, g_sum.T @ g_sum


def layer_factors(info: LayerInfo, flavour: str, layer_inputs: Sequence[jax.Array],
                  output_gradients: Sequence[jax.Array],
                  groups: Sequence[RowGroups]) -> Tuple[jax.Array, jax.Array]:
  """`(A [P_in(+1), P_in(+1)], B [P_out, P_out])` of one layer over all its calls.

  Args:
    info: the layer (`kfac.capture.LayerInfo`).
    flavour: `'expand'` or `'reduce'`.
    layer_inputs: the input of every call.
    output_gradients: `[M, *output_shape]` of every call.
    groups: the `RowGroups` of every call.
  """
  if flavour not in FLAVOURS:
    raise ValueError(f'flavour must be one of {FLAVOURS}; got {flavour!r}')
  statistics_fn = expand_statistics if flavour == 'expand' else reduce_statistics
  per_call = [statistics_fn(info, call, x, g, call_groups) for call, x, g, call_groups
              in zip(info.calls, layer_inputs, output_gradients, groups)]
  total = jax.tree_util.tree_map(lambda *values: sum(values), *per_call)
  if flavour == 'expand':
    return expand_factors(total)
  return reduce_factors(total, groups[0].example_weights)
