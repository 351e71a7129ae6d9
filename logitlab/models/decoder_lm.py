"""Decoder-only transformer LM covering the Llama and Qwen2 families (Flax NNX).

Architecture (Touvron et al. 2023, arXiv:2302.13971; Qwen2, arXiv:2407.10671):

  h_0   = E[tokens]                                   (or caller-supplied ``inputs_embeds``)
  a_l   = h_{l-1} + W_o Attn(RoPE(W_q n), RoPE(W_k n), W_v n),   n = RMSNorm(h_{l-1})
  h_l   = a_l + W_down (silu(W_gate m) * W_up m),                m = RMSNorm(a_l)
  logits = RMSNorm(h_L) W_lm   (W_lm = E^T when embeddings are tied)

* RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w, computed in float32 (Zhang & Sennrich 2019,
  arXiv:1910.07467).
* RoPE (Su et al. 2021, arXiv:2104.09864) in the Hugging Face "rotate_half" layout: the
  first and second halves of each head are the two rotated coordinates, so HF q/k weights
  load without permutation.
* Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245): ``num_heads`` query heads
  share ``num_kv_heads`` key/value heads.
* Qwen2 adds biases to the q/k/v projections (``qkv_bias=True``) and usually ties
  embeddings.

Dtype policy: parameters and activations use ``config.param_dtype`` (float32 or bf16);
attention scores, softmax and RMSNorm are float32; logits are always float32.

Sharding: every parameter carries logical axis names (``vocab``, ``embed``, ``heads``,
``kv_heads``, ``mlp``) via ``nnx.with_partitioning``; ``LOGICAL_AXIS_RULES`` (the one table of
``logitlab.training.mesh``, re-exported here) maps them to the ``('data', 'fsdp', 'tensor')``
mesh axes (``embed -> fsdp``, the wide dimensions ``-> tensor``) and ``shard_model`` places a
model on any mesh with a subset of those axes. Consecutive kernels alternate Megatron-style:
q/k/v ``(embed, heads|kv_heads)`` then o ``(heads, embed)``; gate/up ``(embed, mlp)`` then down
``(mlp, embed)``; the embedding is ``(vocab, embed)`` and an untied head ``(embed, vocab)``.

KV cache: ``init_cache`` allocates ``[num_layers, B, max_len, num_kv_heads, head_dim]`` key
and value buffers plus a per-slot validity mask; every row writes the same slots (the
sampler left-aligns prompts), padding slots are masked out of attention, and per-row RoPE
positions count only valid tokens, so a left-padded row behaves exactly like the unpadded
sequence.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
from flax import nnx

# One source of truth for logical -> mesh axes, shared with the training core: 'embed' is
# sharded over fsdp (parameters only), the wide dimensions over tensor (Megatron-style
# column/row split).
from logitlab.training.mesh import LOGICAL_AXIS_RULES, divisible_spec

Array = jax.Array

_SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Hyper-parameters of a Llama/Qwen2-style decoder (names follow HF where they exist).

  ``head_dim`` defaults to ``hidden_size // num_heads``. ``qkv_bias`` is Qwen2's q/k/v
  projection bias. ``param_dtype`` is the parameter/activation dtype (logits stay float32).
  ``llama3_rope_scaling`` = (factor, low_freq_factor, high_freq_factor,
  original_max_position_embeddings) enables Llama 3.1+ frequency scaling (None: plain RoPE).
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  max_position_embeddings: int = 2048
  llama3_rope_scaling: tuple[float, float, float, int] | None = None
  model_type: str = "llama"
  param_dtype: Any = jnp.float32
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"`num_heads` ({self.num_heads}) must be a multiple of `num_kv_heads` "
                       f"({self.num_kv_heads}).")
    if self.head_dim % 2:
      raise ValueError(f"`head_dim` must be even for RoPE, got {self.head_dim}.")
    if self.model_type not in _SUPPORTED_MODEL_TYPES:
      raise ValueError(f"`model_type` must be one of {_SUPPORTED_MODEL_TYPES}, got "
                       f"{self.model_type!r}.")

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], *, param_dtype: Any = jnp.float32) -> "LMConfig":
    """Builds a config from a Hugging Face ``config.json`` dict (Llama or Qwen2).

    Reads both the transformers v4 layout (top-level ``rope_theta`` / ``rope_scaling``) and
    the v5 one (``rope_parameters``). Raises NotImplementedError for features this
    implementation does not model (rope scaling other than 'llama3', sliding-window
    attention, Llama attention/MLP biases), rather than loading a checkpoint that would
    silently produce different logits.
    """
    model_type = hf.get("model_type", "llama")
    if model_type not in _SUPPORTED_MODEL_TYPES:
      raise NotImplementedError(f"model_type {model_type!r} is not supported; expected one of "
                                f"{_SUPPORTED_MODEL_TYPES}.")
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    rope_theta = float(hf.get("rope_theta") or rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
      llama3 = (float(rope["factor"]), float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
    elif rope_type == "default":
      llama3 = None
    else:
      raise NotImplementedError(f"RoPE type {rope_type!r} ({rope}) is not supported.")
    if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
      raise NotImplementedError("Llama attention_bias/mlp_bias checkpoints are not supported.")
    if model_type == "qwen2" and hf.get("use_sliding_window"):
      raise NotImplementedError("Qwen2 sliding-window attention is not supported.")
    if hf.get("hidden_act", "silu") != "silu":
      raise NotImplementedError(f"hidden_act={hf['hidden_act']!r} is not supported (silu only).")
    eos = hf.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
      eos = eos[0]
    return cls(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        rope_theta=rope_theta,
        llama3_rope_scaling=llama3,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2",
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        model_type=model_type,
        param_dtype=param_dtype,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
    )

  def to_hf_dict(self) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for this config (inverse of ``from_hf_dict``)."""
    if self.model_type == "llama" and self.qkv_bias:
      raise ValueError("A llama config cannot have qkv_bias; use model_type='qwen2'.")
    if self.model_type == "qwen2" and not self.qkv_bias:
      raise ValueError("A qwen2 config must have qkv_bias=True.")
    architecture = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.model_type]
    return {
        "architectures": [architecture],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "rope_theta": self.rope_theta,
        "rope_scaling": None if self.llama3_rope_scaling is None else dict(
            zip(("factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings"), self.llama3_rope_scaling),
            rope_type="llama3"),
        "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "torch_dtype": jnp.dtype(self.param_dtype).name,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
    }


