"""K-FAC-reduce on the ImageNet ViT: patch embedding (Conv), attention q/k/v/out projections
(DenseGeneral), MLP blocks and the pre-logits and head Dense layers preconditioned with reduce
factors (means over the tokens of each image); LayerNorm parameters and the position embedding
pass through. See submissions/kfac_submission.py."""

from submissions.kfac_reduce import (data_selection, diagnostics, get_batch_size,
                                     init_optimizer_state, prepare_for_eval, step_phase,
                                     update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
