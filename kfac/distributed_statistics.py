"""Data-parallel curvature statistics: every device's share of the batch, reduced with ONE
all-reduce per statistics step (activations and output gradients never leave their device).

Everything here runs inside `jax.shard_map` over one data axis of a `Mesh` (no `pmap`), so it
works under `jax.jit` with `NamedSharding`-placed arguments, on one host or many. Communication
per statistics step: one all-reduce of `sum_layers (dim_a^2 + dim_b^2)` floats (plus counts),
independent of the batch size. XLA's own partitioning of a jitted statistics pass reduces the
factors' partial products itself (measured on 4 forced CPU devices, a WRN tiny K-FAC-reduce train
step: 36 all-reduces that way, 26 with `summed_over_devices`; docs/scaling.md).

**Sums** (`summed_over_devices`, what `kfac.curvature` uses). The rows of `kfac.layers` carry
every global scaling (`1/N`, masks, MC samples), so a block statistic that is a sum over rows
(a Gram matrix `X^T X`, its diagonal) of the whole batch is the sum over devices of the
statistics of each device's contiguous chunk of rows:

    X^T X = sum_d X_d^T X_d,      X = concat_d X_d  ([n, dim], X_d [n / D, dim]).        (1)

**Means** (`mean_over_devices`, for statistics each device normalised by its own valid count
`n_d`, e.g. `A_d = (1/n_d) sum_{i in d} a_i a_i^T`): the global batch's is the count-weighted mean

    A = sum_d n_d A_d / sum_d n_d                                                          (2)

(the same for every leaf: `B`, mean activations, ...).

Both flatten every leaf of the pytree into one buffer (with the counts, for (2)), sum it over the
axis with one `lax.psum`, and split it again.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from kfac.blocks import LayerStatistics


def _concatenate(leaves: Sequence[jax.Array], dtype: Any) -> jax.Array:
  """The leaves raveled, cast to `dtype` and concatenated: `[sum_i size_i]`."""
  return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])


def _split(flat: jax.Array, like: Sequence[jax.Array]) -> List[jax.Array]:
  """Inverse of `_concatenate`: pieces of `flat` with the shapes and dtypes of `like`."""
  offsets = np.cumsum([0] + [int(np.prod(leaf.shape)) for leaf in like])
  return [flat[start:stop].reshape(leaf.shape).astype(leaf.dtype)
          for start, stop, leaf in zip(offsets[:-1], offsets[1:], like)]


def psum_tree(tree: Any, axis_name: str) -> Any:
  """`tree` summed over `axis_name` with one all-reduce of all its leaves (inside `shard_map`)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if not leaves:
    return tree
  dtype = jnp.result_type(jnp.float32, *leaves)
  total = jax.lax.psum(_concatenate(leaves, dtype), axis_name)
  return jax.tree_util.tree_unflatten(treedef, _split(total, leaves))


def mean_over_devices(statistics: Any, num_valid: Any, axis_name: str) -> Tuple[Any, Any]:
  """The global batch's statistics from each device's own, with one all-reduce: equation (2).

  Call inside `jax.shard_map` (or any context binding `axis_name`).

  Args:
    statistics: this device's pytree of floating arrays, each a mean over its valid examples
      (e.g. `{layer: (A [dim_a, dim_a], B [dim_b, dim_b])}`). Ignored (may be NaN) where its
      count is 0.
    num_valid: this device's count `n_d` that the statistics were divided by (may differ per
      device): a scalar for all, or a pytree prefix of `statistics` giving each subtree its own
      count (e.g. `{layer: n}` when a graph layer averages over valid nodes, another over
      valid graphs).
    axis_name: the mesh axis the batch is sharded over.

  Returns:
    `(sum_d n_d s_d / sum_d n_d, sum_d n_d)`: the statistics (same structure, shapes and dtypes,
    zeros where no device has a valid example) and the global counts (structure of
    `num_valid`), the same on every device.
  """
  leaves, treedef = jax.tree_util.tree_flatten(statistics)
  count_leaves, count_def = jax.tree_util.tree_flatten(num_valid)
  dtype = jnp.result_type(jnp.float32, *leaves)
  counts = [jnp.asarray(count, dtype) for count in count_leaves]
  # Which count each statistics leaf was divided by.
  owner = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda index, subtree: jax.tree_util.tree_map(lambda _: index, subtree),
      jax.tree_util.tree_unflatten(count_def, range(len(counts))), statistics))
  weighted = [jnp.where(counts[i] > 0, leaf.astype(dtype) * counts[i], 0)
              for i, leaf in zip(owner, leaves)]
  global_counts, sums = psum_tree((counts, weighted), axis_name)
  means = [(total_leaf / jnp.maximum(global_counts[i], 1)).astype(leaf.dtype)
           for i, total_leaf, leaf in zip(owner, sums, leaves)]
  return (jax.tree_util.tree_unflatten(treedef, means),
          jax.tree_util.tree_unflatten(count_def, global_counts))


