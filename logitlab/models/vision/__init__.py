"""Flax NNX vision models for distillation: CIFAR / ImageNet CNNs, DeiT, tiny CPU nets.

All models share the interface of `base.VisionClassifier`: ``model(x, *, train) -> logits`` and
``model.forward(x, *, train) -> {"logits", "feature", "middle_feature"[, "aux_logits",
"middle_logits"]}``. Build them by name::

  model = vision.build("resnet32x4", num_classes=100, rngs=nnx.Rngs(0), aux_head="linear")

Keyword arguments after ``rngs`` go to the model's constructor (e.g. ``aux_head``,
``middle_head``, ``in_channels``, ``image_size`` for DeiT, ``in_features`` for ``mlp``).
"""

from __future__ import annotations

import functools

from flax import nnx

from logitlab.models.vision.base import VisionClassifier
from logitlab.models.vision.mobilenet import MobileNetV1, MobileNetV2
from logitlab.models.vision.resnet import CifarResNet, ImageNetResNet
from logitlab.models.vision.toy import MLP, Conv1DNet
from logitlab.models.vision.vgg import VGG, VGG_CONFIGS
from logitlab.models.vision.vit import VisionTransformer
from logitlab.models.vision.wrn import WideResNet

_X4 = (32, 64, 128, 256)

REGISTRY = {
    # CIFAR (mdistiller names).
    **{f"resnet{d}": functools.partial(CifarResNet, depth=d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(CifarResNet, depth=8, widths=_X4),
    "resnet32x4": functools.partial(CifarResNet, depth=32, widths=_X4),
    **{f"wrn_{d}_{k}": functools.partial(WideResNet, depth=d, widen_factor=k)
       for d in (16, 40) for k in (1, 2)},
    **{name: functools.partial(VGG, blocks=blocks) for name, blocks in VGG_CONFIGS.items()},
    "mobilenetv2_cifar": functools.partial(MobileNetV2, small_input=True),
    "mobilenetv2_half_cifar": functools.partial(MobileNetV2, small_input=True,
                                                width_multiplier=0.5),
    # ImageNet.
    "resnet18": functools.partial(ImageNetResNet, stage_sizes=(2, 2, 2, 2)),
    "resnet34": functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3)),
    "mobilenetv1": MobileNetV1,
    "mobilenetv2": MobileNetV2,
    "deit_tiny": functools.partial(VisionTransformer, patch_size=16, dim=192, depth=12,
                                   num_heads=3),
    # Embedded CPU experiments.
    "mlp": MLP,
    "conv1d": Conv1DNet,
}


def build(name: str, num_classes: int, *, rngs: nnx.Rngs, **kwargs) -> VisionClassifier:
  """Builds the model registered as ``name`` with a ``num_classes``-way head."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown model {name!r}; known: {sorted(REGISTRY)}.")
  return REGISTRY[name](num_classes, rngs=rngs, **kwargs)


__all__ = ["REGISTRY", "VisionClassifier", "build", "CifarResNet", "ImageNetResNet", "WideResNet",
           "VGG", "MobileNetV1", "MobileNetV2", "VisionTransformer", "MLP", "Conv1DNet"]
