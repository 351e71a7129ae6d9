"""Decoder-only transformer LMs: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (Flax NNX).

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

Family differences (``LMConfig.model_type``):

* ``qwen2``: biases on the q/k/v projections; usually tied embeddings.
* ``qwen3`` (arXiv:2505.09388): no biases; RMSNorm over ``head_dim`` on each query and key
  head before RoPE (``q_norm``, ``k_norm``).
* ``mistral`` (arXiv:2310.06825): Llama with sliding-window attention: a query at slot i
  sees slots ``(i - W, i]``.
* ``gemma2`` (arXiv:2408.00118): tied embeddings scaled by ``sqrt(D)`` (rounded to the
  parameter dtype); norms ``x_hat * (1 + w)``; sandwich norms (the attention and MLP outputs
  are normalized before the residual add, and the MLP input gets its own pre-norm);
  GeGLU with the tanh GELU; scores scaled by ``query_pre_attn_scalar^(-1/2)``; attention
  and final-logit soft-capping ``c tanh(x / c)`` (``numerics.soft_cap``); layers alternate
  sliding-window (even) and global (odd) attention.
* ``gemma3_text`` (arXiv:2503.19786): Gemma 2 without soft-capping, plus q/k norms; five
  local layers per global one, local layers with their own RoPE base (``local_rope_theta``),
  global ones with optional linear RoPE scaling.

Dtype policy: parameters and activations use ``config.param_dtype`` (float32 or bf16);
attention scores, softmax and RMSNorm are float32; logits are always float32.

Sharding: every parameter carries logical axis names (``vocab``, ``embed``, ``heads``,
``kv_heads``, ``mlp``) via ``nnx.with_partitioning``; ``LOGICAL_AXIS_RULES`` (the one table of
``logitlab.training.mesh``, re-exported here) maps them to the ``('data', 'fsdp', 'tensor')``
mesh axes (``embed -> fsdp``, the wide dimensions ``-> tensor``) and ``shard_model`` places a
model on any mesh with a subset of those axes. Consecutive kernels alternate Megatron-style:
q/k/v ``(embed, heads|kv_heads)`` then o ``(heads, embed)``; gate/up ``(embed, mlp)`` then down
``(mlp, embed)``; the embedding is ``(vocab, embed)`` and an untied head ``(embed, vocab)``.

KV cache: ``init_cache`` allocates per-layer ``[B, num_kv_heads, max_len, head_dim]`` key and
value buffers (the layout the attention einsum reads, so a decode step updates them in place
with one ``dynamic_update_slice`` and no transpose or stack) plus a per-slot validity mask;
every row writes the same slots (the sampler left-aligns prompts), padding slots are masked
out of attention, and per-row RoPE positions count only valid tokens, so a left-padded row
behaves exactly like the unpadded sequence. The cache is full length for every layer (no
ring buffer for sliding-window layers); windows count cache slots, as in transformers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
from flax import nnx

# One source of truth for logical -> mesh axes, shared with the training core: 'embed' is
# sharded over fsdp (parameters only), the wide dimensions over tensor (Megatron-style
# column/row split).
from logitlab import numerics
from logitlab.training.mesh import LOGICAL_AXIS_RULES, divisible_spec

Array = jax.Array

_SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
_GEMMA = ("gemma2", "gemma3_text")
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Hyper-parameters of a decoder of one of the supported families (names follow HF).

  ``head_dim`` defaults to ``hidden_size // num_heads``. ``qkv_bias`` is Qwen2's q/k/v
  projection bias. ``param_dtype`` is the parameter/activation dtype (logits stay float32).
  ``llama3_rope_scaling`` = (factor, low_freq_factor, high_freq_factor,
  original_max_position_embeddings) enables Llama 3.1+ frequency scaling; ``linear_rope_factor``
  divides the frequencies (HF ``rope_type: linear``, Gemma 3's global layers).

  Family features follow from ``model_type`` (see the module docstring): q/k RMSNorm (qwen3,
  gemma3_text), Gemma's ``(1 + w)`` norms, sandwich norms, ``sqrt(D)`` embedding scale and
  tanh-GELU (gemma2, gemma3_text). Per-layer attention: ``layer_types[i]`` is
  ``"full_attention"`` or ``"sliding_attention"`` (a query attends to the ``sliding_window``
  most recent slots, itself included); None means all sliding when ``sliding_window`` is set
  (Mistral), else all full. ``local_rope_theta`` is the RoPE base of sliding layers (Gemma 3;
  None: the same RoPE as full layers). ``query_pre_attn_scalar``: scores are scaled by its
  ``-1/2`` power (default ``head_dim``). ``attn_logit_softcapping`` /
  ``final_logit_softcapping``: ``c tanh(x / c)`` on attention scores / output logits (Gemma 2).
  ``eos_token_id`` is an int or a tuple of every end-of-sequence id.
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
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None
  query_pre_attn_scalar: float | None = None
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  local_rope_theta: float | None = None
  linear_rope_factor: float | None = None

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
    if self.qkv_bias != (self.model_type == "qwen2"):
      raise ValueError(f"`qkv_bias` must be {self.model_type == 'qwen2'} for model_type "
                       f"{self.model_type!r} (only Qwen2 has q/k/v biases), got {self.qkv_bias}.")
    if isinstance(self.eos_token_id, (list, tuple)):  # hashable, plain ints
      object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
    layer_types = self.layer_types
    if layer_types is None:
      layer_types = (SLIDING if self.sliding_window else FULL,) * self.num_layers
    layer_types = tuple(layer_types)
    object.__setattr__(self, "layer_types", layer_types)
    if len(layer_types) != self.num_layers or not set(layer_types) <= {FULL, SLIDING}:
      raise ValueError(f"`layer_types` must hold {self.num_layers} entries of {FULL!r} / "
                       f"{SLIDING!r}, got {layer_types}.")
    if SLIDING in layer_types and (not isinstance(self.sliding_window, int)
                                   or self.sliding_window < 1):
      raise ValueError(f"`sliding_window` must be a positive int when a layer is "
                       f"{SLIDING!r}, got {self.sliding_window!r}.")
    for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                 "local_rope_theta", "linear_rope_factor"):
      value = getattr(self, name)
      if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be None or a finite number > 0, got {value!r}.")

  @property
  def qk_norm(self) -> bool:
    """RMSNorm over ``head_dim`` on queries and keys before RoPE (Qwen3, Gemma 3)."""
    return self.model_type in ("qwen3", "gemma3_text")

  @property
  def gemma_style(self) -> bool:
    """Gemma 2/3: ``(1 + w)`` norms, sandwich norms, ``sqrt(D)`` embedding scale, tanh-GELU."""
    return self.model_type in _GEMMA

  @property
  def attention_scale(self) -> float:
    return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """Every end-of-sequence id (``eos_token_id`` as a tuple; empty when unset)."""
    eos = self.eos_token_id
    return () if eos is None else (int(eos),) if isinstance(eos, int) else tuple(eos)

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], *, param_dtype: Any = jnp.float32) -> "LMConfig":
    """Builds a config from a Hugging Face ``config.json`` dict.

    Families: ``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma2``, ``gemma3_text``. Reads
    both the transformers v4 layout (top-level ``rope_theta`` / ``rope_scaling``,
    ``rope_local_base_freq``) and the v5 one (``rope_parameters``, flat or per layer type).
    Raises NotImplementedError for anything else this implementation does not model (other
    families, RoPE types other than default/linear/llama3, attention/MLP biases outside
    Qwen2, other activations), rather than loading a checkpoint that would silently produce
    different logits.
    """
    model_type = hf.get("model_type", "llama")
    if model_type not in _SUPPORTED_MODEL_TYPES:
      raise NotImplementedError(f"model_type {model_type!r} is not supported; expected one of "
                                f"{_SUPPORTED_MODEL_TYPES}.")
    gemma = model_type in _GEMMA
    num_layers = hf["num_hidden_layers"]
    params = hf.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:  # per layer type (Gemma 3, transformers v5)
      full, local = params.get(FULL) or {}, params.get(SLIDING) or {}
    else:
      full, local = {**(hf.get("rope_scaling") or {}), **params}, {}
    theta, llama3, linear = _parse_rope(full, hf.get("rope_theta"))
    local_theta = None
    if local or hf.get("rope_local_base_freq"):
      local_theta, local_llama3, local_linear = _parse_rope(local, hf.get("rope_local_base_freq"))
      if local_llama3 or local_linear:
        raise NotImplementedError(f"RoPE scaling on sliding layers ({local}) is not supported.")

    activation = hf.get("hidden_activation") or hf.get("hidden_act") or (
        "gelu_pytorch_tanh" if gemma else "silu")
    if activation != ("gelu_pytorch_tanh" if gemma else "silu"):
      raise NotImplementedError(f"hidden_act={activation!r} is not supported for {model_type}.")
    if model_type != "qwen2" and (hf.get("attention_bias") or hf.get("mlp_bias")):
      raise NotImplementedError(f"{model_type} attention_bias/mlp_bias checkpoints are not "
                                f"supported.")

    sliding_window, layer_types = None, None
    if model_type == "mistral":
      sliding_window = hf.get("sliding_window")
    elif model_type in ("qwen2", "qwen3"):
      if hf.get("use_sliding_window"):
        sliding_window = hf["sliding_window"]
        first = hf.get("max_window_layers", num_layers)
        layer_types = hf.get("layer_types") or [SLIDING if i >= first else FULL
                                                for i in range(num_layers)]
    elif gemma:
      sliding_window = hf.get("sliding_window")
      period = 2 if model_type == "gemma2" else hf.get("sliding_window_pattern", 6)
      layer_types = hf.get("layer_types") or [FULL if (i + 1) % period == 0 else SLIDING
                                              for i in range(num_layers)]
      if sliding_window is None:
        layer_types = [FULL] * num_layers
    eos = hf.get("eos_token_id")
    return cls(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=num_layers,
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        rope_theta=theta,
        llama3_rope_scaling=llama3,
        linear_rope_factor=linear,
        local_rope_theta=local_theta,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        qkv_bias=model_type == "qwen2",
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        model_type=model_type,
        param_dtype=param_dtype,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else eos,
        pad_token_id=hf.get("pad_token_id"),
        sliding_window=sliding_window,
        layer_types=None if layer_types is None else tuple(layer_types),
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if gemma else None,
        attn_logit_softcapping=hf.get("attn_logit_softcapping") if gemma else None,
        final_logit_softcapping=hf.get("final_logit_softcapping") if gemma else None,
    )

  def to_hf_dict(self) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for this config (inverse of ``from_hf_dict``)."""
    rope_scaling = None
    if self.llama3_rope_scaling is not None:
      rope_scaling = dict(zip(("factor", "low_freq_factor", "high_freq_factor",
                               "original_max_position_embeddings"), self.llama3_rope_scaling),
                          rope_type="llama3")
    elif self.linear_rope_factor is not None:
      rope_scaling = {"rope_type": "linear", "factor": self.linear_rope_factor}
    eos = self.eos_token_id
    hf = {
        "architectures": [_ARCHITECTURES[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "rope_theta": self.rope_theta,
        "rope_scaling": rope_scaling,
        "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "hidden_act": "gelu_pytorch_tanh" if self.gemma_style else "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": jnp.dtype(self.param_dtype).name,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "pad_token_id": self.pad_token_id,
        "sliding_window": self.sliding_window,
        "layer_types": list(self.layer_types),
    }
    if self.model_type == "llama":
      hf["mlp_bias"] = False
    if self.model_type in ("qwen2", "qwen3"):
      hf["use_sliding_window"] = SLIDING in self.layer_types
      hf["max_window_layers"] = (self.layer_types + (SLIDING,)).index(SLIDING)
      hf["attention_bias"] = self.qkv_bias
    if self.gemma_style:
      hf.update(hidden_activation="gelu_pytorch_tanh",
                query_pre_attn_scalar=self.query_pre_attn_scalar or self.head_dim,
                attn_logit_softcapping=self.attn_logit_softcapping,
                final_logit_softcapping=self.final_logit_softcapping)
    if self.model_type == "gemma3_text":
      full = {"rope_type": "default", "rope_theta": self.rope_theta, **(rope_scaling or {})}
      local = {"rope_type": "default",
               "rope_theta": self.local_rope_theta or self.rope_theta}
      hf.update(rope_parameters={FULL: full, SLIDING: local}, rope_scaling=None)
      hf.pop("rope_theta")
    elif self.local_rope_theta is not None:
      raise ValueError(f"`local_rope_theta` is a Gemma 3 setting; {self.model_type} has one "
                       f"RoPE for every layer.")
    return hf


def _parse_rope(params: dict[str, Any], theta: float | None
                ) -> tuple[float, tuple[float, float, float, int] | None, float | None]:
  """(theta, llama3 scaling, linear factor) of one HF RoPE parameter dict."""
  theta = float(theta or params.get("rope_theta") or 10000.0)
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type == "llama3":
    return theta, (float(params["factor"]), float(params["low_freq_factor"]),
                   float(params["high_freq_factor"]),
                   int(params["original_max_position_embeddings"])), None
  if rope_type == "linear":
    return theta, None, float(params["factor"])
  if rope_type == "default":
    return theta, None, None
  raise NotImplementedError(f"RoPE type {rope_type!r} ({params}) is not supported.")


@flax.struct.dataclass
class KVCache:
  """Decoding state shared by all layers.

  Attributes:
    k, v: tuples of ``num_layers`` per-layer buffers ``[B, num_kv_heads, max_len, head_dim]``
      (the layout attention contracts over, so a step writes T new slots in place and reads
      the buffer without a transpose or a copy).
    key_mask: ``[B, max_len]`` bool, True where a slot holds a real (non-padding) token.
    next_position: ``[B]`` int32, RoPE position of the row's next real token.
    index: int32 scalar, number of slots written (the same for every row).
  """
  k: tuple[Array, ...]
  v: tuple[Array, ...]
  key_mask: Array
  next_position: Array
  index: Array

  @property
  def max_len(self) -> int:
    return self.key_mask.shape[1]


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
  """Empty KV cache for ``batch`` rows and ``max_len`` slots (``dtype`` defaults to params).

  Feeding more than ``max_len`` tokens in total raises (eager) or gives NaN logits (jit).
  """
  for name, value in (("batch", batch), ("max_len", max_len)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  dtype = config.param_dtype if dtype is None else dtype
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)
  return KVCache(
      k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
      v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
      key_mask=jnp.zeros((batch, max_len), bool),
      next_position=jnp.zeros((batch,), jnp.int32),
      index=jnp.zeros((), jnp.int32),
  )


def positions_from_mask(mask: Array, start: Array | int = 0) -> Array:
  """RoPE positions ``[B, T]`` that count only valid tokens: ``start + cumsum(mask) - 1``.

  Padding slots get the position of the previous valid token (clipped at ``start``); they
  are masked out of attention, so their value only has to be finite.
  """
  if jnp.ndim(mask) != 2:
    raise ValueError(f"`mask` must be a bool array [B, T], got shape {jnp.shape(mask)}.")
  if jnp.ndim(start) not in (0, 1) or jnp.ndim(start) == 1 and jnp.shape(start) != \
      jnp.shape(mask)[:1]:
    raise ValueError(f"`start` must be an int or an int array [B] = ({jnp.shape(mask)[0]},), "
                     f"got shape {jnp.shape(start)}.")
  start = jnp.asarray(start, jnp.int32)
  if start.ndim == 1:
    start = start[:, None]
  return start + jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_frequencies(config: LMConfig, sliding: bool = False) -> Array:
  """float32 ``[head_dim / 2]`` RoPE frequencies ``theta^(-2i/hd)``, scaled if configured.

  Llama 3.1 scaling (wavelength ``w = 2 pi / f``, original context ``L``): frequencies with
  ``w > L / low_freq_factor`` are divided by ``factor``, those with
  ``w < L / high_freq_factor`` are kept, and in between they are interpolated with
  ``s = (L / w - low) / (high - low)``: ``f' = (1 - s) f / factor + s f``. Linear scaling
  divides every frequency by ``linear_rope_factor``. ``sliding=True`` gives the frequencies
  of sliding-window layers: plain RoPE with ``local_rope_theta`` when that is set (Gemma 3).
  """
  if not isinstance(config, LMConfig):
    raise TypeError(f"`config` must be an LMConfig, got {type(config).__name__}.")
  half = config.head_dim // 2
  exponent = -jnp.arange(half, dtype=jnp.float32) / half
  if sliding and config.local_rope_theta is not None:
    return jnp.float32(config.local_rope_theta) ** exponent
  inv_freq = jnp.float32(config.rope_theta) ** exponent
  if config.linear_rope_factor is not None:
    return inv_freq / config.linear_rope_factor
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
  if jnp.ndim(x) != 4 or jnp.shape(x)[-1] % 2:
    raise ValueError(f"`x` must have shape [B, T, N, hd] with an even hd, got {jnp.shape(x)}.")
  if jnp.shape(positions) != jnp.shape(x)[:2]:
    raise ValueError(f"`positions` must have shape [B, T] = {jnp.shape(x)[:2]}, got "
                     f"{jnp.shape(positions)}.")
  if jnp.shape(inv_freq) != (jnp.shape(x)[-1] // 2,):
    raise ValueError(f"`inv_freq` must have shape [hd / 2] = ({jnp.shape(x)[-1] // 2},), got "
                     f"{jnp.shape(inv_freq)}.")
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class RMSNorm(nnx.Module):
  """``x / sqrt(mean(x^2) + eps) * (offset + w)`` over the last axis, in float32.

  Zhang & Sennrich 2019 (arXiv:1910.07467); ``offset`` is 1 for Gemma (weights stored as
  ``w - 1``, initialized to 0) and 0 otherwise.
  """

  def __init__(self, dim: int, eps: float, *, param_dtype: Any, rngs: nnx.Rngs,
               offset: float = 0.0, axis_name: str | None = "embed"):
    del rngs  # deterministic init; kept for the uniform constructor signature
    self.eps = eps
    self.offset = offset
    init = nnx.initializers.zeros if offset else nnx.initializers.ones
    self.weight = nnx.Param(_partitioned(init, (axis_name,))(None, (dim,), param_dtype))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (self.offset + self.weight[...].astype(jnp.float32))).astype(x.dtype)


def _norm(config: LMConfig, dim: int, rngs: nnx.Rngs, axis_name: str | None = "embed"
          ) -> RMSNorm:
  return RMSNorm(dim, config.rms_norm_eps, param_dtype=config.param_dtype, rngs=rngs,
                 offset=1.0 if config.gemma_style else 0.0, axis_name=axis_name)


def _partitioned(init, axes: tuple[str | None, ...]):
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
  """Causal grouped-query self-attention with RoPE, an optional KV cache and sliding window."""

  def __init__(self, config: LMConfig, layer_index: int, *, rngs: nnx.Rngs):
    self.config = config
    self.sliding = config.layer_types[layer_index] == SLIDING
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
    if config.qk_norm:
      self.q_norm = _norm(config, hd, rngs, axis_name=None)
      self.k_norm = _norm(config, hd, rngs, axis_name=None)

  def __call__(self, x: Array, positions: Array, key_mask: Array, query_slots: Array,
               kv: tuple[Array, Array] | None, write_index: Array | None
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """x: [B, T, D]; key_mask: [B, S]; query_slots: [T] slot of each query (for causality).

    With ``kv`` (this layer's cache buffers ``[B, KV, S, hd]``), new keys/values are written
    at ``write_index`` and attention runs over all S slots; otherwise S = T.
    """
    cfg = self.config
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = rope_frequencies(cfg, sliding=self.sliding)
    q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, T, hd]: the cache layout
    if kv is not None:
      k_cache, v_cache = kv
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, write_index, 0))
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, write_index, 0))
      new_kv = (k, v)
    else:
      new_kv = None
    s = k.shape[2]
    groups = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(cfg.attention_scale)
    if cfg.attn_logit_softcapping is not None:
      scores = numerics.soft_cap(scores, cfg.attn_logit_softcapping)
    slot_distance = query_slots[:, None] - jnp.arange(s)[None, :]  # [T, S]
    allowed = slot_distance >= 0
    if self.sliding:  # HF: kv_idx > q_idx - sliding_window, counted in cache slots
      allowed &= slot_distance < cfg.sliding_window
    allowed = allowed[None] & key_mask[:, None, :]  # [B, T, S]
    # A finite floor (not -inf) keeps all-padding query rows finite instead of NaN.
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(b, t, cfg.num_heads * cfg.head_dim)
    return self.o_proj(out), new_kv


