"""Data-parallel shardings over all devices: what upstream's `algoperf.jax_sharding_utils` gives
submissions, on `jax.sharding`.

One mesh axis, `'batch'`, over every device (of every process: `jax.devices()` is global after
`jax.distributed.initialize`). Parameters and optimiser state are replicated; batches are split
along their leading (example) dimension, which must divide by the device count. On one device
both shardings are trivial and every function is a plain `device_put`.

Several processes: every process holds the same host value (the same batch drawn from the same
seeded pipeline, the same parameters from the same seed) and each builds only its own devices'
pieces of the global array from it (`jax.make_array_from_callback`); nothing is sent between
hosts to place an array. Leaves that are not arrays (functions in an optimiser state, Python
numbers) pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from contract.errors import BenchmarkError

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


def check_divisible(batch_size: int, what: str = 'batch size') -> None:
  """Raises BenchmarkError unless `batch_size` divides by the number of devices."""
  devices = jax.device_count()
  if batch_size % devices:
    raise BenchmarkError(
        f'the {what} {batch_size} does not divide by the {devices} devices: every device '
        f'takes an equal share of each batch; choose a multiple of {devices} or fewer devices '
        f'(CUDA_VISIBLE_DEVICES)')


def place(x: Any, sharding: NamedSharding) -> Any:
  """`x` (an array; other leaves unchanged) as a global array with `sharding`, built on each
  process from its own host copy of the whole value (see the module docstring)."""
  if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
    return x
  if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)  # Within one process, or global to global.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_along_batch_dim(tree: Any) -> Any:
  """Every array of `tree` placed with `get_batch_dim_sharding()`.

  Raises:
    BenchmarkError: an array's leading dimension does not divide by the device count.
  """
  sharding = get_batch_dim_sharding()

  def shard(x: Any) -> Any:
    if isinstance(x, (jax.Array, np.ndarray)):
      check_divisible(x.shape[0] if x.ndim else 1, 'leading dimension')
    return place(x, sharding)

  return jax.tree_util.tree_map(shard, tree)


def replicate(tree: Any) -> Any:
  """Every array of `tree` placed with `get_replicate_sharding()`."""
  sharding = get_replicate_sharding()
  return jax.tree_util.tree_map(lambda x: place(x, sharding), tree)


def display_shard_info(x: jax.Array) -> None:
  """Prints each addressable shard's device, index and replica id."""
  for shard in x.addressable_shards:
    print(f'shard.device: {shard.device}, index: {shard.index}, replica_id: {shard.replica_id}.')
