"""K-FAC-expand behind the AlgoPerf submission API, for any workload (`submissions.kfac_submission`
with `flavour='expand'`). Per-workload modules (`submissions/<workload>/kfac_expand.py`) re-export
these functions and carry the workload's search space next to them in
`tuning_search_spaces/<workload>/kfac_expand.json`.
"""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import diagnostics, step_phase

FLAVOUR = 'expand'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
