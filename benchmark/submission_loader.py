"""Loads a submission by path or module name and binds its functions (`contract.submission.bind`).

Upstream AlgoPerf submissions import `from algoperf import spec, jax_sharding_utils`. When the
real `algoperf` package is installed it is used; otherwise `install_algoperf_names` makes those
names importable, mapped onto this project's contract (`contract.spec`, `contract.sharding`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

from contract import sharding, spec
from contract.errors import BenchmarkError
from contract.submission import Submission, bind, missing_functions

ALGOPERF_MODULES = {'algoperf.spec': spec, 'algoperf.jax_sharding_utils': sharding}


def install_algoperf_names() -> bool:
  """Makes `algoperf`, `algoperf.spec` and `algoperf.jax_sharding_utils` importable, mapped onto
  the contract, unless an `algoperf` package is installed or already imported.

  Returns:
    Whether this call installed the stand-ins.
  """
  if 'algoperf' in sys.modules or importlib.util.find_spec('algoperf') is not None:
    return False
  package = types.ModuleType('algoperf', 'Stand-in for MLCommons AlgoPerf (docs/contract.md).')
  package.__path__ = []
  for name, module in ALGOPERF_MODULES.items():
    setattr(package, name.split('.', 1)[1], module)
    sys.modules[name] = module
  sys.modules['algoperf'] = package
  return True


def submission_name(path_or_module: str) -> str:
  """`submissions/ogbg/kfac_reduce.py` or `submissions.ogbg.kfac_reduce` -> `kfac_reduce`."""
  if path_or_module.endswith('.py'):
    return os.path.splitext(os.path.basename(path_or_module))[0]
  return path_or_module.rsplit('.', 1)[-1]


def _import(path_or_module: str) -> types.ModuleType:
  if path_or_module.endswith('.py') or os.sep in path_or_module:
    path = os.path.abspath(path_or_module)
    if not os.path.isfile(path):
      raise BenchmarkError(f'submission file {path_or_module!r} does not exist')
    name = 'submission_' + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
      sys.modules[name] = module
      module_spec.loader.exec_module(module)
    except Exception as e:  # The user's module: report its failure in one line.
      raise BenchmarkError(
          f'submission {path_or_module!r} failed to import: {type(e).__name__}: {e}') from e
    return module
  try:
    return importlib.import_module(path_or_module)
  except ModuleNotFoundError as e:
    raise BenchmarkError(f'submission module {path_or_module!r} not found ({e})') from e


def load_submission(path_or_module: str) -> Submission:
  """Imports a submission by file path (`submissions/ogbg/nesterov.py`) or module name
  (`submissions.ogbg.nesterov`) and binds its functions; the module itself is not modified.

  Raises:
    BenchmarkError: the file or module does not exist, fails to import, or misses a function.
  """
  install_algoperf_names()
  module = _import(path_or_module)
  missing = missing_functions(module)
  if missing:
    raise BenchmarkError(
        f'submission {path_or_module!r} is missing required function(s): {", ".join(missing)}')
  return bind(module, submission_name(path_or_module))
