"""AlgoPerf's Nesterov target-setting algorithm on the CIFAR-10 Wide ResNet (the reference;
search spaces in tuning_search_spaces/cifar_wrn/)."""

from submissions.nesterov import (data_selection, get_batch_size, init_optimizer_state,
                                  prepare_for_eval, update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval']
