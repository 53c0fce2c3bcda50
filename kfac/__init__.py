"""K-FAC (expand and reduce) for linear weight-sharing layers of Flax linen models.

Where things are (one job per module):

* `transform`: the optax transformations `precondition` and `kfac_optimizer`;
* `plan`: their options and the plan (which block serves which layer, fallbacks, strict mode);
* `report`: the curvature report; `defaults`: the one source of the K-FAC defaults;
* `curvature`: the state over per-layer blocks, T_cov / T_inv gating, rejected updates;
* `blocks`: the curvature block interface and registry (`eigh`, `pi_eigh`, `cholesky`,
  `diagonal`, `identity`, low-rank and MAC blocks);
* `factors`: the statistics pass (`compute_statistics`, `compute_factors`);
* `tracing`, `example_axis`, `graph_rows`: finding and classifying the layers of a model;
* `capture`: layer inputs and output gradients in one probed forward pass; `fused`: the loss
  gradient and the statistics from that one pass (`gradient_and_statistics`);
* `layers`, `conv`: the expand / reduce rows of each layer kind; `losses`: output cotangents;
* `param_paths`: parameter paths and gradient matrices; `laplace`, `marglik`: the Laplace
  approximation and marginal-likelihood hyperparameter selection;
* `lowrank`, `mac`: the maths of the low-rank and MAC blocks; `distributed`: data-parallel
  statistics and inverses spread over devices.
"""

from kfac import blocks, curvature, defaults
from kfac.blocks import BLOCK_FACTORIES, BlockOptions, CurvatureBlock, LayerStatistics
from kfac.curvature import CurvatureConfig, CurvatureState
from kfac.factors import Factors, compute_factors, compute_statistics
from kfac.layers import FLAVOURS
from kfac.losses import FISHER_TYPES, LOSSES
from kfac.param_paths import kernel_matrix, split_kernel_matrix
from kfac.plan import Fallback, PreconditionOptions
from kfac.report import ReportRow, curvature_report, format_curvature_report
from kfac.tracing import LayerInfo, LayerReport, layer_report
from kfac.transform import gradient_and_statistics, kfac_optimizer, precondition

INVERSE_METHODS = tuple(BLOCK_FACTORIES)
