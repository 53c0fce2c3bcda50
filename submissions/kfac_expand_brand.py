"""K-FAC-expand with B-KFAC's Brand-updated low-rank factors, for any workload
(`submissions.kfac_submission` with `flavour='expand'`, `inverse_method='brand'` unless the
hyperparameters name another).

The seed's own setting (Puiu, "Brand New K-FACs", arXiv 2210.08494): with expand, a
weight-sharing layer adds `N R` rows per batch (every position of every example), so Brand's
update pays off only on layers with few positions; the curvature report names the layers where
it does not (`kfac.blocks.lowrank.brand_rows_note`; `brand_max_rows` sketches the rows down).
The comparison partner of `kfac_reduce_brand`. Per-workload modules
(`submissions/<workload>/kfac_expand_brand.py`) re-export these functions; search spaces in
`tuning_search_spaces/<workload>/kfac_expand_brand.json`.
"""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import diagnostics, step_phase

FLAVOUR = 'expand'
INVERSE_METHOD = 'brand'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR,
                                         inverse_method=INVERSE_METHOD)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
