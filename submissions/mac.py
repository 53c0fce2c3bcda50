"""MAC (mean-activation approximated curvature) behind the AlgoPerf submission API, for any
workload (`submissions.kfac_submission` with `inverse_method='mac'`).

Seung, Lee & Ko, "MAC: An Efficient Gradient Preconditioning using Mean Activation Approximated
Curvature" (ICDM 2025, arXiv 2506.08464); docs/mac.md. Every covered layer's gradient `G` becomes
`(I - abar abar^T / (damping + |abar|^2)) G` with `abar` the exponential average of the layer's
mean activation (blocks `'mac'`, `kfac.blocks.mac`); the layers reading the model input (the
ViT's patch embedding, the WRN's stem, both ogbg embeddings: `kfac.mac.input_layer_paths`) get
the exact input covariance instead (`'mac_input'` with K-FAC-expand's per-position rows, as the
paper prescribes). No output-gradient factor: XLA drops the backward part of the statistics
pass, and the mean activations come from the gradient's own forward pass
(`kfac.gradient_and_statistics`), so a statistics step adds only the mean reductions.

`damping` is the paper's decoupled lambda (reference values 1.0 for CNNs, 3.0 for vision
transformers), not K-FAC's Tikhonov damping. The rest of the optimiser is the K-FAC
submission's: weight decay added to the preconditioned gradient, Nesterov momentum and the
reference's warmup + linear decay (the reference code uses heavy-ball momentum, its nanoGPT copy
Nesterov). Per-workload modules (`submissions/<workload>/mac.py`) re-export these functions;
search spaces in `tuning_search_spaces/<workload>/mac.json`.
"""

import functools
from typing import Any, Callable, Dict

import jax

import kfac
import kfac.mac
from submissions import kfac_submission
from submissions.common import data_selection, get_batch_size, prepare_for_eval, update_params
from submissions.kfac_submission import diagnostics, step_phase

# The flavour of the rank-1 layers: it only decides how `abar` is computed, and both flavours
# give the same mean activation (`kfac.layers`); reduce never forms per-position rows.
FLAVOUR = 'reduce'
INVERSE_METHOD = 'mac'


def input_layer_overrides(apply_fn: Callable[[Any, Any], jax.Array], param_shapes: Any,
                          sample_inputs: Any) -> Dict[str, Any]:
  """`inverse_method_overrides` and `flavour_overrides` giving the layers that read the model
  input the exact input covariance ('mac_input', expand), traced on the input shapes."""
  report = kfac.layer_report(apply_fn, param_shapes, sample_inputs)
  methods, flavours = kfac.mac.mac_overrides(
      kfac.mac.input_layer_paths(apply_fn, param_shapes, sample_inputs, report))
  return {'inverse_method_overrides': methods, 'flavour_overrides': flavours}


# The mean activations always come from the gradient's forward pass: MAC's statistics need no
# backward pass, so the fused pass costs its plain steps nothing measurable
# (docs/bench_full_step.md) and saves its statistics steps a forward pass.
init_optimizer_state = functools.partial(kfac_submission.init_optimizer_state, flavour=FLAVOUR,
                                         inverse_method=INVERSE_METHOD,
                                         layer_overrides=input_layer_overrides,
                                         fused_statistics=True)

__all__ = ['get_batch_size', 'init_optimizer_state', 'update_params', 'data_selection',
           'prepare_for_eval', 'step_phase', 'diagnostics']
