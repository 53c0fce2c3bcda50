"""Loss-Hessian square roots and Fisher samples: the output cotangents of the K-FAC statistics.

The loss convention. The loss whose curvature K-FAC approximates is the mean over examples

    L = (1/N) sum_n l_n,    l_n = sum_e m_ne loss(f_ne, y_ne),

where `e` runs over the positions and tasks of example `n`, `m` is the mask (default all ones; a
prefix shape of the per-entry loss, `[N]`, `[N, ...]` or the full shape, broadcast over the
remaining axes) and `N` is the number of examples with at least one non-zero mask entry (padding
examples count for nothing). A mask entry is a *weight*, not only a 0/1 flag, and a per-entry
mask does not change `N`. Per-entry losses:

* `'softmax_cross_entropy'`: `logits [N, ..., C]`; targets are integer labels `[N, ...]` or
  distributions `[N, ..., C]`; per position `-sum_c t_c log softmax(f)_c`; mask `[N, ...]`.
* `'sigmoid_cross_entropy'` (multi-label): `logits [N, ..., T]`, targets in {0, 1} of the same
  shape; per entry binary CE.
* `'mse'`: per entry `0.5 (f - y)^2`, i.e. `l_n = 0.5 ||f_n - y_n||^2` over every output entry.

Targets where the mask is zero may hold anything (NaN for a missing label): they are replaced by
zeros before any computation.

Matching a training objective. A training loss `sum(w * loss) / sum(w)` (AlgoPerf's ogbg loss,
any loss averaged over the `R` positions of a sequence or image) is `L` with the mask
`m = w * N / sum(w)` (`objective_mask`). With `m = w` instead, K-FAC's
curvature is `sum(w) / N` times that of the objective: with `mask=None` and a loss averaged over
`R` positions, `R` times larger, so that `(R F + damping I)^-1 = R^-1 (F + (damping / R) I)^-1`:
the damping acts `R` times weaker and the step is `R` times shorter than the same numbers mean
for the objective (docs/kfac_conventions.md).

For every example `n`, the curvature of `l_n / N` w.r.t. `f_n` is factored as
`sum_m c_nm c_nm^T`; `output_cotangents` returns the columns `c[m]` for all examples at once,
`[M, *logits.shape]`, so that one backward pass per `m` gives the `g` of the K-FAC statistics
(Eschenhagen et al. 2023, section 2):

* `'type2'`: exact square root of the Hessian, `M = prod(logits.shape[1:])` columns (one per
  output entry). Softmax, per position: `S[:, k] = sqrt(p_k) (e_k - p)` (`S S^T = diag(p) - p p^T`);
  sigmoid: `sqrt(s (1 - s))` on the diagonal; MSE: the identity. The Hessian of `m loss` is
  `m H`, so the columns are scaled by `sqrt(m / N)`.
* `'mc'`: `M = num_samples` gradients of the loss at labels drawn from the model's predictive
  distribution (categorical, Bernoulli, unit-variance Gaussian), times `sqrt(m / (N M))`; their
  outer products are an unbiased estimate of the type-2 term (the losses are exponential-family
  negative log-likelihoods with their canonical link). Example `n`'s sample `s` uses the key
  `fold_in(fold_in(rng, n), s)`, so appending padding examples does not change the draws.
* `'empirical'`: `M = 1`, `grad l_n / sqrt(N)` at the true targets: the per-entry gradients times
  `m / sqrt(N)`. The weight is inside the gradient, so it enters the outer product squared
  (`sqrt(m / N)` would be right only for 0/1 masks).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

LOSSES = ('softmax_cross_entropy', 'sigmoid_cross_entropy', 'mse')
FISHER_TYPES = ('type2', 'mc', 'empirical')
# Floor of the sum of the label weights, so that an all-padding batch divides by no zero.
MIN_WEIGHT_SUM = 1e-12


def check_loss_and_fisher(loss: str, fisher_type: str) -> None:
  """Raises ValueError for an unknown loss or Fisher type."""
  if loss not in LOSSES:
    raise ValueError(f'loss must be one of {LOSSES}; got {loss!r}')
  if fisher_type not in FISHER_TYPES:
    raise ValueError(f'fisher_type must be one of {FISHER_TYPES}; got {fisher_type!r}')


def example_weights(mask: Optional[jax.Array], num_examples: int) -> jax.Array:
  """1 for examples with any non-zero mask entry, 0 for padding examples: `[N]` float32."""
  if mask is None:
    return jnp.ones((num_examples,), jnp.float32)
  return jnp.any(mask.reshape(num_examples, -1) != 0, axis=1).astype(jnp.float32)


def _entry_mask(mask: Optional[jax.Array], shape: tuple) -> jax.Array:
  """The mask broadcast to the per-entry loss `shape` (trailing axes added), float32."""
  if mask is None:
    return jnp.ones(shape, jnp.float32)
  mask = mask.astype(jnp.float32)
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def _dense_targets(loss: str, logits: jax.Array, targets: jax.Array,
                   entry_mask: jax.Array) -> jax.Array:
  """Targets of the logits' shape, float32 (one-hot for integer class labels), zero wherever the
  mask is zero, so that NaN labels of masked entries or positions do no harm.

  `entry_mask` broadcasts against the logits (softmax: `[N, ..., 1]`)."""
  if loss == 'softmax_cross_entropy' and targets.ndim == logits.ndim - 1:
    targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  return jnp.where(entry_mask > 0, targets, 0).astype(jnp.float32)


def _per_entry_loss(loss: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Unmasked per-entry losses: `[N, ...]` (softmax, per position) or the logits' shape."""
  if loss == 'softmax_cross_entropy':
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
  if loss == 'sigmoid_cross_entropy':
    return optax.sigmoid_binary_cross_entropy(logits, targets)
  return 0.5 * jnp.square(logits - targets)


