"""K-FAC (expand and reduce) for linear weight-sharing layers of Flax linen models."""

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
from kfac.transform import kfac_optimizer, precondition

INVERSE_METHODS = tuple(BLOCK_FACTORIES)
