"""Vision Transformer / DeiT (arXiv:2010.11929, arXiv:2012.12877).

DeiT-Tiny: patch 16, width 192, 12 pre-LayerNorm blocks, 3 heads, MLP ratio 4, class token,
learned position embeddings, final LayerNorm, linear head on the class token. ``image_size`` and
``patch_size`` are free (e.g. 32 / 4 for CIFAR-sized inputs). Stochastic depth and the
distillation token of DeiT's training recipe are not included.

Middle feature (USKD, arXiv:2303.13005): the class token after block ``depth // 2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from logitlab.models.vision.base import AuxHead, VisionClassifier, dense


class EncoderBlock(nnx.Module):
  """``x + attn(ln(x))``, then ``x + mlp(ln(x))`` with exact GELU."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        num_heads, dim, decode=False,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(),
                                          ("embed", "heads", None), eager_sharding=False),
        out_kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(),
                                              ("heads", None, "embed"),
                                              eager_sharding=False),
        rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self.fc1 = dense(dim, dim * mlp_ratio, axes=("embed", "mlp"), rngs=rngs)
    self.fc2 = dense(dim * mlp_ratio, dim, axes=("mlp", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class VisionTransformer(VisionClassifier):

  def __init__(self, num_classes: int, *, image_size: int = 224, patch_size: int = 16,
               dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: int = 4,
               in_channels: int = 3, aux_head: AuxHead = None, middle_head: bool = False,
               rngs: nnx.Rngs):
    if image_size % patch_size != 0:
      raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` "
                       f"({patch_size}).")
    self.image_size = image_size
    num_patches = (image_size // patch_size) ** 2
    self.patch_embed = nnx.Conv(in_channels, dim, (patch_size, patch_size), strides=patch_size,
                                padding="VALID", rngs=rngs)
    init = nnx.initializers.truncated_normal(0.02)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim)))
    self.pos_embed = nnx.Param(init(rngs.params(), (1, num_patches + 1, dim)))
    self.blocks = nnx.List([EncoderBlock(dim, num_heads, mlp_ratio, rngs=rngs)
                            for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self._init_heads(feature_dim=dim, middle_dim=dim, num_classes=num_classes,
                     aux_head=aux_head, middle_head=middle_head, rngs=rngs)

  def embed(self, x, *, train):
    del train  # No BatchNorm or dropout.
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"`x` must have spatial size ({self.image_size}, {self.image_size}) for "
                       f"this VisionTransformer, got shape {x.shape}.")
    patches = self.patch_embed(x)
    tokens = patches.reshape(patches.shape[0], -1, patches.shape[-1])
    cls = jnp.broadcast_to(self.cls_token[...], (tokens.shape[0], 1, tokens.shape[-1]))
    tokens = jnp.concatenate([cls, tokens], axis=1) + self.pos_embed[...]
    middle_index = len(self.blocks) // 2 - 1
    middle = None
    for i, block in enumerate(self.blocks):
      tokens = block(tokens)
      if i == middle_index:
        middle = tokens[:, 0]
    return middle, self.norm(tokens)[:, 0]
