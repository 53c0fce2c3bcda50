"""Processes and compilation: `jax.distributed` for runs over several hosts, and JAX's persistent
compilation cache.

Several processes (one per host, each seeing its own GPUs) run the same command; after
`jax.distributed.initialize` every process sees all devices (`jax.devices()`), the train step is
one program over the mesh of all of them, and each process places its own devices' shards of
every batch (`contract.sharding`). Every process computes the same trials, hyperparameters and
seeds from the same flags and files (checked with `agree`); only process 0 writes files
(`is_writer`): the experiment folder must be on a file system every host reads (docs/scaling.md).

The compilation cache keeps XLA's compiled programs on disk, keyed by the program and the
compiler and device versions, so trials 2..n of a study and reruns load K-FAC's train step
instead of compiling it again (tracing still runs).
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from contract.errors import BenchmarkError

# Programs that compile faster than this are not written to the cache (jax's default is 1 s;
# K-FAC's statistics and inverse steps compile in seconds, a plain step in about one).
CACHE_MIN_COMPILE_SECS = 0.2


def default_compilation_cache_dir() -> str:
  """`$XDG_CACHE_HOME/kfac-bench/jax` (`~/.cache/kfac-bench/jax` when unset)."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'kfac-bench', 'jax')


def enable_compilation_cache(directory: Optional[str]) -> Optional[str]:
  """Turns JAX's persistent compilation cache on in `directory` (None or '': off); returns it."""
  if not directory:
    return None
  directory = os.path.abspath(os.path.expanduser(directory))
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', CACHE_MIN_COMPILE_SECS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def slurm_num_tasks() -> int:
  """The tasks of the SLURM job step this process belongs to (1 outside SLURM)."""
  return int(os.environ.get('SLURM_NTASKS', '1'))


def initialize(coordinator_address: Optional[str], num_processes: Optional[int],
               process_id: Optional[int]) -> None:
  """`jax.distributed.initialize` when this is one of several processes: from the flags, or
  from a SLURM job step's environment (jax reads `SLURM_*`); nothing for a single process.

  Must run before anything touches a jax device.
  """
  given = [coordinator_address, num_processes, process_id]
  if all(value is None for value in given):
    if slurm_num_tasks() > 1:
      jax.distributed.initialize()
    return
  if any(value is None for value in given):
    raise BenchmarkError('--coordinator_address, --num_processes and --process_id go together')
  if not 0 <= process_id < num_processes:
    raise BenchmarkError(f'--process_id={process_id} is not in [0, {num_processes})')
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def is_writer() -> bool:
  """Whether this process writes the experiment's files (process 0; the only one alone)."""
  return jax.process_index() == 0


def agree(description: str) -> None:
  """Raises BenchmarkError unless every process passes the same `description` (a trial's
  hyperparameters and seed, say); nothing with one process."""
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(description.encode()).digest()[:8], np.int32)
  try:
    multihost_utils.assert_equal(digest, f'processes disagree on {description}')
  except AssertionError as e:
    raise BenchmarkError(str(e)) from e


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
