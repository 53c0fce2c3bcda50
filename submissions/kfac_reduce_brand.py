"""K-FAC-reduce with B-KFAC's Brand-updated low-rank factors, for any workload
(`submissions.kfac_submission` with `flavour='reduce'`, `inverse_method='brand'` unless the
hyperparameters name another, e.g. 'brand_rsvd' for B-R-KFAC, 'brand_corrected' for B-KFAC-c).

Puiu, "Brand New K-FACs" (arXiv 2210.08494): each factor's rank-`inverse_rank` eigendecomposition
is updated online from the batch's rows (`kfac.blocks.lowrank`), linear in the factor side. The
seed applies it where a batch adds few rows (fully connected layers); with K-FAC-reduce every
weight-sharing layer adds one row per example, so it applies to convolutions, attention
projections and graph layers too. The curvature report says where a layer still gets too many
rows (`kfac.blocks.lowrank.brand_rows_note`). Per-workload modules
(`submissions/<workload>/kfac_reduce_brand.py`) re-export these functions; search spaces in
`tuning_search_spaces/<workload>/kfac_reduce_brand.json`.
"""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import diagnostics, step_phase

FLAVOUR = 'reduce'
INVERSE_METHOD = 'brand'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR,
                                         inverse_method=INVERSE_METHOD)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
