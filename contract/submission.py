"""The submission API: the functions a submission module defines, and the defaults of the optional
ones.

A submission is a plain module. Required (AlgoPerf): `get_batch_size`, `init_optimizer_state`,
`update_params`, `data_selection`. Optional, with the default the runner uses when the module has
none: `prepare_for_eval` (AlgoPerf v0.6; default: pass-through), `get_eval_batch_size` (AlgoPerf;
default: the workload's `eval_batch_size`), and this project's `step_phase(global_step,
hyperparameters) -> str` (the name of the time bucket a step is booked to; default `'step'`) and
`diagnostics(optimizer_state) -> dict` (what the runner records about the optimiser's health;
default `{}`).
`update_params` may take a `train_state` keyword (AlgoPerf): the runner passes a read-only view of
the trial's bookkeeping when the signature names it.

`bind(module)` is the one place that reads a module's functions: the runner calls the returned
`Submission`'s fields and never looks at the module again, and the module is never modified.
The function stubs below document the signatures (they are also `algoperf.spec`'s names).
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional

from contract.types import (Batch, DataSelectionFn, EvalResults, GetBatchSizeFn, Hyperparameters,
                            InitOptimizerFn, LossType, ModelAuxiliaryState, OptimizerState,
                            ParameterContainer, ParameterTypeTree, PrepareForEvalFn, RandomState,
                            StepPhaseFn, UpdateParamsFn, UpdateReturn)

DEFAULT_STEP_PHASE = 'step'


def get_batch_size(workload_name: str) -> int:
  """The global training batch size for a workload name (`ogbg`, or a variant `ogbg_small`).

  Raises ValueError (or KeyError) for a name the submission does not know: the runner then asks
  again with the base name, as upstream's runner does.
  """
  raise NotImplementedError('a submission defines get_batch_size')


def init_optimizer_state(workload: Any, model_params: ParameterContainer,
                         model_state: ModelAuxiliaryState, hyperparameters: Hyperparameters,
                         rng: RandomState) -> OptimizerState:
  """The initial optimiser state. Runs outside the clock (AlgoPerf)."""
  raise NotImplementedError('a submission defines init_optimizer_state')


def update_params(workload: Any, current_param_container: ParameterContainer,
                  current_params_types: ParameterTypeTree, model_state: ModelAuxiliaryState,
                  hyperparameters: Hyperparameters, batch: Batch, loss_type: LossType,
                  optimizer_state: OptimizerState, eval_results: EvalResults, global_step: int,
                  rng: RandomState, train_state: Optional[Dict[str, Any]] = None
                  ) -> UpdateReturn:
  """One training step: `(new optimizer_state, new params, new model_state)`.

  May raise `contract.errors.TrainingCompleteError` to end the trial (after a final evaluation).
  """
  raise NotImplementedError('a submission defines update_params')


def data_selection(workload: Any, input_queue: Iterator[Batch], optimizer_state: OptimizerState,
                   current_param_container: ParameterContainer,
                   model_state: ModelAuxiliaryState, hyperparameters: Hyperparameters,
                   global_step: int, rng: RandomState) -> Batch:
  """The next training batch, from the workload's input queue."""
  raise NotImplementedError('a submission defines data_selection')


def prepare_for_eval(workload: Any, current_param_container: ParameterContainer,
                     current_params_types: ParameterTypeTree, model_state: ModelAuxiliaryState,
                     hyperparameters: Hyperparameters, loss_type: LossType,
                     optimizer_state: OptimizerState, eval_results: EvalResults,
                     global_step: int, rng: RandomState) -> UpdateReturn:
  """The default: evaluate the parameters as they are. Runs on the clock (AlgoPerf v0.6)."""
  del workload, current_params_types, hyperparameters, loss_type, eval_results, global_step, rng
  return optimizer_state, current_param_container, model_state


def step_phase(global_step: int, hyperparameters: Hyperparameters) -> str:
  """The default: every step is booked to the bucket `'step'`."""
  del global_step, hyperparameters
  return DEFAULT_STEP_PHASE


def diagnostics(optimizer_state: OptimizerState) -> Dict[str, Any]:
  """The default: nothing to report. Called by the runner off the clock, after a run's first
  step and at every evaluation. Every key is optional:

    `curvature_report`: str, the optimiser's curvature report (written to the trial's folder);
    `curvature_report_rows`: [{'parameter', 'block', 'fallback', ...}], the same as records;
    `rejected_updates`: {layer: int}, non-finite curvature updates rejected so far;
    `consecutive_rejected_updates`: {layer: int}, rejections since the layer's last accepted
      statistics update (a trial is marked degraded when one exceeds the runner's limit).
  """
  del optimizer_state
  return {}


REQUIRED_FUNCTIONS = ('get_batch_size', 'init_optimizer_state', 'update_params',
                      'data_selection')


class Submission(NamedTuple):
  """A submission module's functions, optional ones filled with their defaults."""
  name: str
  get_batch_size: GetBatchSizeFn
  init_optimizer_state: InitOptimizerFn
  update_params: UpdateParamsFn
  data_selection: DataSelectionFn
  prepare_for_eval: PrepareForEvalFn
  step_phase: StepPhaseFn
  diagnostics: Callable[[OptimizerState], Dict[str, Any]]
  get_eval_batch_size: Optional[GetBatchSizeFn]  # None: the workload's eval_batch_size.
  update_params_takes_train_state: bool


def missing_functions(module: types.ModuleType) -> list:
  """The required functions that `module` does not define (as callables)."""
  return [f for f in REQUIRED_FUNCTIONS if not callable(vars(module).get(f))]


def bind(module: types.ModuleType, name: str) -> Submission:
  """The module's submission functions; optional ones it does not define get the defaults.

  Raises:
    ValueError: a required function is missing (`missing_functions` names them).
  """
  missing = missing_functions(module)
  if missing:
    raise ValueError(f'missing required function(s): {", ".join(missing)}')
  functions: Dict[str, Callable] = vars(module)
  update = functions['update_params']
  return Submission(
      name=name,
      get_batch_size=functions['get_batch_size'],
      init_optimizer_state=functions['init_optimizer_state'],
      update_params=update,
      data_selection=functions['data_selection'],
      prepare_for_eval=functions.get('prepare_for_eval') or prepare_for_eval,
      step_phase=functions.get('step_phase') or step_phase,
      diagnostics=functions.get('diagnostics') or diagnostics,
      get_eval_batch_size=functions.get('get_eval_batch_size'),
      update_params_takes_train_state='train_state' in inspect.signature(update).parameters)
