"""Loads a submission module by path or module name and checks it defines the submission API."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any, Callable

from contract.errors import BenchmarkError

SUBMISSION_FUNCTIONS = ('get_batch_size', 'init_optimizer_state', 'update_params',
                        'data_selection', 'prepare_for_eval')
REQUIRED_SUBMISSION_FUNCTIONS = ('get_batch_size', 'init_optimizer_state', 'update_params',
                                 'data_selection')


def load_submission(path_or_module: str) -> types.ModuleType:
  """Imports a submission by file path (`submissions/ogbg_molpcba/nesterov.py`) or module name
  (`submissions.ogbg_molpcba.nesterov`) and checks that it defines the submission API.

  `prepare_for_eval` is optional (AlgoPerf v0.6): a module without it gets a pass-through.

  Raises:
    BenchmarkError: the file or module does not exist, fails to import, or misses a function.
  """
  if path_or_module.endswith('.py') or os.sep in path_or_module:
    path = os.path.abspath(path_or_module)
    if not os.path.isfile(path):
      raise BenchmarkError(f'submission file {path_or_module!r} does not exist')
    name = 'submission_' + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
      sys.modules[name] = module
      spec.loader.exec_module(module)
    except Exception as e:  # The user's module: report its failure in one line.
      raise BenchmarkError(
          f'submission {path_or_module!r} failed to import: {type(e).__name__}: {e}') from e
  else:
    try:
      module = importlib.import_module(path_or_module)
    except ModuleNotFoundError as e:
      raise BenchmarkError(f'submission module {path_or_module!r} not found ({e})') from e
  missing = [f for f in REQUIRED_SUBMISSION_FUNCTIONS if not callable(getattr(module, f, None))]
  if missing:
    raise BenchmarkError(
        f'submission {path_or_module!r} is missing required function(s): {", ".join(missing)}')
  if not callable(getattr(module, 'prepare_for_eval', None)):
    module.prepare_for_eval = _pass_through_prepare_for_eval
  return module


def submission_name(path_or_module: str) -> str:
  """`submissions/ogbg_molpcba/kfac_reduce.py` or `submissions.ogbg_molpcba.kfac_reduce` ->
  `kfac_reduce`."""
  if path_or_module.endswith('.py'):
    return os.path.splitext(os.path.basename(path_or_module))[0]
  return path_or_module.rsplit('.', 1)[-1]


def _pass_through_prepare_for_eval(workload, current_param_container, current_params_types,
                                   model_state, hyperparameters, loss_type, optimizer_state,
                                   eval_results, global_step, rng):
  del workload, current_params_types, hyperparameters, loss_type, eval_results, global_step, rng
  return optimizer_state, current_param_container, model_state


SubmissionFn = Callable[..., Any]
