"""Laplace approximation with a Kronecker-factored GGN: log marginal likelihood and online
selection of prior precisions (and of the observation noise) by marginal likelihood.

Immer et al. 2021 ("Scalable marginal likelihood estimation for model selection in deep
learning", section 3 and Algorithm 1); Eschenhagen et al. 2023 (K-FAC-expand and K-FAC-reduce,
whose cheaper statistics speed this up).

**Model.** The parameters `theta` (the `'params'` collection) are split into groups: every layer
K-FAC covers (`kfac.tracing`: the kernel and bias of a Dense/DenseGeneral/Conv, one Kronecker
block) has the prior `N(0, delta_l^-1 I)` over its `P_l` parameters, with `delta_l` learned; every
other parameter (BatchNorm and LayerNorm scales and offsets, embeddings, ...) has the fixed
isotropic prior `N(0, delta_0^-1 I)` (`LaplaceConfig.rest_prior_precision`). The likelihood is
categorical on softmax logits (`'classification'`) or Gaussian with noise `sigma^2` on every
output entry (`'regression'`).

**Laplace.** At a mode `theta*`, with `H` the GGN of the negative log joint,
`log p(D) ~= log p(D | theta*) + log p(theta*) + (P / 2) log 2 pi - 1/2 log det H`. With
`log p(theta) = sum_g [P_g / 2 log(delta_g / 2 pi) - delta_g / 2 ||theta_g||^2]` the `2 pi`s
cancel:

    log p(D) ~= log p(D | theta*) - 1/2 sum_g delta_g ||theta_g||^2 + 1/2 sum_g P_g log delta_g
                - 1/2 log det H.

**Kronecker-factored GGN.** `kfac.compute_factors` returns `(A_l, B_l)` with `A_l kron B_l` the
GGN block of layer `l` for the *batch-mean* loss; averaged over batches, the block for the loss
summed over the `N` training examples is `N s A_l kron B_l`, where `s = 1` for classification
and `s = 1 / sigma^2` for regression (`compute_factors`' `'mse'` is `1/2 (f - y)^2`, whose
Hessian is `I`; the Gaussian negative log-likelihood's is `I / sigma^2`). With the
eigendecompositions `A = Q_A diag(lam_A) Q_A^T`, `B = Q_B diag(lam_B) Q_B^T`,
`N s A kron B + delta I = (Q_A kron Q_B) diag(N s lam_A kron lam_B + delta) (Q_A kron Q_B)^T`, so

    log det(N s A kron B + delta I) = sum_{i, j} log(N s lam_A_i lam_B_j + delta),

with no dense matrix: `[P_in(+1)] x [P_out]` numbers per layer. Cross-layer blocks are dropped
(block-diagonal GGN). Parameters outside the covered layers get no curvature (their block is 0):
their posterior precision is `delta_0 I`, whose log-determinant cancels their prior's
normaliser, so they add only `-1/2 delta_0 ||theta_0||^2`; their precision is not learned (its
marginal-likelihood optimum would be `delta_0 -> 0`). One precision per layer (not per kernel
and bias) keeps every block diagonal in its Kronecker eigenbasis.

The log marginal likelihood and its online optimisation are in `kfac.marglik`.

Everything here is a pure function over pytrees; the per-batch statistics and the update jit.
Arrays are float32 unless the caller enables x64.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfac import factors, layers, losses, param_paths, tracing
from kfac.blocks.kron import factor_eigen

LayerPath = Tuple[str, ...]

LIKELIHOODS = ('classification', 'regression')
# The `kfac.losses` loss whose curvature (up to the scale `s`) is each likelihood's GGN.
_KFAC_LOSS = {'classification': 'softmax_cross_entropy', 'regression': 'mse'}


class LaplaceConfig(NamedTuple):
  """Static settings of the Laplace approximation and of the hyperparameter optimisation.

  Attributes:
    likelihood: `'classification'` (softmax cross-entropy) or `'regression'` (Gaussian).
    flavour: `'expand'` or `'reduce'`, the K-FAC statistics of every covered layer.
    fisher_type: `'type2'` (exact GGN factors), `'mc'` or `'empirical'` (`kfac.losses`).
    num_samples: MC samples per example for `'mc'`.
    rest_prior_precision: `delta_0`, the fixed prior precision of the uncovered parameters.
    learn_sigma: regression: whether `kfac.marglik.marglik_update` learns the observation noise
      too (else it stays at its initial value).
    learning_rate: Adam's learning rate on the log hyperparameters.
    num_steps: K, Adam steps per `kfac.marglik.marglik_update`.
    eigh_dtype: dtype the factors are decomposed in (at least float32).
  """

  likelihood: str
  flavour: str = 'reduce'
  fisher_type: str = 'type2'
  num_samples: int = 1
  rest_prior_precision: float = 1.0
  learn_sigma: bool = True
  learning_rate: float = 0.1
  num_steps: int = 100
  eigh_dtype: Any = jnp.float32


class LaplaceStatistics(NamedTuple):
  """Sums over training batches at fixed parameters (`batch_statistics`, `add_statistics`).

  Attributes:
    factors: `{layer_path: (sum_b n_b A_b, sum_b n_b B_b)}`, the batch-mean K-FAC factors
      weighted by the batch's number of valid examples `n_b`.
    num_examples: `sum_b n_b`.
    num_outputs: output entries of the valid examples (the Gaussian normaliser counts them).
    summed_loss: classification: `sum_n CE_n`; regression: `sum_n ||f_n - y_n||^2`.
  """

  factors: Dict[LayerPath, Tuple[jax.Array, jax.Array]]
  num_examples: jax.Array
  num_outputs: jax.Array
  summed_loss: jax.Array


class LaplaceFit(NamedTuple):
  """Everything the log marginal likelihood needs at fixed `theta*`, free of hyperparameters.

  Attributes:
    eigenvalues: `{layer_path: (lam_A [P_in(+1)], lam_B [P_out])}` of the batch-averaged
      factors (clipped at 0).
    layer_sizes: `{layer_path: P_l}` (float).
    layer_square_norms: `{layer_path: ||theta_l||^2}`.
    rest_size: `P_0`, the number of uncovered parameters (float).
    rest_square_norm: `||theta_0||^2`.
    num_data: `N`, the data-set size the curvature and the loss are scaled to.
    num_outputs: output entries of the `N` examples.
    summed_loss: the loss of `LaplaceStatistics` scaled to `N` examples.
  """

  eigenvalues: Dict[LayerPath, Tuple[jax.Array, jax.Array]]
  layer_sizes: Dict[LayerPath, jax.Array]
  layer_square_norms: Dict[LayerPath, jax.Array]
  rest_size: jax.Array
  rest_square_norm: jax.Array
  num_data: jax.Array
  num_outputs: jax.Array
  summed_loss: jax.Array


def validate_config(config: LaplaceConfig) -> None:
  """Raise `ValueError` with a clear message for a bad setting."""
  if config.likelihood not in LIKELIHOODS:
    raise ValueError(f'likelihood must be one of {LIKELIHOODS}; got {config.likelihood!r}')
  if config.flavour not in layers.FLAVOURS:
    raise ValueError(f'flavour must be one of {layers.FLAVOURS}; got {config.flavour!r}')
  losses.check_loss_and_fisher(_KFAC_LOSS[config.likelihood], config.fisher_type)
  if not config.rest_prior_precision > 0:
    raise ValueError(f'rest_prior_precision must be > 0; got {config.rest_prior_precision}')
  if not (isinstance(config.num_steps, int) and config.num_steps >= 1):
    raise ValueError(f'num_steps must be an integer >= 1; got {config.num_steps!r}')


# -- Parameter groups --------------------------------------------------------------------------


def _layer_parameters(params: Any, info: tracing.LayerInfo) -> Tuple[jax.Array, ...]:
  """The kernel (and bias) of a covered layer, from the `'params'` collection of `params`."""
  collection = param_paths.param_collection(params)
  paths = (info.kernel_path,) if info.bias_path is None else (info.kernel_path, info.bias_path)
  leaves = []
  for path in paths:
    leaf = collection
    for key in path:
      leaf = leaf[key]
    leaves.append(leaf)
  return tuple(leaves)


def _square_norm(arrays: Iterable[jax.Array]) -> jax.Array:
  return sum(jnp.sum(jnp.square(a.astype(jnp.float32))) for a in arrays)


def group_square_norms(params: Any, layer_infos: Mapping[LayerPath, tracing.LayerInfo]
                       ) -> Tuple[Dict[LayerPath, jax.Array], jax.Array]:
  """`({layer_path: ||theta_l||^2}, ||theta_0||^2)` over the `'params'` collection."""
  layer_norms = {path: _square_norm(_layer_parameters(params, info))
                 for path, info in layer_infos.items()}
  total = _square_norm(jax.tree_util.tree_leaves(param_paths.param_collection(params)))
  return layer_norms, total - sum(layer_norms.values())


def group_sizes(params: Any, layer_infos: Mapping[LayerPath, tracing.LayerInfo]
                ) -> Tuple[Dict[LayerPath, int], int]:
  """`({layer_path: P_l}, P_0)`: parameters per covered layer and uncovered parameters."""
  layer_sizes = {path: int(np.prod(info.kernel_shape)) + int(np.prod(info.bias_shape or (0,)))
                 for path, info in layer_infos.items()}
  total = sum(int(np.prod(leaf.shape))
              for leaf in jax.tree_util.tree_leaves(param_paths.param_collection(params)))
  return layer_sizes, total - sum(layer_sizes.values())


def per_example_nll(logits: jax.Array, targets: jax.Array, log_sigma: jax.Array,
                    config: LaplaceConfig) -> jax.Array:
  """`-log p(y_n | f_n)` per example, `[N]`.

  Classification: softmax cross-entropy (`targets` integer labels `[N]` or distributions
  `[N, C]`). Regression: `sum_c (y - f)^2 / (2 sigma^2) + 1/2 log(2 pi sigma^2)` over the output
  entries of each example.
  """
  if config.likelihood == 'classification':
    if targets.ndim == logits.ndim - 1:
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return optax.softmax_cross_entropy(logits, targets)
  squared = jnp.square(logits - targets).reshape(logits.shape[0], -1)
  variance = jnp.exp(2.0 * log_sigma)
  return jnp.sum(squared / (2.0 * variance) + 0.5 * jnp.log(2.0 * jnp.pi * variance), axis=1)


# -- Statistics over training batches ----------------------------------------------------------


def batch_statistics(apply_fn: Callable[[Any, Any], jax.Array], params: Any, inputs: Any,
                     targets: jax.Array, *, config: LaplaceConfig,
                     rng: Optional[jax.Array] = None,
                     mask: Optional[jax.Array] = None) -> LaplaceStatistics:
  """K-FAC factors and loss of one batch at fixed parameters (jittable; bind `apply_fn` and
  `config` with `functools.partial`).

  Args:
    apply_fn: `apply_fn(params, inputs) -> output [N, ...]`, an unmodified Flax apply (use the
      evaluation mode: the Laplace approximation is of the model as it predicts).
    params: the model variables.
    inputs, targets: the batch (class labels `[N]` / distributions, or regression targets of
      the output's shape).
    config: the static settings.
    rng: PRNG key for `fisher_type='mc'`.
    mask: `[N]` example weights, 0 for padding examples.

  Returns:
    The batch's `LaplaceStatistics`.
  """
  batch_factors = factors.compute_factors(
      apply_fn, params, inputs, targets, loss=_KFAC_LOSS[config.likelihood],
      flavour=config.flavour, fisher_type=config.fisher_type, rng=rng, mask=mask,
      num_samples=config.num_samples)
  logits = apply_fn(params, inputs).astype(jnp.float32)
  weights = losses.example_weights(mask, logits.shape[0])  # [N]
  if config.likelihood == 'classification':
    per_example = per_example_nll(logits, targets, jnp.zeros([]), config)
  else:
    per_example = jnp.sum(jnp.square(logits - targets).reshape(logits.shape[0], -1), axis=1)
  num_examples = jnp.sum(weights)
  outputs_per_example = logits[0].size
  return LaplaceStatistics(
      factors={path: (num_examples * a, num_examples * b) for path, (a, b) in batch_factors.items()},
      num_examples=num_examples, num_outputs=num_examples * outputs_per_example,
      summed_loss=jnp.sum(weights * per_example))


def add_statistics(first: LaplaceStatistics, second: LaplaceStatistics) -> LaplaceStatistics:
  """The statistics of two sets of batches together."""
  return jax.tree_util.tree_map(jnp.add, first, second)


def laplace_fit(statistics: LaplaceStatistics, params: Any,
                layer_infos: Mapping[LayerPath, tracing.LayerInfo], config: LaplaceConfig,
                num_data: Optional[float] = None) -> LaplaceFit:
  """Averages the factors over the batches, decomposes them and measures the parameter groups.

  Args:
    statistics: sums over the batches (`batch_statistics`, `add_statistics`).
    params: the model variables at which the statistics were taken.
    layer_infos: the covered layers (`kfac.layer_report(...).layers`).
    config: the static settings.
    num_data: `N`, the training-set size; the batches may cover a subset, in which case the
      curvature (`N` times the mean factors) and the summed loss are scaled up to `N` examples.
      Default: the examples in the batches.

  Returns:
    The `LaplaceFit`.
  """
  count = jnp.maximum(statistics.num_examples, 1.0)
  num_data = statistics.num_examples if num_data is None else jnp.asarray(num_data, jnp.float32)
  eigenvalues = {}
  for path, (sum_a, sum_b) in statistics.factors.items():
    eigen_a = factor_eigen(sum_a / count, config.eigh_dtype)
    eigen_b = factor_eigen(sum_b / count, config.eigh_dtype)
    eigenvalues[path] = (eigen_a.values, eigen_b.values)
  layer_norms, rest_norm = group_square_norms(params, layer_infos)
  layer_sizes, rest_size = group_sizes(params, layer_infos)
  return LaplaceFit(
      eigenvalues=eigenvalues,
      layer_sizes={path: jnp.asarray(size, jnp.float32) for path, size in layer_sizes.items()},
      layer_square_norms=layer_norms, rest_size=jnp.asarray(rest_size, jnp.float32),
      rest_square_norm=rest_norm, num_data=num_data,
      num_outputs=statistics.num_outputs * num_data / count,
      summed_loss=statistics.summed_loss * num_data / count)
