"""ViT for ImageNet as in AlgoPerf's `imagenet_vit` workload (ViT-S/16 at full size).

A pre-LayerNorm transformer encoder over non-overlapping image patches, with fixed 2-D sin-cos
position embeddings, no class token, global average pooling over tokens, a tanh "pre-logits"
Dense layer and a zero-initialised classification head (Beyer et al. 2022, "Better plain ViT
baselines for ImageNet-1k"; Dosovitskiy et al. 2021).

Every layer with weights is a `nn.Dense`, a `nn.DenseGeneral` (the q/k/v/out projections inside
`nn.MultiHeadDotProductAttention`) or a `nn.Conv` (the patch embedding), each called once per
forward pass under a fixed name, so the K-FAC capture (`kfac/capture.py`) sees every
weight-sharing layer of the model as it is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from workloads.layers import Dropout


def sincos_position_embedding(height: int, width: int, dim: int,
                              temperature: float = 10_000.0) -> jax.Array:
  """Fixed 2-D sin-cos position embeddings (MoCo v3 / big_vision layout).

  With `omega_j = temperature ** (-j / (dim / 4 - 1))`, j = 0 .. dim/4 - 1, the embedding of the
  token at grid position (y, x) is `[sin(x omega), cos(x omega), sin(y omega), cos(y omega)]`.

  Args:
    height, width: the patch grid; tokens are ordered row-major (y outer, x inner).
    dim: the embedding width, a multiple of 4.

  Returns:
    `[1, height * width, dim]` float32.
  """
  if dim % 4 != 0:
    raise ValueError(f'sin-cos position embedding needs a width divisible by 4, got {dim}')
  y, x = jnp.mgrid[:height, :width]
  omega = jnp.arange(dim // 4) / (dim // 4 - 1)
  omega = 1.0 / (temperature ** omega)  # [dim / 4]
  y_angles = y.reshape(-1)[:, None] * omega[None, :]  # [height * width, dim / 4]
  x_angles = x.reshape(-1)[:, None] * omega[None, :]
  embedding = jnp.concatenate(
      [jnp.sin(x_angles), jnp.cos(x_angles), jnp.sin(y_angles), jnp.cos(y_angles)], axis=1)
  return embedding[None].astype(jnp.float32)


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense(mlp_dim) -> GELU -> dropout -> Dense(width).

  Attributes:
    mlp_dim: the hidden width.
  """

  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, dropout_rate: float) -> jax.Array:
    """`x`: `[N, T, D]` -> `[N, T, D]`."""
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6))
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, name='Dense_0', **inits)(x)
    x = nn.gelu(x)
    x = Dropout()(x, dropout_rate, deterministic=not train)
    return nn.Dense(width, name='Dense_1', **inits)(x)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm encoder block: `x + Attn(LN(x))`, then `x + MLP(LN(x))`.

  Attributes:
    mlp_dim: the hidden width of the MLP block.
    num_heads: attention heads; the width must be divisible by it.
  """

  mlp_dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, dropout_rate: float) -> jax.Array:
    """`x`: `[N, T, D]` -> `[N, T, D]`."""
    y = nn.LayerNorm(name='LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
        deterministic=True, name='MultiHeadDotProductAttention_1')(y)
    y = Dropout()(y, dropout_rate, deterministic=not train)
    x = x + y
    y = nn.LayerNorm(name='LayerNorm_2')(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, name='MlpBlock_3')(y, train, dropout_rate)
    y = Dropout()(y, dropout_rate, deterministic=not train)
    return x + y


class Encoder(nn.Module):
  """`depth` encoder blocks followed by a final LayerNorm.

  Attributes:
    depth: the number of blocks.
    mlp_dim: the hidden width of the MLP blocks.
    num_heads: attention heads per block.
  """

  depth: int
  mlp_dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, dropout_rate: float) -> jax.Array:
    """`x`: `[N, T, D]` -> `[N, T, D]`."""
    for layer in range(self.depth):
      x = EncoderBlock(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                       name=f'encoderblock_{layer}')(x, train, dropout_rate)
    return nn.LayerNorm(name='encoder_layernorm')(x)


class ViT(nn.Module):
  """Vision transformer classifier.

  Attributes:
    num_classes: the number of logits.
    patch_size: the side of the square patches (kernel = stride of the patch embedding conv).
    width: the token width D.
    depth: the number of encoder blocks.
    mlp_dim: the hidden width of the MLP blocks.
    num_heads: attention heads per block.
  """

  num_classes: int
  patch_size: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               dropout_rate: float = 0.0) -> jax.Array:
    """Logits of a batch of images.

    Args:
      images: `[N, H, W, 3]`, H and W multiples of `patch_size`.
      train: whether dropout is active.
      dropout_rate: the rate of the dropout after the position embedding, the attention and the
        MLP blocks (AlgoPerf's ViT default is 0).

    Returns:
      `[N, num_classes]` logits.
    """
    patch = (self.patch_size, self.patch_size)
    x = nn.Conv(self.width, patch, strides=patch, padding='VALID',
                name='conv_patch_extract')(images)  # [N, H/p, W/p, D]
    n, grid_h, grid_w, d = x.shape
    x = x.reshape(n, grid_h * grid_w, d)  # [N, T, D]
    x = x + sincos_position_embedding(grid_h, grid_w, d).astype(x.dtype)
    x = Dropout()(x, dropout_rate, deterministic=not train)
    x = Encoder(depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                name='Transformer')(x, train, dropout_rate)
    x = jnp.mean(x, axis=1)  # [N, D]: global average pool, no class token.
    x = nn.tanh(nn.Dense(self.width, name='pre_logits')(x))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(x)
