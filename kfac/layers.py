"""K-FAC-expand and K-FAC-reduce statistics of linear weight-sharing layers, as rows.

A covered layer call maps `a[t, r, :]` to `s[t, r, :] = a[t, r, :] @ W` (+ bias), `W [P_in, P_out]`:
`t` runs over the rows of the layer input (its example axis, `kfac.example_axis`) and `r` over
the weight-sharing positions of a row (Eschenhagen et al. 2023, section 3):

* Dense / DenseGeneral: every axis but the row axis and the contracted (feature) axes is shared
  (sequence tokens, attention heads...); DenseGeneral's contracted axes are flattened into P_in.
* Conv: `a` is the im2col patch of an output location (`kfac.conv`), R = output locations.
* Graphs: a row is a node, an edge or a graph; rows belong to examples (graphs) through
  `n_node`/`n_edge` (`kfac.graph_rows`). Global layers have one row per graph (R = 1).

With `g[m, t, r, :]` the output gradients for cotangent column `m` (`kfac.losses`), `w_n` the
example weights (1 valid, 0 padding), `N = sum_n w_n` and `R_n` the rows x positions of example n:

* expand: `A = sum_{n, r} w_n a a^T / sum_n w_n R_n`, `B = sum_{m, n, r} w_n g g^T`;
* reduce: `A = 1/N' sum_n w'_n abar_n abar_n^T`, `abar_n` the mean of `a` over the rows and
  positions of example n, `w'_n = w_n [R_n > 0]`, `N' = sum_n w'_n`;
  `B = sum_{m, n} w_n gsum_nm gsum_nm^T`, `gsum` the sum of `g` over them.

Both are returned as rows (`kfac.blocks.LayerStatistics`): `A = a_rows^T a_rows`,
`B = g_rows^T g_rows`, with the weights and scalings folded into the rows (expand: `N R` rows;
reduce: N rows; example-major, so a batch sharded over devices by examples splits them into
contiguous chunks, `kfac.distributed_statistics`). Padding examples are masked out of `B` too:
through a coupling across the batch (BatchNorm in training mode) a padding example's output
gradient is not zero.

Why these scalings: the exact GGN block of the batch-mean loss is
`sum_{n, m} (sum_r a_nr kron g_nrm)(sum_r a_nr kron g_nrm)^T` (the loss's `1/N` is inside `g`).
For a deep linear network with a per-position loss the block is `A_expand kron B_expand`; with the
positions reduced before the loss it is `A_reduce kron B_reduce` (tests/test_kfac_factors.py).

A bias appends a ones coordinate to `a`, last. Reduce never forms per-position outer products
(for convolutions the per-example patch sums come from one extra convolution). All statistics are
float32 whatever the compute dtype. A layer called several times gets the rows of all its calls.
"""

from __future__ import annotations

from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kfac import conv, graph_rows
from kfac.blocks import LayerStatistics
from kfac.graph_rows import RowGroups
from kfac.tracing import LayerCall, LayerInfo

FLAVOURS = ('expand', 'reduce')


def input_rows(info: LayerInfo, call: LayerCall, x: jax.Array) -> jax.Array:
  """The layer inputs `a` of a call as `[T, R, P_in]` float32 (without the bias coordinate)."""
  x = x.astype(jnp.float32)
  if info.kind == 'conv':
    x = jnp.moveaxis(x, call.example_axis, 0)
    return conv.conv_patches(info.conv, x).reshape(call.num_rows, -1, info.p_in)
  shared = [ax for ax in range(x.ndim)
            if ax not in call.contracted_axes and ax != call.example_axis]
  x = jnp.transpose(x, [call.example_axis] + shared + list(call.contracted_axes))
  return x.reshape(call.num_rows, -1, info.p_in)


def input_row_sums(info: LayerInfo, call: LayerCall, x: jax.Array) -> jax.Array:
  """`sum_r a[t, r]` of a call, `[T, P_in]` float32, without per-position patches for convs."""
  if info.kind == 'conv':
    x = jnp.moveaxis(x.astype(jnp.float32), call.example_axis, 0)
    sums = conv.conv_patch_sums(info.conv, x)
    return sums.reshape(call.num_rows, -1, info.p_in).sum(axis=1)
  return input_rows(info, call, x).sum(axis=1)


def output_rows(info: LayerInfo, call: LayerCall, g: jax.Array) -> jax.Array:
  """Output gradients `[M, *output_shape]` as `[M, T, R, P_out]` float32.

  The output of every kind is laid out (leading axes..., output features...).
  """
  g = jnp.moveaxis(g.astype(jnp.float32), 1 + call.output_example_axis, 1)
  return g.reshape(g.shape[0], call.num_rows, -1, info.p_out)


