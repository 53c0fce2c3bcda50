"""K-FAC-reduce on the CIFAR-10 Wide ResNet: every convolution (patches, reduce factors from
the mean patch of each image) and the classifier; BatchNorm parameters pass through and the
curvature pass uses batch statistics without updating the running ones. See
submissions/kfac_submission.py."""

from submissions.kfac_reduce import (data_selection, diagnostics, get_batch_size,
                                     init_optimizer_state, prepare_for_eval, step_phase,
                                     update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