class MLP(nnx.Module):
  """Gated feed-forward ``W_down (act(W_gate x) * W_up x)`` (Shazeer 2020, arXiv:2002.05202):
  SwiGLU (SiLU), or GeGLU with the tanh GELU for Gemma."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gemma_style = config.gemma_style
    self.gate_proj = _linear(d, f, ("embed", "mlp"), bias=False, config=config, rngs=rngs)
    self.up_proj = _linear(d, f, ("embed", "mlp"), bias=False, config=config, rngs=rngs)
    self.down_proj = _linear(f, d, ("mlp", "embed"), bias=False, config=config, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    gate = self.gate_proj(x)
    gate = jax.nn.gelu(gate, approximate=True) if self.gemma_style else jax.nn.silu(gate)
    return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: attention and gated MLP, each with a residual connection.

  Gemma 2/3 also normalize each branch's output before adding it (sandwich norms):
  ``h + N_post(Attn(N_in h))``, then ``a + N_post_ff(MLP(N_pre_ff a))``.
  """

  def __init__(self, config: LMConfig, layer_index: int, *, rngs: nnx.Rngs):
    d = config.hidden_size
    self.input_layernorm = _norm(config, d, rngs)
    self.self_attn = Attention(config, layer_index, rngs=rngs)
    self.post_attention_layernorm = _norm(config, d, rngs)
    self.mlp = MLP(config, rngs=rngs)
    self.sandwich = config.gemma_style
    if self.sandwich:
      self.pre_feedforward_layernorm = _norm(config, d, rngs)
      self.post_feedforward_layernorm = _norm(config, d, rngs)

  def __call__(self, x, positions, key_mask, query_slots, kv, write_index):
    attn, new_kv = self.self_attn(self.input_layernorm(x), positions, key_mask, query_slots, kv,
                                  write_index)
    if self.sandwich:
      x = x + self.post_attention_layernorm(attn)
      return x + self.post_feedforward_layernorm(
          self.mlp(self.pre_feedforward_layernorm(x))), new_kv
    x = x + attn
    return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class DecoderLM(nnx.Module):
  """Decoder LM of the supported families. See the module docstring for math and conventions."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.hidden_size, dtype=config.param_dtype,
        param_dtype=config.param_dtype,
        embedding_init=_partitioned(nnx.initializers.normal(0.02), ("vocab", "embed")),
        rngs=rngs)
    self.layers = nnx.List([DecoderLayer(config, i, rngs=rngs)
                            for i in range(config.num_layers)])
    self.final_norm = _norm(config, config.hidden_size, rngs)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = nnx.Param(_partitioned(
          nnx.initializers.normal(0.02), ("embed", "vocab"))(
              rngs.params(), (config.hidden_size, config.vocab_size), config.param_dtype))

  def _embedding_scale(self) -> Array | None:
    # Gemma multiplies by sqrt(D) rounded to the parameter dtype, as HF does.
    if not self.config.gemma_style:
      return None
    return jnp.asarray(self.config.hidden_size ** 0.5, self.config.param_dtype)

  def embed(self, tokens: Array) -> Array:
    """Input embeddings ``[B, T, D]`` (param dtype) for int ``tokens: [B, T]``."""
    x = self.embed_tokens(tokens)
    scale = self._embedding_scale()
    return x if scale is None else x * scale

  def embedding_matrix(self) -> Array:
    """The input embedding matrix ``E: [V, D]`` (soft inputs are ``weights @ E``).

    Includes Gemma's ``sqrt(D)`` scale, so ``E[i] == embed(i)`` for every family.
    """
    table = self.embed_tokens.embedding[...]
    scale = self._embedding_scale()
    return table if scale is None else table * scale

  def unembed(self, hidden: Array) -> Array:
    """float32 logits ``[..., V]`` of residual-stream states ``[..., D]`` (final norm applied,
    then Gemma 2's final soft-cap when configured)."""
    normed = self.final_norm(hidden)
    if self.lm_head is None:
      logits = jnp.einsum("...d,vd->...v", normed, self.embed_tokens.embedding[...],
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum("...d,dv->...v", normed, self.lm_head[...],
                          preferred_element_type=jnp.float32)
    if self.config.final_logit_softcapping is not None:
      logits = numerics.soft_cap(logits, self.config.final_logit_softcapping)
    return logits

  def __call__(self, tokens: Array | None = None, *, inputs_embeds: Array | None = None,
               positions: Array | None = None, attention_mask: Array | None = None,
               cache: KVCache | None = None, return_hidden_states: bool = False,
               last_logits_only: bool = False) -> LMOutput:
    """Causal forward pass.

    Args:
      tokens: int ``[B, T]`` ids in ``[0, vocab_size)`` (padding positions may hold any id);
        exactly one of ``tokens`` / ``inputs_embeds [B, T, D]``.
      positions: int ``[B, T]`` RoPE positions; default counts valid tokens
        (``positions_from_mask``), continuing from ``cache.next_position``.
      attention_mask: bool ``[B, T]``, False on padding tokens (keys masked out); default
        all True.
      cache: a ``KVCache``; the T new tokens are written at slots
        ``[cache.index, cache.index + T)`` and attend to every valid earlier slot.
      return_hidden_states: also return the per-layer residual streams.
      last_logits_only: unembed only the last position (logits ``[B, 1, V]``): a prefill
        that only needs the next-token distribution skips the ``[B, T, V]`` head matmul.

    Returns:
      ``LMOutput`` with float32 ``logits [B, T, V]``, the updated cache and optional
      hidden states.

    Raises (eager) / NaN logits (under jit, for the affected rows): a real token id outside
    ``[0, vocab_size)``; more tokens than the cache has slots left.
    """
    cfg = self.config
    if (tokens is None) == (inputs_embeds is None):
      raise ValueError("Pass exactly one of `tokens` [B, T] or `inputs_embeds` [B, T, D].")
    if tokens is not None:
      if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"`tokens` must be an int array [B, T], got {tokens.dtype} "
                         f"{tokens.shape}.")
      b, t = tokens.shape
    else:
      chex.assert_rank(inputs_embeds, 3)
      if inputs_embeds.shape[-1] != cfg.hidden_size:
        raise ValueError(f"`inputs_embeds` must be [B, T, {cfg.hidden_size}], got "
                         f"{inputs_embeds.shape}.")
      b, t, _ = inputs_embeds.shape
    mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if mask.shape != (b, t):
      raise ValueError(f"`attention_mask` must be [B, T] = {(b, t)}, got {mask.shape}.")
    if positions is not None and positions.shape != (b, t):
      raise ValueError(f"`positions` must be [B, T] = {(b, t)}, got {positions.shape}.")
    row_ok = jnp.ones((b,), bool)
    if tokens is not None:
      in_vocab = (tokens >= 0) & (tokens < cfg.vocab_size)
      row_ok = numerics.check_values("tokens", jnp.all(in_vocab | ~mask, axis=-1),
                                     f"ids in [0, {cfg.vocab_size}) at unmasked positions")
      x = self.embed(jnp.where(in_vocab, tokens, 0))
    else:
      x = inputs_embeds.astype(cfg.param_dtype)

    if cache is None:
      start_position, write_index, key_mask = 0, None, mask
      query_slots = jnp.arange(t)
    else:
      if cache.key_mask.shape[0] != b or len(cache.k) != cfg.num_layers:
        raise ValueError(f"`cache` was built for batch {cache.key_mask.shape[0]} and "
                         f"{len(cache.k)} layers, got batch {b} and {cfg.num_layers} layers.")
      row_ok &= numerics.check_values(
          "cache", cache.index + t <= cache.max_len,
          f"a KVCache with room for {t} more tokens (init_cache max_len={cache.max_len})",
          f"index {cache.index}")
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
    logits = numerics.nan_unless(self.unembed(x[:, -1:] if last_logits_only else x),
                                 row_ok[:, None, None])

    new_cache = None
    if cache is not None:
      new_cache = KVCache(
          k=tuple(new_k), v=tuple(new_v), key_mask=key_mask,
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
  if not isinstance(model, nnx.Module):
    raise TypeError(f"`model` must be an nnx.Module (a DecoderLM), got {type(model).__name__}.")
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
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
