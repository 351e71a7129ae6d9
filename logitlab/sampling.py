"""Logit filtering, token sampling and a jit-compiled KV-cache decode loop.

Filtering (all in float32 on ``logits / temperature``; removed entries become ``-inf``):

* top-k: keep the k largest logits (Fan et al. 2018, arXiv:1805.04833); ties with the k-th
  value are all kept.
* top-p / nucleus: keep the smallest set of most-probable tokens whose probability mass is
  >= p (Holtzman et al. 2019, arXiv:1904.09751); the top-1 token is always kept.
* min-p: keep tokens with ``p_i >= min_p * max_j p_j`` (Nguyen et al. 2024,
  arXiv:2407.01082).

They are applied in that order (top-k, then top-p on the renormalized survivors, then
min-p), the order Hugging Face applies its processors in and the one Soft Thinking uses.

``generate`` runs prefill + a ``lax.while_loop`` decode over a ``KVCache``. Prompts may be
padded on either side (or both): they are left-aligned internally, so every row writes the
same cache slot at each step while padding slots are masked out of attention and RoPE
positions count only real tokens. The per-step choice is a pluggable ``policy``; the
default ``SamplingPolicy`` samples with temperature/top-k/top-p/min-p (temperature 0 is
greedy), and soft-thinking policies may return an input embedding instead of a token.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from logitlab import numerics
from logitlab.models import decoder_lm
from logitlab.training import mesh as mesh_lib

Array = jax.Array
# (logits [B, V], policy_state, key) -> (token_ids [B], inputs_embeds [B, D] | None,
#                                        policy_state, extras pytree of [B, ...] arrays)
Policy = Callable[[Array, Any, Array], tuple[Array, Array | None, Any, Any]]


def _check_temperature(temperature):
  if not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
    raise ValueError(f"`temperature` must be a finite number >= 0 (0 = greedy), got "
                     f"{temperature!r}.")


def _check_penalty(penalty, name="repetition_penalty"):
  if not isinstance(penalty, (int, float)) or not 0 < penalty < math.inf:
    raise ValueError(f"`{name}` must be a finite number > 0 (1 = off), got {penalty!r}.")


def _check_filter_args(top_k, top_p, min_p):
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f"`top_k` must be None or a positive int, got {top_k!r}.")
  if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
    raise ValueError(f"`top_p` must be None or in (0, 1], got {top_p!r}.")
  if min_p is not None and not (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0):
    raise ValueError(f"`min_p` must be None or in [0, 1], got {min_p!r}.")


def filter_logits(logits: Array, *, top_k: int | None = None, top_p: float | None = None,
                  min_p: float | None = None) -> Array:
  """float32 ``logits [..., V]`` with entries outside top-k -> top-p -> min-p set to -inf.

  Apply the temperature first (``logits / T``): top-p and min-p act on ``softmax(logits)``.
  ``None`` disables a filter; with all three ``None`` this is ``upcast(logits)``.
  """
  numerics.check_logits("logits", logits)
  _check_filter_args(top_k, top_p, min_p)
  logits = numerics.upcast(logits)
  neg_inf = jnp.float32(-jnp.inf)
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, neg_inf)
  if top_p is not None and top_p < 1.0:
    probs = jnp.exp(numerics.log_softmax(logits))
    sorted_probs = -jnp.sort(-probs, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # The smallest kept probability: the last sorted entry whose preceding mass is < top_p.
    threshold = jnp.min(jnp.where(mass_before < top_p, sorted_probs, jnp.inf), axis=-1,
                        keepdims=True)
    logits = jnp.where(probs >= threshold, logits, neg_inf)
  if min_p is not None and min_p > 0.0:
    log_probs = numerics.log_softmax(logits)
    cutoff = jnp.max(log_probs, axis=-1, keepdims=True) + jnp.log(jnp.float32(min_p))
    logits = jnp.where(log_probs >= cutoff, logits, neg_inf)
  return logits


def sample_token(logits: Array, key: Array, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None) -> Array:
  """Samples int32 ids ``[...]`` from ``softmax(filter_logits(logits / T))``; T = 0 is argmax.

  A row with a NaN logit (e.g. poisoned by the jit-value policy upstream) has no
  distribution: its id is ``-1``, never a valid-looking token.
  """
  numerics.check_logits("logits", logits)
  _check_temperature(temperature)
  logits = numerics.upcast(logits)
  if temperature == 0:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    tokens = jax.random.categorical(key, filtered, axis=-1)
  return jnp.where(jnp.any(jnp.isnan(logits), axis=-1), -1, tokens).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SamplingPolicy:
  """The default ``generate`` policy: ``sample_token`` with these settings.

  Hashable (a jit static argument), so equal settings reuse one compiled decode loop.
  Extras: ``log_prob`` [B], the chosen token's log-probability under the unfiltered
  temperature-1 model distribution ``log_softmax(logits)``.
  """
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  min_p: float | None = None

  def __post_init__(self):
    _check_temperature(self.temperature)
    _check_filter_args(self.top_k, self.top_p, self.min_p)

  def __call__(self, logits: Array, policy_state: Any, key: Array):
    tokens = sample_token(logits, key, temperature=self.temperature, top_k=self.top_k,
                          top_p=self.top_p, min_p=self.min_p)
    log_probs = numerics.log_softmax(logits)
    chosen = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    return tokens, None, policy_state, {"log_prob": chosen}


GREEDY = SamplingPolicy(temperature=0.0)


def apply_repetition_penalty(logits: Array, seen: Array, penalty: float) -> Array:
  """CTRL's repetition penalty (Keskar et al. 2019, arXiv:1909.05858), as transformers does it.

  For every token already in the sequence (``seen [B, V]`` True): a positive logit is
  divided by ``penalty``, a negative one multiplied by it; other logits are unchanged.
  ``penalty > 1`` discourages repeats, ``1`` is the identity. Returns float32 ``[B, V]``.
  """
  numerics.check_logits("logits", logits)
  if jnp.shape(seen) != jnp.shape(logits):
    raise ValueError(f"`seen` must be a bool array of the logits' shape {logits.shape}, got "
                     f"{jnp.shape(seen)}.")
  _check_penalty(penalty, "penalty")
  logits = numerics.upcast(logits)
  penalized = jnp.where(logits > 0, logits / penalty, logits * penalty)
  return jnp.where(seen, penalized, logits)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Decoding defaults of a checkpoint (Hugging Face ``generation_config.json``).

  Follows transformers' semantics: ``do_sample=False`` (the default) is greedy decoding; when
  sampling, unset fields take transformers' defaults (temperature 1, top-k 50, top-p 1),
  ``top_k=0`` and ``top_p=1`` disable those filters, and ``temperature=0`` is greedy (as in
  vLLM; transformers rejects it). ``eos_token_ids`` holds *every* end-of-sequence id (a list in
  ``generation_config.json`` is common, e.g. Llama 3 Instruct's ``[128001, 128008, 128009]``).
  """
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int | None = 50
  top_p: float | None = 1.0
  min_p: float | None = None
  repetition_penalty: float = 1.0
  max_new_tokens: int | None = None

  def __post_init__(self):
    _check_temperature(self.temperature)
    _check_penalty(self.repetition_penalty)
    object.__setattr__(self, "eos_token_ids", tuple(
        int(i) if isinstance(i, (int, np.integer)) else i for i in self.eos_token_ids))
    if any(not isinstance(i, int) or i < 0 for i in self.eos_token_ids):
      raise ValueError(f"`eos_token_ids` must be non-negative ints, got {self.eos_token_ids}.")

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], fallback: dict[str, Any] | None = None
                   ) -> "GenerationConfig":
    """Reads a ``generation_config.json`` dict; token ids missing there come from
    ``fallback`` (the ``config.json`` dict), as transformers does."""
    merged = {k: v for k, v in (fallback or {}).items()
              if k in ("eos_token_id", "pad_token_id", "bos_token_id")}
    merged.update({k: v for k, v in hf.items() if v is not None})
    eos = merged.get("eos_token_id")
    eos = () if eos is None else tuple(int(i) for i in (eos if isinstance(eos, (list, tuple))
                                                        else [eos]))
    top_k = merged.get("top_k", 50)
    return cls(eos_token_ids=eos, pad_token_id=merged.get("pad_token_id"),
               bos_token_id=merged.get("bos_token_id"),
               do_sample=bool(merged.get("do_sample", False)),
               temperature=float(merged.get("temperature", 1.0)),
               top_k=int(top_k) if top_k else None, top_p=merged.get("top_p", 1.0),
               min_p=merged.get("min_p"),
               repetition_penalty=float(merged.get("repetition_penalty", 1.0)),
               max_new_tokens=merged.get("max_new_tokens"))

  def policy(self) -> "SamplingPolicy":
    """The ``SamplingPolicy`` these settings describe (``GREEDY`` unless sampling at T > 0)."""
    if not self.do_sample or self.temperature == 0:
      return GREEDY
    return SamplingPolicy(temperature=self.temperature, top_k=self.top_k,
                          top_p=None if self.top_p in (None, 1.0) else self.top_p,
                          min_p=self.min_p or None)


