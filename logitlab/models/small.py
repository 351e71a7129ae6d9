"""Small Flax NNX classifiers for 8x8 images (scikit-learn digits scale).

The six architectures of the Ghosts-of-Softmax digits experiments (arXiv 2603.13552):
Linear, MLP, MLP+LayerNorm, CNN, CNN+BatchNorm and a tiny Transformer over image rows.
All take images ``[B, H, W]`` (or ``[B, H, W, 1]``) and return logits ``[B, num_classes]``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _as_images(x: jax.Array) -> jax.Array:
  if x.ndim == 4:
    return x[..., 0] if x.shape[-1] == 1 else x.mean(-1)
  if x.ndim != 3:
    raise ValueError(f"`x` must be images [B, H, W] or [B, H, W, 1], got shape {x.shape}.")
  return x


def _conv_same_as_matmul(conv: nnx.Conv, h: jax.Array) -> jax.Array:
  """``conv(h)`` (stride 1, SAME padding) as one patches-times-kernel matmul.

  Why: XLA's CPU convolution becomes a slow grouped convolution under ``vmap`` over
  parameters and slows down further inside ``lax.scan`` (measured ~20x per step on the
  digits CNN); the LR-spike and onset experiments vmap and scan whole trainings. On 8x8
  inputs the patch tensor is tiny, and a batched matmul is fast everywhere.
  """
  kh, kw, cin, cout = conv.kernel.shape
  height, width = h.shape[-3:-1]
  # XLA's SAME padding: (k - 1) // 2 before, k // 2 after.
  padded = jnp.pad(h, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + height, j:j + width, :]
                             for i in range(kh) for j in range(kw)], axis=-1)
  out = patches @ conv.kernel[...].reshape(kh * kw * cin, cout)
  return out + conv.bias[...] if conv.bias is not None else out


class Linear(nnx.Module):
  """Multinomial logistic regression on flattened pixels."""

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
    self.out = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, x):
    x = _as_images(x)
    return self.out(x.reshape(x.shape[0], -1))


class MLP(nnx.Module):
  """ReLU MLP with optional LayerNorm after each hidden layer."""

  def __init__(self, in_features: int, num_classes: int, *, hidden: Sequence[int] = (128,),
               layer_norm: bool = False, rngs: nnx.Rngs):
    sizes = [in_features, *hidden]
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.norms = nnx.List(
        [nnx.LayerNorm(b, rngs=rngs) for b in hidden] if layer_norm else [])
    self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x):
    x = _as_images(x)
    h = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(self.hidden):
      h = layer(h)
      if len(self.norms):
        h = self.norms[i](h)
      h = jax.nn.relu(h)
    return self.out(h)


class CNN(nnx.Module):
  """Two 3x3 conv layers (optional BatchNorm), global average pool, linear head."""

  def __init__(self, num_classes: int, *, channels: Sequence[int] = (8, 16),
               batch_norm: bool = False, rngs: nnx.Rngs):
    sizes = [1, *channels]
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs)
                           for a, b in zip(sizes[:-1], sizes[1:])])
    self.norms = nnx.List(
        [nnx.BatchNorm(b, momentum=0.9, rngs=rngs) for b in channels] if batch_norm else [])
    self.out = nnx.Linear(channels[-1], num_classes, rngs=rngs)

  def __call__(self, x):
    h = _as_images(x)[..., None]
    for i, conv in enumerate(self.convs):
      h = _conv_same_as_matmul(conv, h)
      if len(self.norms):
        h = self.norms[i](h)
      h = jax.nn.relu(h)
    return self.out(h.mean(axis=(1, 2)))


class TinyTransformer(nnx.Module):
  """Pre-LN Transformer encoder over image rows (each row is a token), mean-pooled."""

  def __init__(self, num_classes: int, *, row_features: int = 8, num_rows: int = 8,
               dim: int = 32, num_heads: int = 2, num_layers: int = 1, rngs: nnx.Rngs):
    self.embed = nnx.Linear(row_features, dim, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_rows, dim)))
    self.attn_norms = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(num_layers)])
    self.attns = nnx.List([
        nnx.MultiHeadAttention(num_heads, dim, decode=False, rngs=rngs)
        for _ in range(num_layers)])
    self.mlp_norms = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(num_layers)])
    self.mlps_in = nnx.List([nnx.Linear(dim, 2 * dim, rngs=rngs) for _ in range(num_layers)])
    self.mlps_out = nnx.List([nnx.Linear(2 * dim, dim, rngs=rngs) for _ in range(num_layers)])
    self.final_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.out = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, x):
    h = self.embed(_as_images(x)) + self.position[...]
    for i in range(len(self.attns)):
      h = h + self.attns[i](self.attn_norms[i](h))
      h = h + self.mlps_out[i](jax.nn.gelu(self.mlps_in[i](self.mlp_norms[i](h))))
    return self.out(self.final_norm(h).mean(axis=1))

  def internals(self, x) -> dict:
    """The forward with the internals of the network-wide radius (``radius_estimators``).

    Each attention layer is computed explicitly from its own projections, as
    ``nnx.MultiHeadAttention`` does: ``S = (q / sqrt(d_head)) k^T`` per head, then
    ``out(softmax_k(S) v)``; the logits equal ``__call__``'s (bit for bit on CPU).

    Returns:
      ``{"logits": [B, classes], "attention_logits": per layer S [B, heads, rows, rows],
      "attention_mask": None (every row attends to every row), "ffn_preactivations": per
      layer the GELU's input u [B, rows, 2 dim]}``. GELU has no kink: the FFN radius
      ``|u| / |du|`` measures the distance to its curvature region around ``u = 0``, as the
      reference code does for its GELU Transformer (``tfmbottlenecks/run.py`` L213-216).
    """
    h = self.embed(_as_images(x)) + self.position[...]
    attention_logits, ffn_preactivations = [], []
    for i, attn in enumerate(self.attns):
      a = self.attn_norms[i](h)
      q, k, v = attn.query(a), attn.key(a), attn.value(a)  # [B, rows, heads, d_head]
      # Scale q before the product, in q's dtype: the same rounding as nnx's attention.
      s = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(q.shape[-1]).astype(q.dtype), k)
      h = h + attn.out(jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s), v))
      u = self.mlps_in[i](self.mlp_norms[i](h))
      h = h + self.mlps_out[i](jax.nn.gelu(u))
      attention_logits.append(s)
      ffn_preactivations.append(u)
    return {"logits": self.out(self.final_norm(h).mean(axis=1)),
            "attention_logits": tuple(attention_logits), "attention_mask": None,
            "ffn_preactivations": tuple(ffn_preactivations)}


_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    "linear": lambda c, rngs: Linear(64, c, rngs=rngs),
    "mlp": lambda c, rngs: MLP(64, c, hidden=(128,), rngs=rngs),
    "mlp_deep": lambda c, rngs: MLP(64, c, hidden=(128, 128), rngs=rngs),
    "mlp_ln": lambda c, rngs: MLP(64, c, hidden=(128,), layer_norm=True, rngs=rngs),
    "cnn": lambda c, rngs: CNN(c, rngs=rngs),
    "cnn_bn": lambda c, rngs: CNN(c, batch_norm=True, rngs=rngs),
    "transformer": lambda c, rngs: TinyTransformer(c, rngs=rngs),
}

ARCHITECTURES = tuple(_BUILDERS)


def build(name: str, num_classes: int = 10, *, rngs: nnx.Rngs) -> nnx.Module:
  """Builds one of ``ARCHITECTURES`` for 8x8 inputs."""
  if name not in _BUILDERS:
    raise ValueError(f"Unknown architecture {name!r}; expected one of {ARCHITECTURES}.")
  return _BUILDERS[name](num_classes, rngs)
