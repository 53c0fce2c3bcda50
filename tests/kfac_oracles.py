"""Independent references for the K-FAC statistics tests: dense GGN blocks and brute-force loops.

The oracles do not use `kfac`: the GGN comes from `jax.jacobian`/`jax.hessian` of the whole model,
the brute-force factors from explicit loops over examples, positions and graphs.
`factors_for_configs` runs `kfac.compute_factors` for several configurations in one compilation,
and `fast_compilation` (an autouse fixture the test modules take up) compiles without XLA's
optimisation passes: compilation, not execution, is the cost of these tiny programs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kfac

LayerPath = Tuple[str, ...]


@pytest.fixture(autouse=True, scope='module')
def fast_compilation():
  """Compile the module's programs with `jax_disable_most_optimizations` (about half the
  compilation time on CPU), and restore the setting afterwards."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def factors_for_configs(apply_fn: Callable, params: Any, inputs: Any, targets: Any,
                        configs: Sequence[Dict[str, Any]], mask: Any = None, rng: Any = None
                        ) -> list:
  """`kfac.compute_factors` for every configuration (a dict of keyword arguments), in one
  jitted program (compilation dominates the tests' run time)."""
  @jax.jit
  def compute(params, inputs, targets, mask, rng):
    return [kfac.compute_factors(apply_fn, params, inputs, targets, mask=mask, rng=rng, **config)
            for config in configs]

  return compute(params, inputs, targets, mask, rng)


def batch_mean_loss(loss: str, logits: jax.Array, targets: jax.Array,
                    mask: jax.Array | None = None) -> jax.Array:
  """`(1/N) sum_n l_n`: `l_n` sums the masked per-entry losses of example n; N counts the
  examples with any non-zero mask entry (the convention documented in `kfac.losses`)."""
  if loss == 'softmax_cross_entropy':
    per_entry = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  elif loss == 'sigmoid_cross_entropy':
    per_entry = optax.sigmoid_binary_cross_entropy(logits, targets)
  else:
    per_entry = 0.5 * (logits - targets) ** 2
  if mask is None:
    mask = jnp.ones(per_entry.shape)
  mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (per_entry.ndim - mask.ndim)),
                          per_entry.shape)
  per_entry = jnp.where(mask > 0, per_entry, 0.0) * mask
  num_valid = jnp.sum(jnp.any(mask.reshape(mask.shape[0], -1) > 0, axis=1))
  return jnp.sum(per_entry) / num_valid


def module_params(params: Any, path: LayerPath) -> Dict[str, jax.Array]:
  """The parameters of the module at `path`."""
  module = params['params']
  for name in path:
    module = module[name]
  return module


def layer_parameters(params: Any, path: LayerPath) -> jax.Array:
  """Row-major flattening of `concat([kernel_2d, bias[None]])` (kernel first, bias last)."""
  module = module_params(params, path)
  flat = [module['kernel'].reshape(-1)]
  if 'bias' in module:
    flat.append(module['bias'].reshape(-1))
  return jnp.concatenate(flat)


def _with_layer_parameters(params: Any, thetas: Dict[LayerPath, jax.Array]) -> Any:
  """`params` with the kernel (and bias) of every layer in `thetas` replaced by its flat vector."""
  params = jax.tree_util.tree_map(lambda leaf: leaf, params)  # a mutable copy
  for path, theta in thetas.items():
    module = module_params(params, path)
    kernel_size = module['kernel'].size
    module['kernel'] = theta[:kernel_size].reshape(module['kernel'].shape)
    if 'bias' in module:
      module['bias'] = theta[kernel_size:].reshape(module['bias'].shape)
  return params


def exact_ggn_blocks(apply_fn: Callable, params: Any, inputs: Any, paths: Sequence[LayerPath],
                     loss_of_output: Callable[[jax.Array], jax.Array]
                     ) -> Dict[LayerPath, jax.Array]:
  """`J^T H J` of the batch loss w.r.t. `layer_parameters(params, path)`, for every path
  (traceable: callers jit it together with what it is compared to).

  Args:
    apply_fn: `apply_fn(params, inputs) -> output`.
    params, inputs: the model variables (a dict with `'params'`) and the batch.
    paths: the layers.
    loss_of_output: the batch loss as a function of the whole output.
  """
  def output_of(thetas):
    return apply_fn(_with_layer_parameters(params, thetas), inputs)

  thetas = {path: layer_parameters(params, path) for path in paths}
  output = output_of(thetas)
  hessian = jax.hessian(loss_of_output)(output).reshape(output.size, output.size)
  jacobians = jax.jacobian(output_of)(thetas)
  return {path: jacobian.reshape(output.size, -1).T @ hessian @ jacobian.reshape(output.size, -1)
          for path, jacobian in jacobians.items()}


def relative_error(approximation: np.ndarray, reference: np.ndarray) -> float:
  """`||approximation - reference||_F / ||reference||_F`."""
  approximation = np.asarray(approximation, np.float64)
  reference = np.asarray(reference, np.float64)
  return float(np.linalg.norm(approximation - reference) / np.linalg.norm(reference))


