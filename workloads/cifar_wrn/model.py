"""Wide ResNet for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: a 3x3 stem convolution with 16 channels, then three groups of n = (d - 4) / 6
pre-activation basic blocks with 16k, 32k and 64k channels (strides 1, 2, 2), then
BatchNorm-ReLU, global average pooling and a Dense classifier. A block is
`BN-ReLU-Conv3x3-BN-ReLU-Dropout-Conv3x3` plus a shortcut: the identity, or a 1x1 convolution of
the first BN-ReLU output when the channel count or the stride changes. Convolutions have no bias.

BatchNorm running statistics live in the `batch_stats` collection; `train=True` normalises with
batch statistics (and updates the running averages when the collection is mutable),
`train=False` with the running averages. Every `nn.Conv`/`nn.Dense` is called once per forward
pass under a fixed name.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from workloads.layers import Dropout

# He-normal over fan-out, as in the reference (Torch) implementation of the paper.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# Running-average decay and epsilon of BatchNorm (PyTorch's momentum 0.1 in Flax's convention).
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def blocks_per_group(depth: int) -> int:
  """n = (depth - 4) / 6 blocks per group; depth counts the convs on the main path plus stem and
  classifier (6n + 4)."""
  if depth < 10 or (depth - 4) % 6 != 0:
    raise ValueError(f'Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}')
  return (depth - 4) // 6


class WideResNetBlock(nn.Module):
  """Pre-activation basic block.

  Attributes:
    channels: output channels.
    stride: stride of the first 3x3 conv (and of the projection shortcut).
  """

  channels: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, dropout_rate: float) -> jax.Array:
    """`x`: `[N, H, W, C_in]` -> `[N, H / stride, W / stride, channels]`."""
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON)
    conv = functools.partial(nn.Conv, self.channels, padding='SAME', use_bias=False,
                             kernel_init=CONV_INIT)
    strides = (self.stride, self.stride)
    activated = nn.relu(norm(name='BatchNorm_0')(x))
    if x.shape[-1] != self.channels or self.stride != 1:
      shortcut = conv((1, 1), strides=strides, name='Conv_shortcut')(activated)
    else:
      shortcut = x
    y = conv((3, 3), strides=strides, name='Conv_0')(activated)
    y = nn.relu(norm(name='BatchNorm_1')(y))
    y = Dropout()(y, dropout_rate, deterministic=not train)
    y = conv((3, 3), name='Conv_1')(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-widen_factor classifier.

  Attributes:
    depth: 6n + 4 (n >= 1 blocks per group).
    widen_factor: k, the channel multiplier of the three groups (16k, 32k, 64k).
    num_classes: the number of logits.
  """

  depth: int
  widen_factor: int
  num_classes: int

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               dropout_rate: float = 0.0) -> jax.Array:
    """Logits of a batch of images.

    Args:
      images: `[N, H, W, 3]`.
      train: batch statistics (True) or running averages (False) in BatchNorm; dropout on.
      dropout_rate: dropout between the two convs of each block (the paper's WRN-d-k-dropout).

    Returns:
      `[N, num_classes]` logits.
    """
    x = nn.Conv(16, (3, 3), padding='SAME', use_bias=False, kernel_init=CONV_INIT,
                name='Conv_stem')(images)
    num_blocks = blocks_per_group(self.depth)
    for group, (channels, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      for block in range(num_blocks):
        x = WideResNetBlock(channels=channels * self.widen_factor,
                            stride=stride if block == 0 else 1,
                            name=f'group_{group}_block_{block}')(x, train, dropout_rate)
    x = nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                     epsilon=BATCH_NORM_EPSILON, name='BatchNorm_final')(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))  # [N, 64k]
    return nn.Dense(self.num_classes, name='head')(x)
