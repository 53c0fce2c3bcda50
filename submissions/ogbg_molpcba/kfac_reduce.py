"""K-FAC-reduce on ogbg-molpcba: every Dense of the GraphNetwork (embedders, edge/node/global
MLPs, decoder) preconditioned with reduce factors (segment means over each graph's nodes and
edges); LayerNorm parameters pass through. See submissions/kfac_submission.py."""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import step_phase

FLAVOUR = 'reduce'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase']
