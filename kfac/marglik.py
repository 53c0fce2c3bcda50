"""Marginal-likelihood selection of the Laplace hyperparameters (prior precisions per layer, the
observation noise): the log marginal likelihood of a `kfac.laplace.LaplaceFit` and its Adam steps.

Immer et al. 2021 ("Scalable marginal likelihood estimation for model selection in deep
learning", section 3 and Algorithm 1); the model and the Laplace approximation are in
`kfac.laplace`.

**Online selection** (Immer et al. 2021, Algorithm 1). Train `theta` on the negative log joint
divided by `N` (mini-batch: `mean_n nll_n + prior_penalty / N`, `prior_penalty` and
`per_example_nll` below); every F epochs after B burn-in epochs, compute the factors and the
summed loss at the current `theta` over some training batches (`batch_statistics`, summed with
`add_statistics`), decompose them once (`laplace_fit`), and take K Adam steps on the log prior
precisions and the log noise, `theta` fixed (`marglik_update`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfac import tracing
from kfac.laplace import (LaplaceConfig, LaplaceFit, LayerPath, group_square_norms,
                          validate_config)


class Hyperparameters(NamedTuple):
  """The hyperparameters selected by marginal likelihood, in log space.

  Attributes:
    log_prior_precision: `{layer_path: log delta_l}`, scalars.
    log_sigma: `log sigma`, the observation noise's log standard deviation (regression; unused
      and left unchanged for classification and when `learn_sigma` is off).
  """

  log_prior_precision: Dict[LayerPath, jax.Array]
  log_sigma: jax.Array


class MarglikState(NamedTuple):
  """The hyperparameters and the state of their Adam optimiser (kept across updates)."""

  hyperparameters: Hyperparameters
  optimizer_state: Any


# -- Log-determinant ---------------------------------------------------------------------------


def kron_log_determinant(eigenvalues_a: jax.Array, eigenvalues_b: jax.Array, scale: jax.Array,
                         prior_precision: jax.Array) -> jax.Array:
  """`log det(scale A kron B + delta I) = sum_{i, j} log(scale lam_A_i lam_B_j + delta)`.

  Args:
    eigenvalues_a: `[d_A]` eigenvalues of `A` (non-negative).
    eigenvalues_b: `[d_B]` eigenvalues of `B` (non-negative).
    scale: `N s`, the scale of the block (see the module docstring).
    prior_precision: `delta > 0`.

  Returns:
    A scalar.
  """
  products = eigenvalues_a[:, None] * eigenvalues_b[None, :]  # [d_A, d_B]
  return jnp.sum(jnp.log(scale * products + prior_precision))


def prior_precisions(hyperparameters: Hyperparameters) -> Dict[LayerPath, jax.Array]:
  """`{layer_path: delta_l}`."""
  return {path: jnp.exp(value) for path, value in hyperparameters.log_prior_precision.items()}


def prior_penalty(params: Any, hyperparameters: Hyperparameters,
                  layer_infos: Mapping[LayerPath, tracing.LayerInfo],
                  config: LaplaceConfig) -> jax.Array:
  """The negative log prior without its normaliser: `1/2 sum_g delta_g ||theta_g||^2`.

  The training loss is the negative log joint over `N` examples divided by `N`:
  `mean_n per_example_nll_n + prior_penalty / N`. The hyperparameters are held fixed
  (`stop_gradient`): training differentiates w.r.t. `params` only.
  """
  hyperparameters = jax.lax.stop_gradient(hyperparameters)
  layer_norms, rest_norm = group_square_norms(params, layer_infos)
  precisions = prior_precisions(hyperparameters)
  penalty = sum(precisions[path] * norm for path, norm in layer_norms.items())
  return 0.5 * (penalty + config.rest_prior_precision * rest_norm)


# -- Log marginal likelihood and its optimisation ----------------------------------------------


def log_likelihood(fit: LaplaceFit, log_sigma: jax.Array, config: LaplaceConfig) -> jax.Array:
  """`log p(D | theta*)`: `-sum_n CE_n`, or `-SSE / (2 sigma^2) - (N C / 2) log(2 pi sigma^2)`."""
  if config.likelihood == 'classification':
    return -fit.summed_loss
  variance = jnp.exp(2.0 * log_sigma)
  return -fit.summed_loss / (2.0 * variance) - 0.5 * fit.num_outputs * jnp.log(
      2.0 * jnp.pi * variance)


def curvature_scale(fit: LaplaceFit, log_sigma: jax.Array, config: LaplaceConfig) -> jax.Array:
  """`N s`: the GGN of the summed negative log-likelihood is `N s A kron B` per layer."""
  if config.likelihood == 'classification':
    return fit.num_data
  return fit.num_data * jnp.exp(-2.0 * log_sigma)


def log_marginal_likelihood(hyperparameters: Hyperparameters, fit: LaplaceFit,
                            config: LaplaceConfig) -> jax.Array:
  """The Laplace log marginal likelihood (module docstring):

  `log p(D | theta*) - 1/2 sum_l [delta_l ||theta_l||^2 - P_l log delta_l
   + sum_ij log(N s lam_A_i lam_B_j + delta_l)] - 1/2 delta_0 ||theta_0||^2`.

  Differentiable w.r.t. `hyperparameters` (log prior precisions, log sigma).
  """
  log_sigma = hyperparameters.log_sigma
  scale = curvature_scale(fit, log_sigma, config)
  total = log_likelihood(fit, log_sigma, config)
  for path, log_precision in hyperparameters.log_prior_precision.items():
    precision = jnp.exp(log_precision)
    eigenvalues_a, eigenvalues_b = fit.eigenvalues[path]
    total -= 0.5 * (precision * fit.layer_square_norms[path]
                    - fit.layer_sizes[path] * log_precision
                    + kron_log_determinant(eigenvalues_a, eigenvalues_b, scale, precision))
  return total - 0.5 * config.rest_prior_precision * fit.rest_square_norm


def init_marglik_state(layer_paths: Iterable[LayerPath], config: LaplaceConfig,
                       prior_precision: float = 1.0, sigma: float = 1.0) -> MarglikState:
  """Every layer's prior precision at `prior_precision`, the noise at `sigma`, Adam at zero."""
  validate_config(config)
  hyperparameters = Hyperparameters(
      log_prior_precision={path: jnp.asarray(np.log(prior_precision), jnp.float32)
                           for path in layer_paths},
      log_sigma=jnp.asarray(np.log(sigma), jnp.float32))
  return MarglikState(hyperparameters,
                      optax.adam(config.learning_rate).init(hyperparameters))