@flax.struct.dataclass
class KVCache:
  """Decoding state shared by all layers.

  Attributes:
    k, v: ``[num_layers, B, max_len, num_kv_heads, head_dim]`` cached keys/values.
    key_mask: ``[B, max_len]`` bool, True where a slot holds a real (non-padding) token.
    next_position: ``[B]`` int32, RoPE position of the row's next real token.
    index: int32 scalar, number of slots written (the same for every row).
  """
  k: Array
  v: Array
  key_mask: Array
  next_position: Array
  index: Array


@flax.struct.dataclass
class LMOutput:
  """Forward-pass result.

  Attributes:
    logits: ``[B, T, V]`` float32.
    cache: the updated ``KVCache`` (None when called without one).
    hidden_states: None, or a tuple of ``num_layers + 1`` residual streams ``[B, T, D]``
      (index 0 = input embeddings, index l = output of layer l, before the final norm), so
      ``model.unembed(hidden_states[-1]) == logits`` and earlier entries give a logit lens.
  """
  logits: Array
  cache: KVCache | None = None
  hidden_states: tuple[Array, ...] | None = None


def init_cache(config: LMConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  """Empty KV cache for ``batch`` rows and ``max_len`` slots (``dtype`` defaults to params)."""
  dtype = config.param_dtype if dtype is None else dtype
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
  return KVCache(
      k=jnp.zeros(shape, dtype),
      v=jnp.zeros(shape, dtype),
      key_mask=jnp.zeros((batch, max_len), bool),
      next_position=jnp.zeros((batch,), jnp.int32),
      index=jnp.zeros((), jnp.int32),
  )


def positions_from_mask(mask: Array, start: Array | int = 0) -> Array:
  """RoPE positions ``[B, T]`` that count only valid tokens: ``start + cumsum(mask) - 1``.

  Padding slots get the position of the previous valid token (clipped at ``start``); they
  are masked out of attention, so their value only has to be finite.
  """
  start = jnp.asarray(start, jnp.int32)
  if start.ndim == 1:
    start = start[:, None]
  return start + jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_frequencies(config: LMConfig) -> Array:
  """float32 ``[head_dim / 2]`` RoPE frequencies ``theta^(-2i/hd)``, Llama-3-scaled if set.

  Llama 3.1 scaling (wavelength ``w = 2 pi / f``, original context ``L``): frequencies with
  ``w > L / low_freq_factor`` are divided by ``factor``, those with
  ``w < L / high_freq_factor`` are kept, and in between they are interpolated with
  ``s = (L / w - low) / (high - low)``: ``f' = (1 - s) f / factor + s f``.
  """
  half = config.head_dim // 2
  inv_freq = config.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if config.llama3_rope_scaling is None:
    return inv_freq
  factor, low, high, original = config.llama3_rope_scaling
  wavelength = 2 * jnp.pi / inv_freq
  smooth = (original / wavelength - low) / (high - low)
  interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  scaled = jnp.where(wavelength > original / low, inv_freq / factor, inv_freq)
  is_medium = (wavelength >= original / high) & (wavelength <= original / low)
  return jnp.where(is_medium, interpolated, scaled)


def rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotary embedding of ``x: [B, T, N, hd]`` at integer ``positions: [B, T]`` (float32 math).

  Pairs are (i, i + hd/2) rotated by ``pos * inv_freq[i]`` (HF rotate_half layout).
  """
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class RMSNorm(nnx.Module):
  """``x / sqrt(mean(x^2) + eps) * w`` over the last axis, in float32 (arXiv:1910.07467)."""

  def __init__(self, dim: int, eps: float, *, param_dtype: Any, rngs: nnx.Rngs):
    del rngs  # deterministic init; kept for the uniform constructor signature
    self.eps = eps
    self.weight = nnx.Param(
        _partitioned(nnx.initializers.ones, ("embed",))(None, (dim,), param_dtype))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * self.weight[...].astype(jnp.float32)).astype(x.dtype)


def _partitioned(init, axes: tuple[str, ...]):
  # Annotate only: placement happens in `shard_model` (or under the caller's mesh), so a
  # model can be built without an active mesh.
  return nnx.with_partitioning(init, axes, eager_sharding=False)


def _linear(in_dim: int, out_dim: int, axes: tuple[str, str], *, bias: bool, config: LMConfig,
            rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      in_dim, out_dim, use_bias=bias, dtype=config.param_dtype, param_dtype=config.param_dtype,
      kernel_init=_partitioned(nnx.initializers.normal(0.02), axes),
      bias_init=_partitioned(nnx.initializers.zeros, (axes[1],)), rngs=rngs)


class Attention(nnx.Module):
  """Causal grouped-query self-attention with RoPE and an optional KV cache."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, hd = config.hidden_size, config.head_dim
    bias = config.qkv_bias
    self.q_proj = _linear(d, config.num_heads * hd, ("embed", "heads"), bias=bias,
                          config=config, rngs=rngs)
    self.k_proj = _linear(d, config.num_kv_heads * hd, ("embed", "kv_heads"), bias=bias,
                          config=config, rngs=rngs)
    self.v_proj = _linear(d, config.num_kv_heads * hd, ("embed", "kv_heads"), bias=bias,
                          config=config, rngs=rngs)
    self.o_proj = _linear(config.num_heads * hd, d, ("heads", "embed"), bias=False,
                          config=config, rngs=rngs)

  def __call__(self, x: Array, positions: Array, key_mask: Array, query_slots: Array,
               kv: tuple[Array, Array] | None, write_index: Array | None
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """x: [B, T, D]; key_mask: [B, S]; query_slots: [T] slot of each query (for causality).

    With ``kv`` (this layer's cache buffers ``[B, S, KV, hd]``), new keys/values are written
    at ``write_index`` and attention runs over all S slots; otherwise S = T.
    """
    cfg = self.config
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    inv_freq = rope_frequencies(cfg)
    q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
    if kv is not None:
      k_cache, v_cache = kv
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, write_index, 0, 0))
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, write_index, 0, 0))
      new_kv = (k, v)
    else:
      new_kv = None
    s = k.shape[1]
    groups = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(cfg.head_dim))
    causal = jnp.arange(s)[None, :] <= query_slots[:, None]  # [T, S]
    allowed = causal[None] & key_mask[:, None, :]  # [B, T, S]
    # A finite floor (not -inf) keeps all-padding query rows finite instead of NaN.
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, cfg.num_heads * cfg.head_dim)
    return self.o_proj(out), new_kv


