"""K-FAC-reduce with randomised low-rank inverses (RS-KFAC) on the ImageNet ViT: the patch
embedding, attention q/k/v/out projections, MLP blocks, pre-logits and head. See
submissions/kfac_reduce_rsvd.py."""

from submissions.kfac_reduce_rsvd import (data_selection, diagnostics, get_batch_size,
                                          init_optimizer_state, prepare_for_eval, step_phase,
                                          update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
