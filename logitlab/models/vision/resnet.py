"""ResNets: the CIFAR family of mdistiller and ImageNet ResNet-18/34 (arXiv:1512.03385).

CIFAR (megvii-research/mdistiller ``models/cifar/resnet.py``): 3x3 stem to ``widths[0]``, three
stages of ``n = (depth - 2) // 6`` basic blocks at ``widths[1:]`` with strides 1, 2, 2, global
average pool, linear head. ``resnet8x4`` / ``resnet32x4`` use widths (32, 64, 128, 256), the
others (16, 16, 32, 64). Middle feature (USKD): GAP of stage 2 of 3.

ImageNet (torchvision): 7x7/2 stem, 3x3/2 max pool, four stages (64, 128, 256, 512) with strides
1, 2, 2, 2. Middle feature: GAP of stage 3 of 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from logitlab.models.vision.base import (AuxHead, ConvBN, VisionClassifier, global_avg_pool,
                                         run_stages)


class BasicBlock(nnx.Module):
  """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``; 1x1 conv+BN shortcut on change."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = ConvBN(in_features, out_features, 3, stride, rngs=rngs)
    self.conv2 = ConvBN(out_features, out_features, 3, activation=None, rngs=rngs)
    needs_projection = stride != 1 or in_features != out_features
    self.shortcut = (ConvBN(in_features, out_features, 1, stride, activation=None, rngs=rngs)
                     if needs_projection else None)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = self.conv2(self.conv1(x, train=train), train=train)
    residual = x if self.shortcut is None else self.shortcut(x, train=train)
    return jax.nn.relu(y + residual)


def _stage(in_features: int, out_features: int, num_blocks: int, stride: int,
           rngs: nnx.Rngs) -> nnx.List:
  blocks = [BasicBlock(in_features, out_features, stride, rngs=rngs)]
  blocks += [BasicBlock(out_features, out_features, 1, rngs=rngs) for _ in range(num_blocks - 1)]
  return nnx.List(blocks)


class CifarResNet(VisionClassifier):
  """mdistiller CIFAR ResNet (``resnet20/32/44/56/110``, ``resnet8x4``, ``resnet32x4``)."""

  def __init__(self, num_classes: int, *, depth: int, widths: Sequence[int] = (16, 16, 32, 64),
               in_channels: int = 3, aux_head: AuxHead = None, middle_head: bool = False,
               rngs: nnx.Rngs):
    if (depth - 2) % 6 != 0:
      raise ValueError(f"`depth` must be 6n + 2 for a CIFAR basic-block ResNet, got {depth}.")
    if len(widths) != 4:
      raise ValueError(f"`widths` must have 4 entries (stem, 3 stages), got {tuple(widths)}.")
    blocks_per_stage = (depth - 2) // 6
    self.stem = ConvBN(in_channels, widths[0], 3, rngs=rngs)
    self.stages = nnx.List([
        _stage(w_in, w_out, blocks_per_stage, stride, rngs)
        for w_in, w_out, stride in zip(widths[:3], widths[1:], (1, 2, 2))])
    self._init_heads(feature_dim=widths[3], middle_dim=widths[2], num_classes=num_classes,
                     aux_head=aux_head, middle_head=middle_head, rngs=rngs)

  def embed(self, x, *, train):
    outputs = run_stages(self.stages, self.stem(x, train=train), train=train)
    return global_avg_pool(outputs[-2]), global_avg_pool(outputs[-1])


class ImageNetResNet(VisionClassifier):
  """torchvision basic-block ResNet: ``resnet18`` (2, 2, 2, 2), ``resnet34`` (3, 4, 6, 3)."""

  def __init__(self, num_classes: int, *, stage_sizes: Sequence[int], in_channels: int = 3,
               aux_head: AuxHead = None, middle_head: bool = False, rngs: nnx.Rngs):
    widths = (64, 64, 128, 256, 512)
    self.stem = ConvBN(in_channels, widths[0], 7, 2, rngs=rngs)
    self.stages = nnx.List([
        _stage(w_in, w_out, n, stride, rngs)
        for w_in, w_out, n, stride in zip(widths[:4], widths[1:], stage_sizes, (1, 2, 2, 2))])
    self._init_heads(feature_dim=widths[4], middle_dim=widths[3], num_classes=num_classes,
                     aux_head=aux_head, middle_head=middle_head, rngs=rngs)

  def embed(self, x, *, train):
    x = self.stem(x, train=train)
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = run_stages(self.stages, x, train=train)
    return global_avg_pool(outputs[-2]), global_avg_pool(outputs[-1])
