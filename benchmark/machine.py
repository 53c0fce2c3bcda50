"""Where a measurement ran, for the benchmark reports in `docs/`: the machine's lines and XLA's
account of a compiled program's memory.

Our machines are shared, so every report states the load next to its times, and readers compare
ratios measured in one run rather than absolute times across runs.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any, List

import flax
import jax
import optax

from benchmark.runner import cpu_model

MIB = 2.0**20


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
      f'- JAX {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, '
      f'Python {platform.python_version()}',
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