def layer_io(apply_fn: Callable, params: Any, inputs: Any,
             kinds: Tuple[type, ...] = (nn.Dense, nn.DenseGeneral, nn.Conv)
             ) -> Tuple[jax.Array, Dict[LayerPath, jax.Array], Dict[LayerPath, jax.Array]]:
  """Every layer's input and the Jacobian of the whole output w.r.t. the layer's output.

  Each module of `kinds` must be called once. Returns `(output, inputs, jacobians)` with
  `jacobians[path]` of shape `[*output.shape, *layer_output.shape]` (dense `jax.jacobian`
  w.r.t. an additive zero perturbation of the layer's output). Traceable.
  """
  shapes = {}

  def record_shapes(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, kinds):
      shapes[tuple(context.module.path)] = out.shape
    return out

  with nn.intercept_methods(record_shapes):
    jax.eval_shape(apply_fn, params, inputs)

  def forward(perturbations):
    seen = {}

    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      path = tuple(context.module.path)
      if context.method_name == '__call__' and path in perturbations:
        seen[path] = args[0]
        out = out + perturbations[path]
      return out

    with nn.intercept_methods(perturb):
      output = apply_fn(params, inputs)
    return output, seen

  zeros = {path: jnp.zeros(shape) for path, shape in shapes.items()}
  output, layer_inputs = forward(zeros)
  return output, layer_inputs, jax.jacobian(lambda p: forward(p)[0])(zeros)


