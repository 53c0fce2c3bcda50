"""The workload registry: name -> Workload class, imported lazily (TensorFlow stays unloaded
until a workload that needs it is built).

Names are upstream AlgoPerf's base workload names (`ogbg`, `imagenet_vit`, `cifar`) for the full
configs; the other configs are variants named `<base>_<config>` (`ogbg_small`, `ogbg_tiny`,
`imagenet_vit_small`, `cifar_tiny`, ...). The folders keep the data sets' names
(`workloads/ogbg_molpcba/`, `workloads/cifar_wrn/`).
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional, Tuple

from contract.errors import BenchmarkError
from contract.workload import Workload

# name -> (module, class name)
WORKLOADS: Dict[str, Tuple[str, str]] = {
    'ogbg': ('workloads.ogbg_molpcba.workload', 'OgbgMolpcbaWorkload'),
    'imagenet_vit': ('workloads.imagenet_vit.workload', 'ImagenetVitWorkload'),
    'cifar': ('workloads.cifar_wrn.workload', 'CifarWrnWorkload'),
}


def split_variant(variant_name: str) -> Tuple[str, str]:
  """`ogbg_small` -> (`ogbg`, `small`); `ogbg` -> (`ogbg`, `full`).

  Raises:
    BenchmarkError: no workload has that name, or its config is not one of the workload's.
  """
  for name in WORKLOADS:
    if variant_name == name:
      return name, 'full'
    if variant_name.startswith(name + '_'):
      config_name = variant_name[len(name) + 1:]
      if config_name not in workload_class(name).config_names:
        raise BenchmarkError(f'unknown config {config_name!r} for workload {name!r} '
                             f'(from {variant_name!r})')
      return name, config_name
  raise BenchmarkError(
      f'unknown workload {variant_name!r}; choose one of {", ".join(sorted(WORKLOADS))}')


def workload_class(name: str):
  if name not in WORKLOADS:
    raise BenchmarkError(
        f'unknown workload {name!r}; choose one of {", ".join(sorted(WORKLOADS))}')
  module_name, class_name = WORKLOADS[name]
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    raise BenchmarkError(f'workload {name!r} is not available: {e}') from e
  return getattr(module, class_name)


def get_workload(name: str, config_name: str = 'small', data_dir: Optional[str] = None,
                 data_source: Optional[str] = None) -> Workload:
  """Builds a workload by name and config (`full`, `small`, `tiny`)."""
  return workload_class(name)(config_name=config_name, data_dir=data_dir,
                              data_source=data_source)

