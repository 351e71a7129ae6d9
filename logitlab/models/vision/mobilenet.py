"""MobileNetV1 (arXiv:1704.04861) and MobileNetV2 (arXiv:1801.04381).

V1 (ImageNet, the student of mdistiller's R50 -> MobileNetV1): 3x3/2 stem to 32, then 13
depthwise-separable blocks (dw3x3-BN-ReLU, pw1x1-BN-ReLU) to 1024, GAP, linear head.
V2: 3x3/2 stem, inverted residual blocks ``(t, c, n, s)``, 1x1 conv to 1280, GAP, linear head.
``small_input=True`` gives the CIFAR variant of CRD/mdistiller (second row's stride 1 for V2,
stem stride 1 for V1); ``width_multiplier=0.5`` is mdistiller's ``MobileNetV2`` student
("mobile_half").

Stages are the runs of blocks at one resolution (a stride-2 block starts a new one); the middle
feature (USKD) is the GAP of the second-to-last stage (512 channels for V1, 96 x width for V2).
"""

from __future__ import annotations

import jax
from flax import nnx

from logitlab.models.vision.base import (AuxHead, ConvBN, VisionClassifier, global_avg_pool,
                                         run_stages)

# (channels, stride) of each depthwise-separable block.
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# (expansion t, channels c, repeats n, first stride s) of each inverted-residual row.
_V2_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def _group_by_resolution(blocks: list[tuple[nnx.Module, int]]) -> nnx.List:
  stages = []
  for block, stride in blocks:
    if stride != 1 or not stages:
      stages.append([])
    stages[-1].append(block)
  return nnx.List([nnx.List(stage) for stage in stages])


class DepthwiseSeparable(nnx.Module):

  def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
    self.depthwise = ConvBN(in_features, in_features, 3, stride, groups=in_features, rngs=rngs)
    self.pointwise = ConvBN(in_features, out_features, 1, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.pointwise(self.depthwise(x, train=train), train=train)


class MobileNetV1(VisionClassifier):

  def __init__(self, num_classes: int, *, width_multiplier: float = 1.0,
               small_input: bool = False, in_channels: int = 3, aux_head: AuxHead = None,
               middle_head: bool = False, rngs: nnx.Rngs):
    width = int(32 * width_multiplier)
    self.stem = ConvBN(in_channels, width, 3, 1 if small_input else 2, rngs=rngs)
    blocks = []
    for channels, stride in _V1_BLOCKS:
      out = int(channels * width_multiplier)
      blocks.append((DepthwiseSeparable(width, out, stride, rngs=rngs), stride))
      width = out
    self.stages = _group_by_resolution(blocks)
    self._init_heads(feature_dim=width, middle_dim=int(512 * width_multiplier),
                     num_classes=num_classes, aux_head=aux_head, middle_head=middle_head,
                     rngs=rngs)

  def embed(self, x, *, train):
    outputs = run_stages(self.stages, self.stem(x, train=train), train=train)
    return global_avg_pool(outputs[-2]), global_avg_pool(outputs[-1])


class InvertedResidual(nnx.Module):
  """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, residual if shapes match."""

  def __init__(self, in_features: int, out_features: int, stride: int, expansion: int, *,
               rngs: nnx.Rngs):
    hidden = in_features * expansion
    self.expand = (ConvBN(in_features, hidden, 1, activation=jax.nn.relu6, rngs=rngs)
                   if expansion != 1 else None)
    self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden, activation=jax.nn.relu6,
                            rngs=rngs)
    self.project = ConvBN(hidden, out_features, 1, activation=None, rngs=rngs)
    self.use_residual = stride == 1 and in_features == out_features

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = x if self.expand is None else self.expand(x, train=train)
    y = self.project(self.depthwise(y, train=train), train=train)
    return x + y if self.use_residual else y


class MobileNetV2(VisionClassifier):

  def __init__(self, num_classes: int, *, width_multiplier: float = 1.0,
               small_input: bool = False, in_channels: int = 3, aux_head: AuxHead = None,
               middle_head: bool = False, rngs: nnx.Rngs):
    width = int(32 * width_multiplier)
    self.stem = ConvBN(in_channels, width, 3, 2, activation=jax.nn.relu6, rngs=rngs)
    blocks = []
    for row, (expansion, channels, repeats, first_stride) in enumerate(_V2_ROWS):
      if small_input and row == 1:
        first_stride = 1
      out = int(channels * width_multiplier)
      for i in range(repeats):
        stride = first_stride if i == 0 else 1
        blocks.append((InvertedResidual(width, out, stride, expansion, rngs=rngs), stride))
        width = out
    self.stages = _group_by_resolution(blocks)
    # As in the reference: the last conv only widens beyond 1280 for multipliers > 1.
    last = int(1280 * width_multiplier) if width_multiplier > 1.0 else 1280
    self.last_conv = ConvBN(width, last, 1, activation=jax.nn.relu6, rngs=rngs)
    self._init_heads(feature_dim=last, middle_dim=int(96 * width_multiplier),
                     num_classes=num_classes, aux_head=aux_head, middle_head=middle_head,
                     rngs=rngs)

  def embed(self, x, *, train):
    outputs = run_stages(self.stages, self.stem(x, train=train), train=train)
    return global_avg_pool(outputs[-2]), global_avg_pool(self.last_conv(outputs[-1], train=train))
