"""K-FAC-expand on ogbg-molpcba: every Dense of the GraphNetwork (embedders, edge/node/global
MLPs, decoder) preconditioned with expand factors (every node and edge row an example of its
own); LayerNorm parameters pass through. See submissions/kfac_submission.py."""

from submissions.kfac_expand import (data_selection, diagnostics, get_batch_size,
                                     init_optimizer_state, prepare_for_eval, step_phase,
                                     update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
