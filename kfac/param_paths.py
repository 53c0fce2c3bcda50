"""Parameter paths and gradient matrices: the one place that turns jax key paths into parameter
paths, and a covered layer's kernel and bias into its `[dim_a, dim_b]` matrix and back.

Layers are keyed by their module path (`('Encoder_0', 'Dense_0')`); a parameter by its path in
the `'params'` collection (`('Encoder_0', 'Dense_0', 'kernel')`, or in the bare tree when the
variables have no `'params'` collection). Patterns (`flavour_overrides`, `graph_rows`,
`inverse_method_overrides`, ...) are fnmatch patterns on the `'/'`-joined layer path.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from kfac.tracing import LayerInfo

LayerPath = Tuple[str, ...]
ParamPath = Tuple[str, ...]


def param_collection(params: Any) -> Any:
  """The `'params'` collection of Flax variables, or the tree itself when it has none."""
  if isinstance(params, Mapping) and 'params' in params:
    return params['params']
  return params


def param_path(key_path: Tuple[Any, ...]) -> ParamPath:
  """The string path of a leaf from its jax key path (dict keys, as Flax names them)."""
  return tuple(str(getattr(key, 'key', key)) for key in key_path)


def leaves_by_param_path(tree: Any) -> Dict[ParamPath, Any]:
  """`{param_path: leaf}` of the `'params'` collection of `tree`, in tree order."""
  leaves = jax.tree_util.tree_leaves_with_path(param_collection(tree))
  return {param_path(key_path): leaf for key_path, leaf in leaves}


def replace_leaves(tree: Any, replacements: Mapping[ParamPath, jax.Array]) -> Any:
  """`tree` with the leaves at `replacements`' param paths replaced (same tree structure)."""
  has_collection = param_collection(tree) is not tree

  def replace(key_path, leaf):
    path = param_path(key_path)[1:] if has_collection else param_path(key_path)
    return replacements.get(path, leaf)

  return jax.tree_util.tree_map_with_path(replace, tree)


def match_pattern(path: LayerPath, patterns: Optional[Mapping[str, Any]]) -> Any:
  """The value of the first pattern (fnmatch on `'/'.join(path)`) matching `path`, or None."""
  name = '/'.join(path)
  for pattern, value in (patterns or {}).items():
    if fnmatch.fnmatchcase(name, pattern):
      return value
  return None


def kernel_matrix(info: 'LayerInfo', kernel: jax.Array,
                  bias: Optional[jax.Array] = None) -> jax.Array:
  """The layer's parameters (or their gradients) as one matrix `[P_in (+1), P_out]`.

  `concat([kernel.reshape(p_in, p_out), bias.reshape(1, p_out)])` (bias row last): the matrix
  whose row-major flattening the block `A kron B` acts on. Every kernel kind is laid out as
  (input axes..., output axes...), so `reshape` is the whole map (Dense as is; DenseGeneral
  contracted axes -> P_in, feature axes -> P_out; Conv `[kh, kw, c, o]` -> `[kh*kw*c, o]`).
  """
  matrix = kernel.reshape(info.p_in, info.p_out)
  if info.has_bias:
    matrix = jnp.concatenate([matrix, bias.reshape(1, info.p_out)], axis=0)
  return matrix


def split_kernel_matrix(info: 'LayerInfo',
                        matrix: jax.Array) -> Tuple[jax.Array, Optional[jax.Array]]:
  """Inverse of `kernel_matrix`: `[P_in (+1), P_out]` -> `(kernel, bias or None)`."""
  kernel = matrix[:info.p_in].reshape(info.kernel_shape)
  if not info.has_bias:
    return kernel, None
  return kernel, matrix[info.p_in].reshape(info.bias_shape)


def layer_gradients(infos: Mapping[LayerPath, 'LayerInfo'], grads: Any
                    ) -> Dict[LayerPath, jax.Array]:
  """`{layer_path: G [P_in(+1), P_out]}`: each covered layer's kernel and bias gradients."""
  leaves = leaves_by_param_path(grads)
  return {path: kernel_matrix(info, leaves[info.kernel_path],
                              leaves[info.bias_path] if info.has_bias else None)
          for path, info in infos.items()}


def parameter_updates(infos: Mapping[LayerPath, 'LayerInfo'],
                      matrices: Mapping[LayerPath, jax.Array]) -> Dict[ParamPath, jax.Array]:
  """Split each layer's `[P_in(+1), P_out]` matrix back into `{kernel_path: .., bias_path: ..}`."""
  updates = {}
  for path, matrix in matrices.items():
    info = infos[path]
    kernel, bias = split_kernel_matrix(info, matrix)
    updates[info.kernel_path] = kernel
    if info.has_bias:
      updates[info.bias_path] = bias
  return updates
