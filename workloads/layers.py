"""Flax layers the workloads' models share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

# Keeps 1 / keep finite at rate 1 (every unit dropped): the mask is then all zeros, so the
# output and its gradient are 0 rather than 0 * inf = NaN.
_MIN_KEEP_PROBABILITY = 1e-12


class Dropout(nn.Module):
  """Inverted dropout whose rate is a call argument: a Python float or a traced scalar.

  `flax.linen.Dropout` takes its rate as a module attribute and branches on it in Python, so a
  rate that arrives traced (a submission passing `hyperparameters.dropout_rate` into `model_fn`
  inside `jit`) fails with a `TracerBoolConversionError`. Here the rate is only arithmetic: with
  keep probability `p = 1 - rate` and a mask `m ~ Bernoulli(p)` drawn from the `'dropout'` rng,
  the output is `x * m / p` (training) or `x` (`deterministic`). The mask is drawn as
  `flax.linen.Dropout` draws it, so the same rng gives the same mask.
  """

  @nn.compact
  def __call__(self, x: jax.Array, rate: jax.typing.ArrayLike, deterministic: bool
               ) -> jax.Array:
    if deterministic or (isinstance(rate, (int, float)) and rate == 0):
      return x  # A Python 0 needs no rng; a traced rate always draws the mask.
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, x.shape)
    scale = 1.0 / jnp.maximum(keep, _MIN_KEEP_PROBABILITY)
    return jnp.where(mask, x * scale.astype(x.dtype), jnp.zeros_like(x))