def num_positions(info: LayerInfo, call: LayerCall) -> int:
  """R, the weight-sharing positions per row of a call (output elements per row / P_out)."""
  return int(np.prod(call.output_shape)) // (call.num_rows * info.p_out)


def _with_bias_coordinate(a: jax.Array, info: LayerInfo, value: float) -> jax.Array:
  """`a [..., P_in]` with the bias coordinate `value` appended last when the layer has a bias."""
  if not info.has_bias:
    return a
  return jnp.concatenate([a, jnp.full(a.shape[:-1] + (1,), value, a.dtype)], axis=-1)


def expand_statistics(info: LayerInfo, layer_inputs: Sequence[jax.Array],
                      output_gradients: Sequence[jax.Array],
                      groups: Sequence[RowGroups]) -> LayerStatistics:
  """K-FAC-expand rows of a layer over all its calls: `a_rows [sum_calls T R, dim_a]`,
  `g_rows [sum_calls T M R, P_out]` (see the module docstring)."""
  a_rows: List[jax.Array] = []
  g_rows: List[jax.Array] = []
  count, a_sum = 0.0, 0.0
  for call, x, g, call_groups in zip(info.calls, layer_inputs, output_gradients, groups):
    a = _with_bias_coordinate(input_rows(info, call, x), info, 1.0)  # [T, R, dim_a]
    weights = graph_rows.row_weights(call_groups)  # [T]
    a_rows.append((a * jnp.sqrt(weights)[:, None, None]).reshape(-1, a.shape[-1]))
    g_rows.append(jnp.swapaxes(output_rows(info, call, g) * weights[None, :, None, None], 0, 1
                               ).reshape(-1, info.p_out))  # Example-major: [T M R, P_out].
    count = count + jnp.sum(weights) * a.shape[1]
    a_sum = a_sum + jnp.einsum('trp,t->p', a, weights)
  count = jnp.maximum(count, 1.0)
  return LayerStatistics(a_rows=jnp.concatenate(a_rows) / jnp.sqrt(count),
                         g_rows=jnp.concatenate(g_rows), a_mean=a_sum / count)


def reduce_statistics(info: LayerInfo, layer_inputs: Sequence[jax.Array],
                      output_gradients: Sequence[jax.Array],
                      groups: Sequence[RowGroups]) -> LayerStatistics:
  """K-FAC-reduce rows of a layer over all its calls: `a_rows [N, dim_a]` (the weighted,
  scaled per-example means), `g_rows [N M, P_out]` (the masked per-example sums)."""
  a_sum, num_rows, g_sum = 0.0, 0.0, 0.0
  for call, x, g, call_groups in zip(info.calls, layer_inputs, output_gradients, groups):
    positions = num_positions(info, call)
    call_a = _with_bias_coordinate(input_row_sums(info, call, x), info, positions)  # [T, dim_a]
    a_sum = a_sum + graph_rows.per_example_sum(call_a, call_groups)
    num_rows = num_rows + graph_rows.per_example_sum(
        jnp.full((call.num_rows,), positions, jnp.float32), call_groups)
    call_g = output_rows(info, call, g).sum(axis=2)  # [M, T, P_out]
    g_sum = g_sum + jax.vmap(lambda values, grp=call_groups: graph_rows.per_example_sum(
        values, grp))(call_g)
  weights = groups[0].example_weights  # [N]
  has_rows = weights * (num_rows > 0)
  a_bar = a_sum / jnp.maximum(num_rows, 1.0)[:, None]
  a_rows = a_bar * jnp.sqrt(has_rows / jnp.maximum(jnp.sum(has_rows), 1.0))[:, None]
  a_mean = jnp.einsum('np,n->p', a_sum, weights) / jnp.maximum(jnp.sum(weights * num_rows), 1.0)
  g_rows = jnp.swapaxes(g_sum * weights[None, :, None], 0, 1).reshape(-1, info.p_out)  # [N M, .]
  return LayerStatistics(a_rows=a_rows, g_rows=g_rows, a_mean=a_mean)


def layer_statistics(info: LayerInfo, flavour: str, layer_inputs: Sequence[jax.Array],
                     output_gradients: Sequence[jax.Array],
                     groups: Sequence[RowGroups]) -> LayerStatistics:
  """The `LayerStatistics` of one layer over all its calls.

  Args:
    info: the layer (`kfac.tracing.LayerInfo`).
    flavour: `'expand'` or `'reduce'`.
    layer_inputs: the input of every call.
    output_gradients: `[M, *output_shape]` of every call.
    groups: the `RowGroups` of every call.
  """
  if flavour not in FLAVOURS:
    raise ValueError(f'flavour must be one of {FLAVOURS}; got {flavour!r}')
  statistics_fn = expand_statistics if flavour == 'expand' else reduce_statistics
  return statistics_fn(info, layer_inputs, output_gradients, groups)