def output_curvature(loss: str, fisher_type: str, logits: jax.Array, targets: jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
  """`[N, E, E]`: per example n, the curvature of `l_n / N` w.r.t. its flattened output `f_n`.

  type2: the diagonal blocks of `d^2 L / d f^2` for the batch-mean loss `L` (`jax.hessian`; `L`
  is a sum over examples, so the blocks are the per-example Hessians); empirical:
  `(grad l_n)(grad l_n)^T / N = N (d L / d f_n)(d L / d f_n)^T` (`jax.grad`). Traceable.
  """
  num_examples = logits.shape[0]
  size = logits[0].size

  def loss_of(f):
    return batch_mean_loss(loss, f, targets, mask)

  if fisher_type == 'type2':
    hessian = jax.hessian(loss_of)(logits).reshape(num_examples, size, num_examples, size)
    return jnp.stack([hessian[n, :, n, :] for n in range(num_examples)])
  num_valid = jnp.sum(jnp.any(
      (jnp.ones(num_examples) if mask is None else mask).reshape(num_examples, -1) > 0, axis=1))
  gradient = jax.grad(loss_of)(logits).reshape(num_examples, size)
  return num_valid * jnp.einsum('ni,nj->nij', gradient, gradient)


def brute_force_factors(flavour: str, rows: list, jacobians: list, curvature: np.ndarray,
                        valid: np.ndarray, has_bias: bool) -> Tuple[np.ndarray, np.ndarray]:
  """K-FAC factors by explicit loops over examples and their rows (positions, nodes, edges).

  Args:
    flavour: 'expand' or 'reduce'.
    rows: per example n, its layer inputs `[R_n, P_in]`.
    jacobians: per example n, `d f_n / d s_n` as `[E, R_n, P_out]`.
    curvature: `[N, E, E]` from `output_curvature`.
    valid: `[N]` bools, padding examples False.
    has_bias: append a ones coordinate to every row.
  """
  p_in = rows[0].shape[-1] + int(has_bias)
  p_out = jacobians[0].shape[-1]
  a_factor, b_factor = np.zeros((p_in, p_in)), np.zeros((p_out, p_out))
  num_rows = num_examples = 0
  for n in range(len(rows)):
    if not valid[n]:
      continue
    a_rows = np.asarray(rows[n], np.float64)
    if has_bias:
      a_rows = np.concatenate([a_rows, np.ones((a_rows.shape[0], 1))], axis=1)
    if flavour == 'expand':
      for r in range(a_rows.shape[0]):
        a_factor += np.outer(a_rows[r], a_rows[r])
        jac = jacobians[n][:, r, :]
        b_factor += jac.T @ curvature[n] @ jac
      num_rows += a_rows.shape[0]
    elif a_rows.shape[0]:
      mean = a_rows.mean(axis=0)
      a_factor += np.outer(mean, mean)
      jac = jacobians[n].sum(axis=1)
      b_factor += jac.T @ curvature[n] @ jac
      num_examples += 1
  return a_factor / (num_rows if flavour == 'expand' else num_examples), b_factor


def empirical_fisher_blocks(apply_fn: Callable, params: Any, inputs: Any,
                            paths: Sequence[LayerPath],
                            per_example_loss_of_output: Callable[[jax.Array], jax.Array],
                            num_valid: jax.Array) -> Dict[LayerPath, jax.Array]:
  """`(1/N) sum_n (grad l_n)(grad l_n)^T` w.r.t. `layer_parameters(params, path)`, for every
  path: the dense empirical Fisher of `L = (1/N) sum_n l_n`, with the per-example gradients from
  `jax.jacobian` (traceable).

  Args:
    per_example_loss_of_output: the whole output -> `[N]` per-example losses `l_n`.
    num_valid: `N`, the number of examples the mean runs over.
  """
  def losses_of(thetas):
    return per_example_loss_of_output(apply_fn(_with_layer_parameters(params, thetas), inputs))

  thetas = {path: layer_parameters(params, path) for path in paths}
  return {path: gradients.T @ gradients / num_valid  # gradients: [N, P]
          for path, gradients in jax.jacobian(losses_of)(thetas).items()}


def empirical_b_factors(loss_gradients: np.ndarray, jacobian: np.ndarray, output_ndim: int,
                        num_valid: float) -> Dict[str, np.ndarray]:
  """The empirical Fisher's `B` of one layer by brute force over examples, for both flavours.

  `g_n = d l_n / d s`, the gradient of example n's loss w.r.t. the layer's whole output `s`
  (`[T, ..., P_out]`: rows, positions, features), is zero on the rows of other examples (the
  examples do not interact), so summing over all rows sums over example n's own:
  expand `(1/N) sum_n sum_rows g_n g_n^T`, reduce `(1/N) sum_n (sum_rows g_n)(sum_rows g_n)^T`.

  Args:
    loss_gradients: `[N, *output.shape]`, `d l_n / d output` (`jax.jacobian` of the `[N]` losses).
    jacobian: `[*output.shape, *s.shape]` from `layer_io`.
    output_ndim: `output.ndim`.
    num_valid: `N`.
  """
  num_examples = loss_gradients.shape[0]
  output_size = int(np.prod(jacobian.shape[:output_ndim]))
  p_out = jacobian.shape[-1]
  jacobian = np.asarray(jacobian, np.float64).reshape(output_size, -1, p_out)
  gradients = np.einsum('no,orp->nrp', np.asarray(loss_gradients, np.float64).reshape(
      num_examples, output_size), jacobian)  # [N, rows x positions, P_out]
  summed = gradients.sum(axis=1)
  return {'expand': np.einsum('nrp,nrq->pq', gradients, gradients) / num_valid,
          'reduce': np.einsum('np,nq->pq', summed, summed) / num_valid}


def conv_patches(inputs: np.ndarray, kernel_size: Sequence[int], strides: Sequence[int],
                 padding: Any, input_dilation: Sequence[int], kernel_dilation: Sequence[int]
                 ) -> np.ndarray:
  """The im2col patches of a Flax `nn.Conv` by explicit loops (no `lax` patch extraction).

  Flax's semantics: `'CIRCULAR'` wraps the (undilated) input by `((k_e - 1) // 2, k_e // 2)`
  with `k_e = (k - 1) kernel_dilation + 1`, then convolves `'VALID'`; otherwise the input is
  dilated (`input_dilation - 1` zeros between entries), zero-padded (`'SAME'`: lax's rule on the
  undilated size, total `max((ceil(n / s) - 1) s + k_e - n, 0)`, the smaller half first;
  explicit `(lo, hi)` pairs as given), and every output location `o` reads
  `z[o s + k kernel_dilation]`.

  Args:
    inputs: `[N, *spatial, C]`.
    padding: `'SAME'`, `'VALID'`, `'CIRCULAR'` or `((lo, hi), ...)`.

  Returns:
    `[N, R, prod(kernel_size) * C]`: R output locations in row-major order, features in the
    kernel's HWIO order `(k_1, ..., k_d, c)`.
  """
  inputs = np.asarray(inputs, np.float64)
  rank = len(kernel_size)
  effective = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
  if padding == 'CIRCULAR':
    inputs = np.pad(inputs, [(0, 0)] + [((k - 1) // 2, k // 2) for k in effective] + [(0, 0)],
                    mode='wrap')
    padding = 'VALID'
  spatial = inputs.shape[1:-1]
  if padding == 'VALID':
    pads = [(0, 0)] * rank
  elif padding == 'SAME':
    totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, s, k in zip(spatial, strides, effective)]
    pads = [(total // 2, total - total // 2) for total in totals]
  else:
    pads = [tuple(pair) for pair in padding]
  dilated_shape = [(n - 1) * d + 1 for n, d in zip(spatial, input_dilation)]
  dilated = np.zeros((inputs.shape[0], *dilated_shape, inputs.shape[-1]))
  dilated[(slice(None),) + tuple(slice(None, None, d) for d in input_dilation)] = inputs
  padded = np.pad(dilated, [(0, 0)] + pads + [(0, 0)])
  out_shape = [(n - k) // s + 1 for n, k, s in zip(padded.shape[1:-1], effective, strides)]
  patches = []
  for location in np.ndindex(*out_shape):
    patch = [padded[(slice(None),) + tuple(o * s + k * d for o, s, k, d in zip(
        location, strides, offset, kernel_dilation))] for offset in np.ndindex(*kernel_size)]
    patches.append(np.stack(patch, axis=1).reshape(inputs.shape[0], -1))  # [N, prod(k) * C]
  return np.stack(patches, axis=1)