@flax.struct.dataclass
class GenerateOutput:
  """Result of ``generate``.

  Attributes:
    tokens: int32 ``[B, max_new_tokens]`` generated ids; entries at and after ``lengths``
      are ``pad_id``.
    lengths: int32 ``[B]`` number of generated tokens, counting the stop token if one was
      produced.
    extras: the policy's per-step extras stacked on axis 1 (``[B, max_new_tokens, ...]``);
      entries at and after ``lengths`` are meaningless.
    policy_state: the policy state after the last step.
  """
  tokens: Array
  lengths: Array
  extras: Any
  policy_state: Any


def left_align(tokens: Array, mask: Array) -> tuple[Array, Array]:
  """Moves each row's valid tokens to the right end, keeping their order (left padding).

  A stable sort on the mask puts padding first, so left, right or interior padding all
  become left padding.
  """
  if jnp.ndim(tokens) != 2:
    raise ValueError(f"`tokens` must have shape [B, T], got {jnp.shape(tokens)}.")
  if jnp.shape(mask) != jnp.shape(tokens):
    raise ValueError(f"`mask` must be a bool array of the tokens' shape {jnp.shape(tokens)}, "
                     f"got {jnp.shape(mask)}.")
  order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
  return (jnp.take_along_axis(tokens, order, axis=-1),
          jnp.take_along_axis(mask, order, axis=-1))


