"""K-FAC (expand and reduce) for linear weight-sharing layers of Flax linen models."""

from kfac.capture import LayerInfo, LayerReport, kernel_matrix, layer_report, split_kernel_matrix
from kfac.factors import Factors, compute_factors
from kfac.layers import FLAVOURS
from kfac.losses import FISHER_TYPES, LOSSES
from kfac.curvature import CurvatureConfig, CurvatureState, FactorLayout
from kfac.inverses import DAMPING_MODES, FACTOR_KINDS
from kfac.optimizer import (PreconditionOptions, ReportRow, curvature_report, format_curvature_report,
                            kfac_optimizer, precondition)
