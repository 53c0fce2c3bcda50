"""Where a measurement ran: the environment of a trial (versions, devices, git commit), the
machine lines of the benchmark reports in `docs/`, and XLA's account of a program's memory.

Our machines are shared, so every report states the load next to its times, and readers compare
ratios measured in one run rather than absolute times across runs.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any, Dict, List, Optional

import jax

MIB = 2.0**20
_HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def package_version(name: str) -> Optional[str]:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def _git(*args: str) -> Optional[str]:
  try:
    done = subprocess.run(['git', *args], capture_output=True, text=True, cwd=_HERE, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def environment_metadata() -> Dict[str, Any]:
  """Versions, device and git commit: what a result folder needs to be reproduced."""
  devices = jax.devices()
  commit = _git('rev-parse', 'HEAD')
  status = _git('status', '--porcelain')
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'python': sys.version.split()[0],
      'platform': platform.platform(),
      'processor': cpu_model(),
      'cpu_count': os.cpu_count(),
      'jax': jax.__version__,
      'jaxlib': package_version('jaxlib'),
      'flax': package_version('flax'),
      'optax': package_version('optax'),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'num_devices': len(devices),  # The mesh of the data-parallel train step: all devices.
      'num_processes': jax.process_count(),
      'process_index': jax.process_index(),
      'backend': jax.default_backend(),
      'jax_default_matmul_precision': str(jax.config.jax_default_matmul_precision),
      'jax_enable_x64': bool(jax.config.jax_enable_x64),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'git_commit': commit or None,
      'git_dirty': None if status is None else bool(status),
  }


def machine_lines() -> List[str]:
  """Markdown bullet lines: CPU model, cores and load average now, the jax device, library
  versions and the UTC date."""
  load = ', '.join(f'{value:.1f}' for value in os.getloadavg())
  devices = jax.devices()
  device = devices[0]
  return [
      f'- CPU: {cpu_model()}, {os.cpu_count()} cores; load average at the end: {load} '
      '(a shared machine: compare ratios measured in one run, not absolute times across runs)',
      f'- Device: {len(devices)} x {device.platform} ({device.device_kind})',
      f'- JAX {jax.__version__}, flax {package_version("flax")}, '
      f'optax {package_version("optax")}, Python {platform.python_version()}',
      f'- Date: {datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}',
  ]


def peak_mib(compiled: Any) -> float:
  """XLA's peak of a compiled program: arguments + outputs + temporaries - aliased, in MiB.

  From XLA's static buffer assignment (`compiled.memory_analysis()`): per program and
  deterministic, the same on CPU and accelerators; NaN where the backend does not report it.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return float('nan')
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
           + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return total / MIB


# Loggers whose INFO lines are noise to a user: jax's "Unable to initialize backend 'tpu'" on every
# CPU machine, orbax's lines for every checkpoint write (absl).
QUIET_LOGGERS = ('jax._src.xla_bridge', 'jax._src.compiler', 'absl')


def quiet_library_logs() -> None:
  """Raise the libraries' noisy loggers to WARNING (call before jax initialises its backends)."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
