"""K-FAC-reduce on ogbg-molpcba: every Dense of the GraphNetwork (embedders, edge/node/global
MLPs, decoder) preconditioned with reduce factors (segment means over each graph's nodes and
edges); LayerNorm parameters pass through. See submissions/kfac_submission.py."""

from submissions.kfac_reduce import (data_selection, diagnostics, get_batch_size,
                                     init_optimizer_state, prepare_for_eval, step_phase,
                                     update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
