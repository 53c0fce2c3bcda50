"""AlgoPerf's Nesterov target-setting algorithm on the ImageNet ViT (a second reference beside
NAdamW; search spaces in tuning_search_spaces/imagenet_vit/)."""

from submissions.nesterov import (data_selection, get_batch_size, init_optimizer_state,
                                  prepare_for_eval, update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval']
