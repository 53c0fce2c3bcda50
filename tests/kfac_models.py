"""Small Flax models shared by the K-FAC tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

NUM_CLASSES = 3


class Mixed(nn.Module):
  """Every kind of layer K-FAC sees, and some it does not."""

  @nn.compact
  def __call__(self, tokens, image):
    x = nn.Embed(10, 4)(tokens)  # [N, L, 4]
    x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(nn.LayerNorm()(x))
    x = nn.DenseGeneral((2, 3), axis=(-2, -1))(x[:, :3])  # [N, 2, 3] from [N, 3, 4]
    y = nn.Conv(4, (3, 3), strides=2)(image)
    y = nn.BatchNorm(use_running_average=True)(y)
    y = nn.Conv(4, (1, 1), feature_group_count=2)(y)
    return nn.Dense(5)(jnp.concatenate([x.reshape(x.shape[0], -1), y.mean(axis=(1, 2))], -1))


@pytest.fixture(name='mixed', scope='module')
def fixture_mixed():
  """`(apply_fn, variable shapes, inputs)` of the `Mixed` model (shapes suffice for reports)."""
  tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  image = jax.random.normal(jax.random.key(0), (2, 6, 6, 2))
  model = Mixed()

  def apply_fn(params, inputs):
    return model.apply(params, *inputs)

  return apply_fn, jax.eval_shape(model.init, jax.random.key(1), tokens, image), (tokens, image)


class ConvNet(nn.Module):
  """Conv -> relu -> spatial mean -> LayerNorm -> Dense; a grouped conv on request."""

  grouped: bool = False

  @nn.compact
  def __call__(self, x):  # x [N, 6, 6, 2]
    x = nn.relu(nn.Conv(4, (3, 3), padding='SAME')(x))
    if self.grouped:
      x = nn.Conv(4, (1, 1), feature_group_count=2)(x)
    x = nn.LayerNorm()(x.mean(axis=(1, 2)))
    return nn.Dense(NUM_CLASSES)(x)


def batch(seed=0, n=8):
  """Inputs `[n, 6, 6, 2]` and integer labels `[n]` (numpy: no eager jax ops to compile)."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, 6, 6, 2)).astype(np.float32),
          rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def init(model, x):
  return jax.jit(model.init)(jax.random.PRNGKey(1), x)
