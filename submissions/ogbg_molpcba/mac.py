"""MAC (mean-activation curvature) on ogbg-molpcba: every Dense of the GraphNetwork (embedders,
edge/node/global MLPs, decoder) preconditioned by their mean activation, the layers reading the
model input by the exact input covariance. See submissions/mac.py."""

from submissions.mac import (data_selection, diagnostics, get_batch_size,
                             init_optimizer_state, prepare_for_eval, step_phase,
                             update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