def _explicit_mesh(state) -> jax.sharding.Mesh | None:
  """The mesh of parameters placed on a mesh with Explicit axes, else None."""
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and mesh_lib.explicit_axes(
        sharding.mesh):
      return sharding.mesh
  return None


def prompt_bucket(prompt_len: int) -> int:
  """The padded prompt length ``generate`` compiles for: the next power of two, at least 8.

  Bucketing bounds recompilation to one per bucket (instead of one per prompt length);
  the extra slots are masked padding, so the result does not change.
  """
  if not isinstance(prompt_len, (int, np.integer)) or prompt_len < 1:
    raise ValueError(f"`prompt_len` must be an int >= 1, got {prompt_len!r}.")
  return max(8, 1 << (prompt_len - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "policy",
                                             "stop_tokens", "pad_id", "repetition_penalty"))
def _generate(graphdef, state, prompt_tokens, prompt_mask, key, policy_state, *,
              max_new_tokens, policy, stop_tokens, pad_id, repetition_penalty):
  model = nnx.merge(graphdef, state)
  batch, prompt_len = prompt_tokens.shape
  tokens, mask = left_align(prompt_tokens, prompt_mask)
  cache = decoder_lm.init_cache(model.config, batch, prompt_len + max_new_tokens)
  # Left-aligned: the last slot holds every row's last real token.
  prefill = model(tokens, attention_mask=mask, cache=cache, last_logits_only=True)
  last_logits = prefill.logits[:, -1]
  penalize = repetition_penalty != 1.0
  rows = jnp.arange(batch)
  if penalize:  # seen[b, v]: token v occurs in row b's prompt or output so far
    seen = jnp.zeros((batch, model.config.vocab_size), bool).at[
        rows[:, None], jnp.where(mask, tokens, 0)].max(mask)
  else:
    seen = jnp.zeros((), bool)

  _, embeds_shape, _, extras_shape = jax.eval_shape(policy, last_logits, policy_state, key)
  feeds_embeddings = embeds_shape is not None
  extras_buffer = jax.tree.map(
      lambda s: jnp.zeros((s.shape[0], max_new_tokens, *s.shape[1:]), s.dtype), extras_shape)
  stop_ids = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

  def cond(carry):
    step, done = carry[0], carry[3]
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, cache, logits, done, lengths, key, pstate, out_tokens, out_extras, seen = carry
    key, step_key = jax.random.split(key)
    if penalize:
      logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    next_tokens, embeds, pstate, extras = policy(logits, pstate, step_key)
    active = ~done
    next_tokens = jnp.where(active, next_tokens.astype(jnp.int32), pad_id)
    if penalize:
      seen = seen.at[rows, next_tokens].max(active)
    out_tokens = jax.lax.dynamic_update_slice(out_tokens, next_tokens[:, None], (0, step))
    out_extras = jax.tree.map(
        lambda buf, e: jax.lax.dynamic_update_slice_in_dim(buf, e[:, None].astype(buf.dtype),
                                                           step, axis=1), out_extras, extras)
    lengths = lengths + active.astype(jnp.int32)
    done = done | jnp.isin(next_tokens, stop_ids)
    # Finished rows keep running (fixed shapes) but as masked padding: their positions
    # stop advancing and nothing attends to their new slots.
    if feeds_embeddings:
      out = model(inputs_embeds=embeds[:, None], attention_mask=active[:, None], cache=cache)
    else:
      out = model(next_tokens[:, None], attention_mask=active[:, None], cache=cache)
    return (step + 1, out.cache, out.logits[:, 0], done, lengths, key, pstate, out_tokens,
            out_extras, seen)

  init = (jnp.zeros((), jnp.int32), prefill.cache, last_logits, jnp.zeros((batch,), bool),
          jnp.zeros((batch,), jnp.int32), key, policy_state,
          jnp.full((batch, max_new_tokens), pad_id, jnp.int32), extras_buffer, seen)
  _, _, _, _, lengths, _, policy_state, out_tokens, out_extras, _ = jax.lax.while_loop(
      cond, body, init)
  return GenerateOutput(tokens=out_tokens, lengths=lengths, extras=out_extras,
                        policy_state=policy_state)


