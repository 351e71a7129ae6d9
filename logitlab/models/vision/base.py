"""The uniform interface of every vision model and the layers the families share.

Every model is a `VisionClassifier`:

* ``model(x, *, train=False) -> logits [N, num_classes]`` (float32).
* ``model.forward(x, *, train=False) -> dict`` with

  - ``"logits"``: main head on the final feature, ``[N, num_classes]``;
  - ``"feature"``: the pooled final feature fed to the head, ``[N, feature_dim]``;
  - ``"middle_feature"``: the USKD middle feature, ``[N, middle_dim]``: global average pool of the
    second-to-last stage for CNNs, the class token after block ``depth // 2`` for ViTs
    (USKD, arXiv:2303.13005);
  - ``"aux_logits"`` (only with ``aux_head="linear" | "mlp" | "dhkd_mlp"``): the DHKD second head on the same
    final feature (Dual-Head KD, arXiv:2411.08937): the KD loss goes on this head, CE on ``logits``;
  - ``"middle_logits"`` (only with ``middle_head=True``): USKD's auxiliary linear classifier on
    the middle feature (the weak head whose logits rank the non-target classes).

``train`` selects batch statistics (and updates the running averages) in BatchNorm; ``train=False``
uses the running averages, like PyTorch's ``model.eval()``. Inputs are NHWC images, any float
dtype (bf16 included); parameters and logits are float32.

Sharding: kernels carry logical-axis annotations (``nnx.with_partitioning``) with the names of
``logitlab.training.mesh.LOGICAL_AXIS_RULES``: conv kernels ``(None, None, "conv_in",
"conv_out")``; consecutive dense kernels alternate Megatron-style, ``("embed", "mlp")``
(column-parallel) then ``("mlp", "embed")`` (row-parallel), so the output axis of one kernel is
the input axis of the next (``alternate_axes``). A classifier kernel reads the axis its feature
carries (``classifier_axes``): ``("embed", "vocab")`` after an ``embed`` feature, ``("mlp",
None)`` after an ``mlp`` one (``mlp`` and ``vocab`` both map to ``tensor``). Two consecutive
kernels that both map to ``P("fsdp", "tensor")`` are avoided on purpose: on a ``data x fsdp x
tensor`` mesh XLA's SPMD partitioner (jax 0.10.2, CPU) returns wrong gradients for that layout
(docs/scaling.md, "Known issue"; tested by tests/test_vision_sharding.py). The annotations are
metadata only (``eager_sharding=False``) until ``training.state.create_train_state`` maps them.
"""

from __future__ import annotations

import numbers
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from logitlab import numerics

AuxHead = Literal["linear", "mlp", "dhkd_mlp"] | None

# PyTorch BatchNorm defaults (momentum 0.1 on the new statistic = flax momentum 0.9).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def conv_kernel_init():
  """He (fan_out, normal) init as in mdistiller/torchvision ResNets, with sharding axes."""
  return nnx.with_partitioning(nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                               (None, None, "conv_in", "conv_out"),
                               eager_sharding=False)


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, rngs: nnx.Rngs) -> nnx.Conv:
  """``kernel x kernel`` conv with PyTorch's symmetric ``kernel // 2`` padding.

  Explicit padding (not "SAME") so stride-2 convs see the same pixels as the PyTorch
  reference models, which matters when porting teacher weights.
  """
  pad = kernel // 2
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=stride,
                  padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                  use_bias=use_bias, kernel_init=conv_kernel_init(), rngs=rngs)


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(num_features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)


FeatureAxis = Literal["embed", "mlp"]


def alternate_axes(in_axis: FeatureAxis) -> tuple[FeatureAxis, FeatureAxis]:
  """Logical axes of a hidden dense kernel reading a feature on ``in_axis``.

  ``"embed" -> ("embed", "mlp")`` (column-parallel), ``"mlp" -> ("mlp", "embed")``
  (row-parallel): the kernel's output axis, ``axes[1]``, is the input axis of the next one.
  """
  if in_axis not in ("embed", "mlp"):
    raise ValueError(f"`in_axis` must be 'embed' or 'mlp', got {in_axis!r}.")
  return (in_axis, "mlp" if in_axis == "embed" else "embed")


def classifier_axes(in_axis: FeatureAxis) -> tuple[str, str | None]:
  """Logical axes of a classifier kernel ``[features, classes]`` reading a feature on ``in_axis``.

  ``("embed", "vocab")`` after an ``embed`` feature; ``("mlp", None)`` after an ``mlp`` one:
  ``mlp`` and ``vocab`` both map to the ``tensor`` mesh axis, so the classes are replicated and
  the head is row-parallel.
  """
  if in_axis not in ("embed", "mlp"):
    raise ValueError(f"`in_axis` must be 'embed' or 'mlp', got {in_axis!r}.")
  return ("embed", "vocab") if in_axis == "embed" else ("mlp", None)


def _check_sizes(**sizes) -> None:
  """Raises naming the argument unless every given layer size is a positive int."""
  for name, value in sizes.items():
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def dense(in_features: int, out_features: int, *, axes=("embed", "vocab"),
          rngs: nnx.Rngs) -> nnx.Linear:
  """``nnx.Linear`` whose kernel ``[in_features, out_features]`` carries logical ``axes``."""
  return nnx.Linear(in_features, out_features,
                    kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes,
                                                      eager_sharding=False),
                    rngs=rngs)


class ConvBN(nnx.Module):
  """conv -> BatchNorm -> optional ReLU (or ReLU6 for MobileNetV2)."""

  def __init__(self, in_features: int, out_features: int, kernel: int, stride: int = 1, *,
               groups: int = 1, activation=jax.nn.relu, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, kernel, stride, groups=groups, rngs=rngs)
    self.bn = batch_norm(out_features, rngs=rngs)
    self.activation = activation

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = self.bn(self.conv(x), use_running_average=not train)
    return y if self.activation is None else self.activation(y)


