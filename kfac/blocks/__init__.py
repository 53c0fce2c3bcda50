"""Registry of curvature blocks: `inverse_method` name -> block factory (see `kfac.blocks.base`).

A factory is `make_<kind>_block(dim_a, dim_b, options: BlockOptions) -> CurvatureBlock`. New
approximations register one line here.
"""

from typing import Dict

from kfac.blocks.base import (FACTOR_FORMS, BlockFactory, BlockOptions, CurvatureBlock,
                              LayerStatistics, UnsupportedLayer)
from kfac.blocks import cholesky, kron, lowrank, mac

BLOCK_FACTORIES: Dict[str, BlockFactory] = {
    'eigh': kron.make_eigh_block,
    'pi_eigh': kron.make_pi_eigh_block,
    'cholesky': cholesky.make_cholesky_block,
    'diagonal': kron.make_diagonal_block,
    'identity': kron.make_identity_block,
    'rsvd': lowrank.make_rsvd_block,
    'brand': lowrank.make_brand_block,
    'brand_rsvd': lowrank.make_brand_rsvd_block,
    'brand_corrected': lowrank.make_brand_corrected_block,
    'mac': mac.make_mac_block, 'mac_input': mac.make_mac_input_block,
}


def make_block(method: str, dim_a: int, dim_b: int, options: BlockOptions) -> CurvatureBlock:
  """The block of `inverse_method` `method` for a `[dim_a, dim_b]` gradient matrix.

  Raises:
    ValueError: an unknown method; `UnsupportedLayer` when the block cannot serve the layer.
  """
  if method not in BLOCK_FACTORIES:
    raise ValueError(f'unknown inverse_method {method!r}; expected one of {sorted(BLOCK_FACTORIES)}')
  return BLOCK_FACTORIES[method](dim_a, dim_b, options)