def generate(model: decoder_lm.DecoderLM, prompt_tokens: Array,
             prompt_lengths: Array | None = None, *, prompt_mask: Array | None = None,
             max_new_tokens: int | None = None, key: Array, policy: Policy | None = None,
             policy_state: Any = None, stop_tokens: tuple[int, ...] | None = None,
             pad_id: int | None = None, repetition_penalty: float | None = None,
             generation_config: GenerationConfig | None = None) -> GenerateOutput:
  """Jit-compiled KV-cache decoding of a padded prompt batch.

  Prefill runs the whole batch in one forward pass; the prompt length is padded up to
  ``prompt_bucket(P)`` (masked slots), so prompts of a new length reuse a compiled loop. The
  decode loop is one ``lax.while_loop`` whose KV cache is a loop carry updated in place.

  Args:
    model: a ``DecoderLM``.
    prompt_tokens: int ``[B, P]`` prompts, padded on the right (give ``prompt_lengths``) or
      anywhere (give ``prompt_mask``); real tokens must be ids in ``[0, vocab_size)``.
    prompt_lengths: int ``[B]`` real-token counts (each in ``[1, P]``) of right-padded prompts.
    prompt_mask: bool ``[B, P]`` True on real tokens (alternative to ``prompt_lengths``); every
      row needs at least one. With neither, every token is real.
    max_new_tokens: decode steps (static); default ``generation_config.max_new_tokens``.
    key: PRNG key, split once per step and handed to the policy.
    policy: ``(logits [B, V] float32, policy_state, key) -> (token_ids [B],
      inputs_embeds [B, D] or None, policy_state, extras)``. When it returns embeddings,
      those (not the token embeddings) are the next input; the token ids are still
      recorded and checked against ``stop_tokens``. Must be hashable (it is a jit static
      argument); keep arrays it needs (e.g. ``model.embedding_matrix()``) in
      ``policy_state``, not in a closure, so they are traced rather than baked in.
      Default ``generation_config.policy()`` when a config is given, else
      ``SamplingPolicy()`` (temperature 1, no filtering).
    policy_state: initial state pytree for ``policy``.
    stop_tokens: a row finishes after emitting any of these ids (included in its length).
      Default: every EOS id of ``generation_config``, else of ``model.config``; ``()``
      decodes exactly ``max_new_tokens``.
    pad_id: id written after a row finishes (default: the config's pad id, else 0).
    repetition_penalty: ``apply_repetition_penalty`` over the prompt's real tokens and the
      generated ones, applied to the logits before the policy (default: the config's, else
      1 = off). Unlike transformers, padding ids are not counted as seen.
    generation_config: checkpoint defaults (``hf_checkpoint.load_generation_config``) for
      every argument above left as None.

  Returns:
    ``GenerateOutput`` (tokens ``[B, max_new_tokens]``, lengths ``[B]``, extras,
    policy_state).

  Raises ValueError for a prompt row with no real token, ``prompt_lengths`` outside
  ``[1, P]`` or a real token id outside ``[0, vocab_size)``; when these are traced (generate
  called under jit) the offending rows instead get ``lengths == -1`` and pad tokens.
  """
  gen = generation_config or GenerationConfig(eos_token_ids=model.config.eos_token_ids)
  if prompt_tokens.ndim != 2 or not jnp.issubdtype(prompt_tokens.dtype, jnp.integer):
    raise ValueError(f"`prompt_tokens` must be an int array [B, P], got {prompt_tokens.dtype} "
                     f"{prompt_tokens.shape}.")
  if prompt_lengths is not None and prompt_mask is not None:
    raise ValueError("Pass at most one of `prompt_lengths` [B] and `prompt_mask` [B, P].")
  batch, prompt_len = prompt_tokens.shape
  row_ok = jnp.ones((batch,), bool)
  if prompt_lengths is not None:
    if jnp.shape(prompt_lengths) != (batch,):
      raise ValueError(f"`prompt_lengths` must be [B] = ({batch},), got "
                       f"{jnp.shape(prompt_lengths)}.")
    prompt_lengths = jnp.asarray(prompt_lengths)
    row_ok = numerics.check_values(
        "prompt_lengths", (prompt_lengths >= 1) & (prompt_lengths <= prompt_len),
        f"in [1, P={prompt_len}]", prompt_lengths)
    prompt_mask = jnp.arange(prompt_len)[None, :] < prompt_lengths[:, None]
  elif prompt_mask is None:
    prompt_mask = jnp.ones((batch, prompt_len), bool)
  elif jnp.shape(prompt_mask) != (batch, prompt_len):
    raise ValueError(f"`prompt_mask` must be [B, P] = {(batch, prompt_len)}, got "
                     f"{jnp.shape(prompt_mask)}.")
  else:
    prompt_mask = jnp.asarray(prompt_mask, bool)
    row_ok = numerics.check_values("prompt_mask", jnp.any(prompt_mask, axis=-1),
                                   "True on at least one token per row")
  vocab = model.config.vocab_size
  in_vocab = (prompt_tokens >= 0) & (prompt_tokens < vocab)
  row_ok &= numerics.check_values("prompt_tokens", jnp.all(in_vocab | ~prompt_mask, axis=-1),
                                  f"ids in [0, {vocab}) at real (unpadded) positions")
  max_new_tokens = gen.max_new_tokens if max_new_tokens is None else max_new_tokens
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"`max_new_tokens` must be an int >= 1, got {max_new_tokens!r}.")
  penalty = gen.repetition_penalty if repetition_penalty is None else repetition_penalty
  _check_penalty(float(penalty) if isinstance(penalty, np.floating) else penalty)
  stop_tokens = gen.eos_token_ids if stop_tokens is None else stop_tokens
  pad_id = (gen.pad_token_id or 0) if pad_id is None else pad_id
  if policy is None:
    policy = gen.policy() if generation_config is not None else SamplingPolicy()

  bucket = prompt_bucket(prompt_len)
  extra = ((0, 0), (0, bucket - prompt_len))  # masked padding; left_align moves it first
  tokens = jnp.pad(jnp.where(in_vocab, prompt_tokens, 0).astype(jnp.int32), extra)
  graphdef, state = nnx.split(model)
  run = functools.partial(_generate, graphdef, max_new_tokens=max_new_tokens, policy=policy,
                          stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id),
                          repetition_penalty=float(penalty))
  args = (state, tokens, jnp.pad(prompt_mask & row_ok[:, None], extra), key, policy_state)
  mesh = _explicit_mesh(state)
  if mesh is None:
    out = run(*args)
  else:  # Explicit axes: trace the loop as on an Auto mesh (the models use propagation)
    with jax.set_mesh(mesh):
      out = mesh_lib.auto_axes(run, mesh, jax.sharding.NamedSharding(mesh, jax.P()))(*args)
  if numerics.is_traced(row_ok) or not bool(jnp.all(row_ok)):
    out = out.replace(tokens=jnp.where(row_ok[:, None], out.tokens, pad_id),
                      lengths=jnp.where(row_ok, out.lengths, -1))
  return out