def sharded_mean_statistics(statistics_fn: Callable[..., Tuple[Any, jax.Array]], mesh: Mesh,
                            axis_name: str, in_specs: Any) -> Callable[..., Tuple[Any, jax.Array]]:
  """`statistics_fn` run on each device's shard, averaged with `mean_over_devices`.

  Args:
    statistics_fn: `(*args) -> (statistics, num_valid)` of one shard (see `mean_over_devices`;
      fold `lax.axis_index(axis_name)` into any sampling key so devices draw independently).
    mesh: the devices; `axis_name` one of its axes.
    axis_name: the data axis.
    in_specs: `PartitionSpec`s of `args` (e.g. `(P(), P(axis_name))` for replicated parameters
      and a batch sharded along its leading dimension).

  Returns:
    `(*args) -> (global statistics, global valid counts)`, replicated; jittable.
  """
  def on_device(*args):
    return mean_over_devices(*statistics_fn(*args), axis_name)

  # check_vma=False: each device differentiates its own shard only. With it on, the cotangent of
  # a value the same on every device (a replicated parameter, a zero probe built from it) is
  # summed over the axis in the backward pass, and K-FAC's output-gradient rows would hold the
  # other devices' gradients (measured: wrong B factors). The one psum above is explicit.
  return jax.shard_map(on_device, mesh=mesh, in_specs=in_specs,
                       out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)


def rows_divide(rows: LayerStatistics, num_devices: int) -> bool:
  """Whether both row counts of `rows` split into `num_devices` equal chunks."""
  return rows.a_rows.shape[0] % num_devices == 0 and rows.g_rows.shape[0] % num_devices == 0


def summed_over_devices(statistics_fns: Mapping[Any, Callable[[LayerStatistics], Any]],
                        rows: Mapping[Any, LayerStatistics], mesh: Mesh, axis_name: str
                        ) -> dict:
  """`{layer: statistics_fns[layer](rows[layer])}` by equation (1): each device applies the
  functions to its chunk of every layer's `a_rows` and `g_rows`, and the results of all layers
  are summed with one all-reduce. Jittable (a `shard_map`); replicated results.

  Args:
    statistics_fns: `{layer: LayerStatistics -> pytree}`, each a sum over rows (a Gram matrix or
      its diagonal: blocks with `additive=True`); `a_mean` is passed whole (replicated).
    rows: `{layer: LayerStatistics}` of the global batch, `a_rows [n_a, dim_a]` and
      `g_rows [n_b, dim_b]` with `n_a`, `n_b` divisible by the axis size (`rows_divide`). The
      chunks are contiguous: rows that `kfac.layers` lays out example-major are already where
      the batch's shards put them; others are moved by XLA, correctly.
    mesh, axis_name: the devices and the data axis.
  """
  layers = list(statistics_fns)
  data = PartitionSpec(axis_name)
  specs = {layer: LayerStatistics(data, data, PartitionSpec()) for layer in layers}

  def on_device(chunks: Mapping[Any, LayerStatistics]) -> dict:
    return psum_tree({layer: statistics_fns[layer](chunks[layer]) for layer in layers}, axis_name)

  return jax.shard_map(on_device, mesh=mesh, in_specs=(specs,), out_specs=PartitionSpec(),
                       check_vma=False)({layer: rows[layer] for layer in layers})
