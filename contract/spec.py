"""Every public name of upstream AlgoPerf's `algoperf/spec.py`, from this contract.

`benchmark.submission_loader` installs this module as `algoperf.spec` when the real `algoperf`
package is not installed, so that `from algoperf import spec` in an upstream submission resolves
here. Project code imports the defining modules (`contract.types`, ...) instead.
"""

from contract.errors import TrainingCompleteError
from contract.submission import (data_selection, get_batch_size, init_optimizer_state,
                                 prepare_for_eval, update_params)
from contract.types import (DataSelectionFn, ForwardPassMode, Hyperparameters, InitOptimizerFn,
                            LossType, ModelAuxiliaryState, ModelInitState, OptimizerState,
                            ParameterContainer, ParameterKey, ParameterShapeTree, ParameterType,
                            ParameterTypeTree, PrepareForEvalFn, RandomState, Shape, ShapeTuple,
                            Steps, Tensor, Timing, UpdateParamsFn, UpdateReturn)
from contract.workload import Workload

__all__ = [
    'DataSelectionFn', 'ForwardPassMode', 'Hyperparameters', 'InitOptimizerFn', 'LossType',
    'ModelAuxiliaryState', 'ModelInitState', 'OptimizerState', 'ParameterContainer',
    'ParameterKey', 'ParameterShapeTree', 'ParameterType', 'ParameterTypeTree',
    'PrepareForEvalFn', 'RandomState', 'Shape', 'ShapeTuple', 'Steps', 'Tensor', 'Timing',
    'TrainingCompleteError', 'UpdateParamsFn', 'UpdateReturn', 'Workload', 'data_selection',
    'get_batch_size', 'init_optimizer_state', 'prepare_for_eval', 'update_params',
]
