"""K-FAC-reduce on the CIFAR-10 Wide ResNet: every convolution (patches, reduce factors from
the mean patch of each image) and the classifier; BatchNorm parameters pass through and the
curvature pass uses batch statistics without updating the running ones. See
submissions/kfac_submission.py."""

import functools

from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import step_phase

FLAVOUR = 'reduce'
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase']
