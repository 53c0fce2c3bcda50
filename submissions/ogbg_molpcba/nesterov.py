"""AlgoPerf's Nesterov target-setting algorithm on ogbg-molpcba (the reference of the paper).

Reference point (tuning_search_spaces/ogbg_molpcba/nesterov.json, DESIGN section 3): learning rate
2.4917728606918423, beta1 0.9449369031171744, weight decay 1.2859640541025928e-7, warmup 3,000 of
60,000 expected steps (warmup_factor 0.05), decay_steps_factor 0.861509027839639, end_factor 1e-3,
label smoothing 0, dropout 0.1.
"""

from submissions.nesterov import (data_selection, get_batch_size, init_optimizer_state,
                                  prepare_for_eval, update_params)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval']
