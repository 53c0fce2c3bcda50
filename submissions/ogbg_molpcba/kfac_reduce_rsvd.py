"""K-FAC-reduce with randomised low-rank inverses (RS-KFAC) on ogbg-molpcba: every Dense of the
GraphNetwork (embedders, edge/node/global MLPs, decoder). See submissions/kfac_reduce_rsvd.py."""

from submissions.kfac_reduce_rsvd import (data_selection, diagnostics, get_batch_size,
                                          init_optimizer_state, prepare_for_eval, step_phase,
                                          update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