def run_stages(stages: nnx.List, x: jax.Array, *, train: bool) -> list[jax.Array]:
  """Runs a list of stages (each a list of ``block(x, *, train)``); returns every stage output."""
  outputs = []
  for stage in stages:
    for block in stage:
      x = block(x, train=train)
    outputs.append(x)
  return outputs


def global_avg_pool(x: jax.Array) -> jax.Array:
  """``[N, H, W, C] -> [N, C]``."""
  if jnp.ndim(x) != 4:
    raise ValueError(f"`x` must have shape [N, H, W, C], got shape {jnp.shape(x)}.")
  return jnp.mean(x, axis=(1, 2))


class MLPHead(nnx.Module):
  """Nonlinear DHKD auxiliary head: Linear(d, d) -> ReLU -> Linear(d, C).

  Kernels alternate from ``in_axis`` (the feature's logical axis): ``("embed", "mlp")`` then
  ``("mlp", None)`` for an ``embed`` feature, ``("mlp", "embed")`` then ``("embed", "vocab")``
  for an ``mlp`` one.
  """

  def __init__(self, in_features: int, num_classes: int, *, in_axis: FeatureAxis = "embed",
               rngs: nnx.Rngs):
    _check_sizes(in_features=in_features, num_classes=num_classes)
    hidden_axes = alternate_axes(in_axis)
    self.hidden = dense(in_features, in_features, axes=hidden_axes, rngs=rngs)
    self.out = dense(in_features, num_classes, axes=classifier_axes(hidden_axes[1]), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x)))


class DHKDNonlinearHead(nnx.Module):
  """The official DHKD CIFAR auxiliary head (``--nonlinear``): Linear(d, 200) -> Dropout(0.1)
  -> BatchNorm(200) -> ReLU -> Linear(200, C) (penghui-yang/DHKD models/classifier.py:4-18).

  The hidden width is replicated (200 is not a sharded axis); the output kernel is
  ``(None, "vocab")``.
  """

  def __init__(self, in_features: int, num_classes: int, *, in_axis: FeatureAxis = "embed",
               hidden: int = 200, dropout: float = 0.1, rngs: nnx.Rngs):
    _check_sizes(in_features=in_features, num_classes=num_classes, hidden=hidden)
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
    self.hidden = dense(in_features, hidden, axes=(in_axis, None), rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)
    self.out = dense(hidden, num_classes, axes=(None, "vocab"), rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h = self.dropout(self.hidden(x), deterministic=not train)
    return self.out(jax.nn.relu(self.bn(h, use_running_average=not train)))


class VisionClassifier(nnx.Module):
  """Base class: subclasses build a backbone, call `_init_heads` and implement `embed`."""

  input_rank: int = 4  # NHWC images; the 1-D toy nets override this.

  def _init_heads(self, *, feature_dim: int, middle_dim: int, num_classes: int,
                  aux_head: AuxHead, middle_head: bool, rngs: nnx.Rngs,
                  feature_axis: FeatureAxis = "embed",
                  middle_axis: FeatureAxis = "embed") -> None:
    """Creates ``head``, ``aux_head`` and ``middle_head``.

    ``feature_axis`` / ``middle_axis`` name the logical axis the final / middle feature carries
    (the output axis of the dense kernel that produced it; ``"embed"`` for conv and transformer
    backbones); each head's first kernel reads that axis (``classifier_axes``,
    ``alternate_axes``).
    """
    self.feature_dim = feature_dim
    self.middle_dim = middle_dim
    self.num_classes = num_classes
    self.head = dense(feature_dim, num_classes, axes=classifier_axes(feature_axis), rngs=rngs)
    if aux_head is None:
      self.aux_head = None
    elif aux_head == "linear":
      self.aux_head = dense(feature_dim, num_classes, axes=classifier_axes(feature_axis),
                            rngs=rngs)
    elif aux_head == "mlp":
      self.aux_head = MLPHead(feature_dim, num_classes, in_axis=feature_axis, rngs=rngs)
    elif aux_head == "dhkd_mlp":
      self.aux_head = DHKDNonlinearHead(feature_dim, num_classes, in_axis=feature_axis,
                                        rngs=rngs)
    else:
      raise ValueError(f"`aux_head` must be None, 'linear', 'mlp' or 'dhkd_mlp', got "
                       f"{aux_head!r}.")
    self.middle_head = (dense(middle_dim, num_classes, axes=classifier_axes(middle_axis),
                              rngs=rngs) if middle_head else None)

  def embed(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Returns ``(middle_feature [N, middle_dim], feature [N, feature_dim])``."""
    raise NotImplementedError

  def forward(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """All outputs of the model; see the module docstring for the keys."""
    if not hasattr(x, "ndim") or x.ndim != self.input_rank:
      layout = "[N, H, W, C]" if self.input_rank == 4 else "[N, L] or [N, L, C]"
      raise ValueError(f"`x` must be a batch of inputs {layout} for {type(self).__name__}, got "
                       f"shape {getattr(x, 'shape', None)}.")
    middle, feature = self.embed(numerics.upcast(x), train=train)
    out = {"logits": self.head(feature), "feature": feature, "middle_feature": middle}
    if self.aux_head is not None:
      out["aux_logits"] = (self.aux_head(feature, train=train)
                           if isinstance(self.aux_head, DHKDNonlinearHead)
                           else self.aux_head(feature))
    if self.middle_head is not None:
      out["middle_logits"] = self.middle_head(middle)
    return out

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.forward(x, train=train)["logits"]
