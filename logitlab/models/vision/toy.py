"""Tiny nets for the embedded (CPU, generated-data) experiments, same interface as the CNNs.

Inputs are flat vectors ``[N, L]`` (e.g. mnist1d's 40-sample signals or 8x8 digits flattened);
``Conv1DNet`` reads them as one-channel 1-D signals. Both are cheap enough to train 3 seeds x 8
losses in minutes on 2 CPU cores.

* ``MLP``: ``hidden`` ReLU layers; middle feature = activation of layer ``len(hidden) // 2``
  (1-based), final feature = last hidden activation. Kernels alternate ``("embed", "mlp")``,
  ``("mlp", "embed")``, ... and every head reads the axis its feature carries (``base``, module
  docstring): never two consecutive ``P("fsdp", "tensor")`` kernels.
* ``Conv1DNet``: conv(k=5, stride 2)-BN-ReLU layers, then GAP; middle feature = GAP of the
  second-to-last conv layer (the CNN rule of `base`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from logitlab.models.vision.base import (AuxHead, VisionClassifier, alternate_axes,
                                         batch_norm, dense)


class MLP(VisionClassifier):

  input_rank = 2

  def __init__(self, num_classes: int, *, in_features: int, hidden: Sequence[int] = (64, 64),
               aux_head: AuxHead = None, middle_head: bool = False, rngs: nnx.Rngs):
    if not hidden:
      raise ValueError("`hidden` must name at least one hidden layer width.")
    widths = (in_features, *hidden)
    axes, in_axis = [], "embed"
    for _ in hidden:  # Megatron-style: one kernel's output axis is the next one's input axis.
      axes.append(alternate_axes(in_axis))
      in_axis = axes[-1][1]
    self.layers = nnx.List([dense(w_in, w_out, axes=a, rngs=rngs)
                            for w_in, w_out, a in zip(widths[:-1], widths[1:], axes)])
    self.middle_index = max(len(hidden) // 2, 1) - 1
    self._init_heads(feature_dim=hidden[-1], middle_dim=hidden[self.middle_index],
                     num_classes=num_classes, aux_head=aux_head, middle_head=middle_head,
                     feature_axis=axes[-1][1], middle_axis=axes[self.middle_index][1],
                     rngs=rngs)

  def embed(self, x, *, train):
    del train
    activations = []
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
      activations.append(x)
    return activations[self.middle_index], activations[-1]


class Conv1DNet(VisionClassifier):

  input_rank = 2

  def __init__(self, num_classes: int, *, channels: Sequence[int] = (32, 32, 32),
               aux_head: AuxHead = None, middle_head: bool = False, rngs: nnx.Rngs):
    if len(channels) < 2:
      raise ValueError(f"`channels` needs >= 2 conv layers, got {tuple(channels)}.")
    widths = (1, *channels)
    self.convs = nnx.List([
        nnx.Conv(w_in, w_out, (5,), strides=2, padding=((2, 2),), use_bias=False, rngs=rngs)
        for w_in, w_out in zip(widths[:-1], widths[1:])])
    self.norms = nnx.List([batch_norm(w, rngs=rngs) for w in channels])
    self._init_heads(feature_dim=channels[-1], middle_dim=channels[-2],
                     num_classes=num_classes, aux_head=aux_head, middle_head=middle_head,
                     rngs=rngs)

  def embed(self, x, *, train):
    x = x[..., None]  # [N, L] -> [N, L, 1]
    pooled = []
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.relu(norm(conv(x), use_running_average=not train))
      pooled.append(jnp.mean(x, axis=1))
    return pooled[-2], pooled[-1]
