"""AlgoPerf's NAdamW target-setting algorithm on the ImageNet ViT (the reference of the paper's
ViT runs; hyperparameters in tuning_search_spaces/imagenet_vit/nadamw.json)."""

from submissions.nadamw import (data_selection, get_batch_size, init_optimizer_state,
                                prepare_for_eval, update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval']