def _loss_gradient(loss: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
  """d (sum of per-entry losses) / d logits, `[*logits.shape]`."""
  return jax.grad(lambda f: jnp.sum(_per_entry_loss(loss, f, targets)))(logits)


def _sample_targets(loss: str, key: jax.Array, logits: jax.Array) -> jax.Array:
  """Targets drawn from the model's predictive distribution, of the logits' shape."""
  if loss == 'softmax_cross_entropy':
    labels = jax.random.categorical(key, logits)
    return jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if loss == 'sigmoid_cross_entropy':
    return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(jnp.float32)
  return logits + jax.random.normal(key, logits.shape, jnp.float32)


def _hessian_sqrt_columns(loss: str, logits: jax.Array) -> jax.Array:
  """Exact square root of the per-example loss Hessian, unmasked and unscaled.

  Returns:
    `[M, *logits.shape]` with `M = prod(logits.shape[1:])`: column `m` of every example's square
    root; the Hessian is block diagonal over positions, so column `(position, k)` is zero
    outside its position.
  """
  num_examples = logits.shape[0]
  num_entries = logits[0].size
  if loss == 'softmax_cross_entropy':
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits).reshape(num_examples, -1, num_classes)  # [N, P, C]
    eye_c = jnp.eye(num_classes, dtype=jnp.float32)
    # root[n, p, c, k] = sqrt(p_k) (delta_ck - p_c)
    root = jnp.sqrt(probs)[:, :, None, :] * (eye_c - probs[..., :, None])
    eye_p = jnp.eye(probs.shape[1], dtype=jnp.float32)
    columns = jnp.einsum('pq,nqck->pknqc', eye_p, root)
  else:
    if loss == 'sigmoid_cross_entropy':
      probs = jax.nn.sigmoid(logits)
      diagonal = jnp.sqrt(probs * (1.0 - probs))
    else:
      diagonal = jnp.ones_like(logits)
    diagonal = diagonal.reshape(num_examples, num_entries)
    columns = jnp.eye(num_entries, dtype=jnp.float32)[:, None, :] * diagonal[None]
  return columns.reshape((num_entries,) + logits.shape)


def output_cotangents(loss: str, fisher_type: str, logits: jax.Array,
                      targets: Optional[jax.Array], *, mask: Optional[jax.Array] = None,
                      rng: Optional[jax.Array] = None, num_samples: int = 1) -> jax.Array:
  """Columns `c[m]` with `sum_m c_nm c_nm^T` = the (type-2, MC or empirical) curvature of
  `l_n / N` w.r.t. the outputs of example `n`.

  Args:
    loss: one of `LOSSES`.
    fisher_type: one of `FISHER_TYPES`.
    logits: model outputs `[N, ...]`.
    targets: true targets (used by `'empirical'`; see the module docstring for shapes).
    mask: per-example/position/entry weights, a prefix shape of the per-entry loss.
    rng: PRNG key, required for `'mc'`.
    num_samples: MC samples per example (`'mc'`).

  Returns:
    `[M, *logits.shape]` float32 (see the module docstring for `M`).
  """
  check_loss_and_fisher(loss, fisher_type)
  logits = logits.astype(jnp.float32)
  num_examples = logits.shape[0]
  loss_shape = logits.shape[:-1] if loss == 'softmax_cross_entropy' else logits.shape
  entry_mask = _entry_mask(mask, loss_shape)
  if loss == 'softmax_cross_entropy':
    entry_mask = entry_mask[..., None]
  num_valid = jnp.maximum(jnp.sum(example_weights(mask, num_examples)), 1.0)
  if fisher_type == 'empirical':
    gradient = _loss_gradient(loss, logits, _dense_targets(loss, logits, targets, entry_mask))
    return (gradient * entry_mask / jnp.sqrt(num_valid))[None]
  if fisher_type == 'type2':
    columns = _hessian_sqrt_columns(loss, logits)
  else:
    if rng is None:
      raise ValueError("fisher_type='mc' needs an rng")
    if num_samples < 1:
      raise ValueError(f'num_samples must be positive; got {num_samples}')

    def sample_gradient(sample):
      keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.fold_in(rng, n), sample))(
          jnp.arange(num_examples))
      sampled = jax.vmap(lambda key, f: _sample_targets(loss, key, f))(keys, logits)
      return _loss_gradient(loss, logits, sampled)

    columns = jax.vmap(sample_gradient)(jnp.arange(num_samples)) / jnp.sqrt(num_samples)
  return columns * jnp.sqrt(entry_mask / num_valid)


def objective_mask(weights: jax.Array) -> jax.Array:
  """The label mask scaled so that K-FAC's mean-over-examples loss is the training objective
  `sum(weights * loss) / sum(weights)`: `weights * (examples with any weight) / sum(weights)`.

  Args:
    weights: `[N, ...]` label weights (0 for padding and missing labels).

  Returns:
    `[N, ...]`, the mask to pass to `precondition` / `compute_factors`.
  """
  per_example = weights.reshape(weights.shape[0], -1)
  num_examples = jnp.sum(jnp.any(per_example != 0, axis=1))
  return weights * (num_examples / jnp.maximum(jnp.sum(weights), MIN_WEIGHT_SUM))
