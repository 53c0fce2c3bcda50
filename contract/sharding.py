"""Data-parallel shardings over all devices: what upstream's `algoperf.jax_sharding_utils` gives
submissions, on `jax.sharding`.

One mesh axis, `'batch'`, over every device. Parameters and optimiser state are replicated;
batches are split along their leading (example) dimension, which must divide by the device
count. On one device both shardings are trivial and every function is a plain `device_put`.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = 'batch'


def get_mesh() -> Mesh:
  """A 1-d mesh over all devices, axis `'batch'`."""
  return Mesh(jax.devices(), (BATCH_AXIS,))


def get_replicate_sharding() -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(get_mesh(), PartitionSpec())


def get_batch_dim_sharding() -> NamedSharding:
  """The leading dimension is split over the devices; the others are whole."""
  return NamedSharding(get_mesh(), PartitionSpec(BATCH_AXIS))


def shard_along_batch_dim(tree: Any) -> Any:
  """Every array of `tree` placed with `get_batch_dim_sharding()`."""
  sharding = get_batch_dim_sharding()
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def replicate(tree: Any) -> Any:
  """Every array of `tree` placed with `get_replicate_sharding()`."""
  sharding = get_replicate_sharding()
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def display_shard_info(x: jax.Array) -> None:
  """Prints each addressable shard's device, index and replica id."""
  for shard in x.addressable_shards:
    print(f'shard.device: {shard.device}, index: {shard.index}, replica_id: {shard.replica_id}.')