class MLP(nnx.Module):
  """SwiGLU feed-forward: ``W_down (silu(W_gate x) * W_up x)`` (Shazeer 2020, arXiv:2002.05202)."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = _linear(d, f, ("embed", "mlp"), bias=False, config=config, rngs=rngs)
    self.up_proj = _linear(d, f, ("embed", "mlp"), bias=False, config=config, rngs=rngs)
    self.down_proj = _linear(f, d, ("mlp", "embed"), bias=False, config=config, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: attention and SwiGLU MLP, each with a residual connection."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    kw = dict(param_dtype=config.param_dtype, rngs=rngs)
    self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, positions, key_mask, query_slots, kv, write_index):
    attn, new_kv = self.self_attn(self.input_layernorm(x), positions, key_mask, query_slots, kv,
                                  write_index)
    x = x + attn
    return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class DecoderLM(nnx.Module):
  """Llama/Qwen2 decoder LM. See the module docstring for the math and conventions."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.hidden_size, dtype=config.param_dtype,
        param_dtype=config.param_dtype,
        embedding_init=_partitioned(nnx.initializers.normal(0.02), ("vocab", "embed")),
        rngs=rngs)
    self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                              param_dtype=config.param_dtype, rngs=rngs)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = nnx.Param(_partitioned(
          nnx.initializers.normal(0.02), ("embed", "vocab"))(
              rngs.params(), (config.hidden_size, config.vocab_size), config.param_dtype))

  def embed(self, tokens: Array) -> Array:
    """Token embeddings ``[B, T, D]`` (param dtype) for int ``tokens: [B, T]``."""
    return self.embed_tokens(tokens)

  def embedding_matrix(self) -> Array:
    """The input embedding matrix ``E: [V, D]`` (soft inputs are ``weights @ E``)."""
    return self.embed_tokens.embedding[...]

  def unembed(self, hidden: Array) -> Array:
    """float32 logits ``[..., V]`` of residual-stream states ``[..., D]`` (final norm applied)."""
    normed = self.final_norm(hidden)
    if self.lm_head is None:
      return jnp.einsum("...d,vd->...v", normed, self.embedding_matrix(),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", normed, self.lm_head[...],
                      preferred_element_type=jnp.float32)

  def __call__(self, tokens: Array | None = None, *, inputs_embeds: Array | None = None,
               positions: Array | None = None, attention_mask: Array | None = None,
               cache: KVCache | None = None, return_hidden_states: bool = False) -> LMOutput:
    """Causal forward pass.

    Args:
      tokens: int ``[B, T]``; exactly one of ``tokens`` / ``inputs_embeds [B, T, D]``.
      positions: int ``[B, T]`` RoPE positions; default counts valid tokens
        (``positions_from_mask``), continuing from ``cache.next_position``.
      attention_mask: bool ``[B, T]``, False on padding tokens (keys masked out); default
        all True.
      cache: a ``KVCache``; the T new tokens are written at slots
        ``[cache.index, cache.index + T)`` and attend to every valid earlier slot.
      return_hidden_states: also return the per-layer residual streams.

    Returns:
      ``LMOutput`` with float32 ``logits [B, T, V]``, the updated cache and optional
      hidden states.
    """
    if (tokens is None) == (inputs_embeds is None):
      raise ValueError("Pass exactly one of `tokens` [B, T] or `inputs_embeds` [B, T, D].")
    if tokens is not None:
      if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"`tokens` must be an int array [B, T], got {tokens.dtype} "
                         f"{tokens.shape}.")
      x = self.embed(tokens)
    else:
      chex.assert_rank(inputs_embeds, 3)
      if inputs_embeds.shape[-1] != self.config.hidden_size:
        raise ValueError(f"`inputs_embeds` must be [B, T, {self.config.hidden_size}], got "
                         f"{inputs_embeds.shape}.")
      x = inputs_embeds.astype(self.config.param_dtype)
    b, t, _ = x.shape
    mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if mask.shape != (b, t):
      raise ValueError(f"`attention_mask` must be [B, T] = {(b, t)}, got {mask.shape}.")
    if positions is not None and positions.shape != (b, t):
      raise ValueError(f"`positions` must be [B, T] = {(b, t)}, got {positions.shape}.")

    if cache is None:
      start_position, write_index, key_mask = 0, None, mask
      query_slots = jnp.arange(t)
    else:
      if cache.k.shape[1] != b:
        raise ValueError(f"`cache` was built for batch {cache.k.shape[1]}, got batch {b}.")
      start_position, write_index = cache.next_position, cache.index
      key_mask = jax.lax.dynamic_update_slice(cache.key_mask, mask, (0, write_index))
      query_slots = write_index + jnp.arange(t)
    if positions is None:
      positions = positions_from_mask(mask, start_position)

    hidden_states = [x]
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      x, layer_kv = layer(x, positions, key_mask, query_slots, kv, write_index)
      if layer_kv is not None:
        new_k.append(layer_kv[0])
        new_v.append(layer_kv[1])
      hidden_states.append(x)
    logits = self.unembed(x)

    new_cache = None
    if cache is not None:
      new_cache = KVCache(
          k=jnp.stack(new_k), v=jnp.stack(new_v), key_mask=key_mask,
          next_position=cache.next_position + jnp.sum(mask, axis=-1, dtype=jnp.int32),
          index=cache.index + t)
    return LMOutput(logits=logits, cache=new_cache,
                    hidden_states=tuple(hidden_states) if return_hidden_states else None)


def shard_model(model: DecoderLM, mesh: jax.sharding.Mesh,
                rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = LOGICAL_AXIS_RULES
                ) -> DecoderLM:
  """Places every parameter on ``mesh`` according to its logical axes and ``rules`` (in place).

  Mesh axes named in ``rules`` but absent from ``mesh`` are treated as replicated (so the
  default rules work on e.g. an ``('fsdp', 'tensor')`` mesh), and so is any dimension its mesh
  axes do not divide (e.g. a 50-token vocabulary on 4 devices).
  """
  def present(axis):
    names = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
    names = tuple(name for name in names if name in mesh.axis_names)
    return None if not names else names[0] if len(names) == 1 else names

  rules = tuple((name, present(axis)) for name, axis in rules)
  state = nnx.state(model)
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(state)

  def sharding(value, spec):
    return jax.sharding.NamedSharding(mesh, divisible_spec(spec, value.shape, mesh))

  nnx.update(model, jax.device_put(state, jax.tree.map(sharding, state, specs)))
  return model