def marglik_update(state: MarglikState, fit: LaplaceFit, config: LaplaceConfig
                   ) -> Tuple[MarglikState, jax.Array]:
  """`config.num_steps` Adam steps maximising `log_marginal_likelihood` at fixed `theta*`.

  Args:
    state: the hyperparameters and their Adam state.
    fit: the `LaplaceFit` at the current parameters.
    config: the static settings (`learning_rate`, `num_steps`).

  Returns:
    `(new state, log marginal likelihoods [num_steps])`, each taken before its step.
  """
  optimizer = optax.adam(config.learning_rate)

  def negative_log_marglik(hyperparameters):
    return -log_marginal_likelihood(hyperparameters, fit, config)

  def step(carry, _):
    hyperparameters, optimizer_state = carry
    value, grads = jax.value_and_grad(negative_log_marglik)(hyperparameters)
    if config.likelihood == 'classification' or not config.learn_sigma:
      grads = grads._replace(log_sigma=jnp.zeros_like(grads.log_sigma))
    updates, optimizer_state = optimizer.update(grads, optimizer_state, hyperparameters)
    return (optax.apply_updates(hyperparameters, updates), optimizer_state), -value

  (hyperparameters, optimizer_state), trace = jax.lax.scan(
      step, (state.hyperparameters, state.optimizer_state), None, length=config.num_steps)
  return MarglikState(hyperparameters, optimizer_state), trace
