"""K-FAC-expand on ogbg-molpcba: every Dense of the GraphNetwork (embedders, edge/node/global
MLPs, decoder) preconditioned with expand factors (every node and edge row an example of its
own); LayerNorm parameters pass through. See submissions/kfac_submission.py."""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import step_phase

FLAVOUR = 'expand'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase']
