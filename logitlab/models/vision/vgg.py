"""VGG with BatchNorm (arXiv:1409.1556) as in mdistiller ``models/cifar/vgg.py``.

Five blocks of conv3x3-BN-ReLU layers; 2x2 max pool after blocks 0-3; GAP after block 4; linear
head. ``vgg8`` widths per block: (64,), (128,), (256,), (512,), (512,); ``vgg13``: every block
doubled. Middle feature (USKD): GAP of block 3 of 5 (the second-to-last block).
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from logitlab.models.vision.base import AuxHead, ConvBN, VisionClassifier, global_avg_pool

VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class VGG(VisionClassifier):

  def __init__(self, num_classes: int, *, blocks: Sequence[Sequence[int]], in_channels: int = 3,
               aux_head: AuxHead = None, middle_head: bool = False, rngs: nnx.Rngs):
    layers, width = [], in_channels
    for block in blocks:
      block_layers = []
      for out in block:
        block_layers.append(ConvBN(width, out, 3, rngs=rngs))
        width = out
      layers.append(nnx.List(block_layers))
    self.blocks = nnx.List(layers)
    self._init_heads(feature_dim=width, middle_dim=blocks[-2][-1], num_classes=num_classes,
                     aux_head=aux_head, middle_head=middle_head, rngs=rngs)

  def embed(self, x, *, train):
    outputs = []
    for i, block in enumerate(self.blocks):
      for layer in block:
        x = layer(x, train=train)
      outputs.append(x)
      if i < len(self.blocks) - 1:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return global_avg_pool(outputs[-2]), global_avg_pool(outputs[-1])
