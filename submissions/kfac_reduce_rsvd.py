"""K-FAC-reduce with RS-KFAC's randomised low-rank inverses, for any workload
(`submissions.kfac_submission` with `flavour='reduce'`, `inverse_method='rsvd'` unless the
hyperparameters name another).

Puiu, RS-KFAC (arXiv 2206.15397): the exponential averages are kept as `[d, d]` factors and
decomposed to rank `inverse_rank` by a randomised range finder every `inverse_update_every`
steps (`kfac.blocks.lowrank`), `O(d^2 r)` instead of `eigh`'s `O(d^3)`. Per-workload modules
(`submissions/<workload>/kfac_reduce_rsvd.py`) re-export these functions; search spaces in
`tuning_search_spaces/<workload>/kfac_reduce_rsvd.json`.
"""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import diagnostics, step_phase

FLAVOUR = 'reduce'
INVERSE_METHOD = 'rsvd'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR,
                                         inverse_method=INVERSE_METHOD)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
