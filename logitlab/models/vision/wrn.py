"""Wide ResNets WRN-d-k (arXiv:1605.07146) as in mdistiller ``models/cifar/wrn.py``.

Pre-activation blocks: ``x + conv3x3(relu(bn(conv3x3(relu(bn(x))))))``; when the width or stride
changes, the shortcut is a 1x1 conv applied to the *activated* input (the reference code's
``convShortcut(relu(bn(x)))``). Stem conv3x3 to 16, three stages of ``n = (depth - 4) // 6``
blocks at widths (16k, 32k, 64k), strides 1, 2, 2, then BN-ReLU, GAP, linear head.
Middle feature (USKD): GAP of stage 2 of 3 (raw block output).
"""

from __future__ import annotations

import jax
from flax import nnx

from logitlab.models.vision.base import (AuxHead, VisionClassifier, batch_norm, conv,
                                         global_avg_pool, run_stages)


class PreActBlock(nnx.Module):

  def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
    self.bn1 = batch_norm(in_features, rngs=rngs)
    self.conv1 = conv(in_features, out_features, 3, stride, rngs=rngs)
    self.bn2 = batch_norm(out_features, rngs=rngs)
    self.conv2 = conv(out_features, out_features, 3, rngs=rngs)
    same_shape = in_features == out_features and stride == 1
    self.shortcut = None if same_shape else conv(in_features, out_features, 1, stride, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    activated = jax.nn.relu(self.bn1(x, use_running_average=not train))
    y = jax.nn.relu(self.bn2(self.conv1(activated), use_running_average=not train))
    y = self.conv2(y)
    return y + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(VisionClassifier):
  """``wrn_16_2``, ``wrn_40_2``, ... (mdistiller naming: depth, widen factor)."""

  def __init__(self, num_classes: int, *, depth: int, widen_factor: int, in_channels: int = 3,
               aux_head: AuxHead = None, middle_head: bool = False, rngs: nnx.Rngs):
    if (depth - 4) % 6 != 0:
      raise ValueError(f"`depth` must be 6n + 4 for a Wide ResNet, got {depth}.")
    blocks_per_stage = (depth - 4) // 6
    widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    self.stem = conv(in_channels, widths[0], 3, rngs=rngs)
    self.stages = nnx.List([
        nnx.List([PreActBlock(w_in if i == 0 else w_out, w_out, stride if i == 0 else 1,
                              rngs=rngs) for i in range(blocks_per_stage)])
        for w_in, w_out, stride in zip(widths[:3], widths[1:], (1, 2, 2))])
    self.final_bn = batch_norm(widths[3], rngs=rngs)
    self._init_heads(feature_dim=widths[3], middle_dim=widths[2], num_classes=num_classes,
                     aux_head=aux_head, middle_head=middle_head, rngs=rngs)

  def embed(self, x, *, train):
    outputs = run_stages(self.stages, self.stem(x), train=train)
    final = jax.nn.relu(self.final_bn(outputs[-1], use_running_average=not train))
    return global_avg_pool(outputs[-2]), global_avg_pool(final)
