"""K-FAC-expand with Brand-updated low-rank factors (B-KFAC, the seed's setting) on the CIFAR-10
Wide ResNet: every convolution and the classifier; the curvature report names the layers with too
many rows. See submissions/kfac_expand_brand.py."""

from submissions.kfac_expand_brand import (data_selection, diagnostics, get_batch_size,
                                           init_optimizer_state, prepare_for_eval, step_phase,
                                           update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
