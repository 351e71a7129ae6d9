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
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from logitlab import numerics
from logitlab.models import decoder_lm

Array = jax.Array
# (logits [B, V], policy_state, key) -> (token_ids [B], inputs_embeds [B, D] | None,
#                                        policy_state, extras pytree of [B, ...] arrays)
Policy = Callable[[Array, Any, Array], tuple[Array, Array | None, Any, Any]]


def _check_filter_args(top_k, top_p, min_p):
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f"`top_k` must be None or a positive int, got {top_k!r}.")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"`top_p` must be None or in (0, 1], got {top_p!r}.")
  if min_p is not None and not 0.0 <= min_p <= 1.0:
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
  """Samples int32 ids ``[...]`` from ``softmax(filter_logits(logits / T))``; T = 0 is argmax."""
  numerics.check_logits("logits", logits)
  if temperature < 0:
    raise ValueError(f"`temperature` must be >= 0, got {temperature!r}.")
  if temperature == 0:
    return jnp.argmax(numerics.upcast(logits), axis=-1).astype(jnp.int32)
  filtered = filter_logits(numerics.upcast(logits) / temperature, top_k=top_k, top_p=top_p,
                           min_p=min_p)
  return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


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
    if self.temperature < 0:
      raise ValueError(f"`temperature` must be >= 0, got {self.temperature!r}.")
    _check_filter_args(self.top_k, self.top_p, self.min_p)

  def __call__(self, logits: Array, policy_state: Any, key: Array):
    tokens = sample_token(logits, key, temperature=self.temperature, top_k=self.top_k,
                          top_p=self.top_p, min_p=self.min_p)
    log_probs = numerics.log_softmax(logits)
    chosen = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    return tokens, None, policy_state, {"log_prob": chosen}


GREEDY = SamplingPolicy(temperature=0.0)


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
  order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
  return (jnp.take_along_axis(tokens, order, axis=-1),
          jnp.take_along_axis(mask, order, axis=-1))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "policy",
                                             "stop_tokens", "pad_id"))
def _generate(graphdef, state, prompt_tokens, prompt_mask, key, policy_state, *,
              max_new_tokens, policy, stop_tokens, pad_id):
  model = nnx.merge(graphdef, state)
  batch, prompt_len = prompt_tokens.shape
  tokens, mask = left_align(prompt_tokens, prompt_mask)
  cache = decoder_lm.init_cache(model.config, batch, prompt_len + max_new_tokens)
  prefill = model(tokens, attention_mask=mask, cache=cache)
  last_logits = prefill.logits[:, -1]

  _, embeds_shape, _, extras_shape = jax.eval_shape(policy, last_logits, policy_state, key)
  feeds_embeddings = embeds_shape is not None
  extras_buffer = jax.tree.map(
      lambda s: jnp.zeros((s.shape[0], max_new_tokens, *s.shape[1:]), s.dtype), extras_shape)
  stop_ids = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

  def cond(carry):
    step, done = carry[0], carry[3]
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, cache, logits, done, lengths, key, pstate, out_tokens, out_extras = carry
    key, step_key = jax.random.split(key)
    next_tokens, embeds, pstate, extras = policy(logits, pstate, step_key)
    active = ~done
    next_tokens = jnp.where(active, next_tokens.astype(jnp.int32), pad_id)
    out_tokens = out_tokens.at[:, step].set(next_tokens)
    out_extras = jax.tree.map(lambda buf, e: buf.at[:, step].set(e), out_extras, extras)
    lengths = lengths + active.astype(jnp.int32)
    done = done | jnp.isin(next_tokens, stop_ids)
    # Finished rows keep running (fixed shapes) but as masked padding: their positions
    # stop advancing and nothing attends to their new slots.
    if feeds_embeddings:
      out = model(inputs_embeds=embeds[:, None], attention_mask=active[:, None], cache=cache)
    else:
      out = model(next_tokens[:, None], attention_mask=active[:, None], cache=cache)
    return (step + 1, out.cache, out.logits[:, 0], done, lengths, key, pstate, out_tokens,
            out_extras)

  init = (jnp.zeros((), jnp.int32), prefill.cache, last_logits, jnp.zeros((batch,), bool),
          jnp.zeros((batch,), jnp.int32), key, policy_state,
          jnp.full((batch, max_new_tokens), pad_id, jnp.int32), extras_buffer)
  _, _, _, _, lengths, _, policy_state, out_tokens, out_extras = jax.lax.while_loop(
      cond, body, init)
  return GenerateOutput(tokens=out_tokens, lengths=lengths, extras=out_extras,
                        policy_state=policy_state)


def generate(model: decoder_lm.DecoderLM, prompt_tokens: Array,
             prompt_lengths: Array | None = None, *, prompt_mask: Array | None = None,
             max_new_tokens: int, key: Array, policy: Policy | None = None,
             policy_state: Any = None, stop_tokens: tuple[int, ...] = (),
             pad_id: int = 0) -> GenerateOutput:
  """Jit-compiled KV-cache decoding of a padded prompt batch.

  Args:
    model: a ``DecoderLM``.
    prompt_tokens: int ``[B, P]`` prompts, padded on the right (give ``prompt_lengths``) or
      anywhere (give ``prompt_mask``); every row needs at least one real token.
    prompt_lengths: int ``[B]`` real-token counts of right-padded prompts.
    prompt_mask: bool ``[B, P]`` True on real tokens (alternative to ``prompt_lengths``).
      With neither, every token is real.
    max_new_tokens: decode steps (static).
    key: PRNG key, split once per step and handed to the policy.
    policy: ``(logits [B, V] float32, policy_state, key) -> (token_ids [B],
      inputs_embeds [B, D] or None, policy_state, extras)``. When it returns embeddings,
      those (not the token embeddings) are the next input; the token ids are still
      recorded and checked against ``stop_tokens``. Must be hashable (it is a jit static
      argument); keep arrays it needs (e.g. ``model.embedding_matrix()``) in
      ``policy_state``, not in a closure, so they are traced rather than baked in.
      Default ``SamplingPolicy()`` (temperature 1, no filtering).
    policy_state: initial state pytree for ``policy``.
    stop_tokens: a row finishes after emitting any of these ids (included in its length).
    pad_id: id written after a row finishes.

  Returns:
    ``GenerateOutput`` (tokens ``[B, max_new_tokens]``, lengths ``[B]``, extras,
    policy_state).
  """
  if prompt_tokens.ndim != 2 or not jnp.issubdtype(prompt_tokens.dtype, jnp.integer):
    raise ValueError(f"`prompt_tokens` must be an int array [B, P], got {prompt_tokens.dtype} "
                     f"{prompt_tokens.shape}.")
  if prompt_lengths is not None and prompt_mask is not None:
    raise ValueError("Pass at most one of `prompt_lengths` [B] and `prompt_mask` [B, P].")
  batch, prompt_len = prompt_tokens.shape
  if prompt_lengths is not None:
    if jnp.shape(prompt_lengths) != (batch,):
      raise ValueError(f"`prompt_lengths` must be [B] = ({batch},), got "
                       f"{jnp.shape(prompt_lengths)}.")
    prompt_mask = jnp.arange(prompt_len)[None, :] < jnp.asarray(prompt_lengths)[:, None]
  elif prompt_mask is None:
    prompt_mask = jnp.ones((batch, prompt_len), bool)
  elif jnp.shape(prompt_mask) != (batch, prompt_len):
    raise ValueError(f"`prompt_mask` must be [B, P] = {(batch, prompt_len)}, got "
                     f"{jnp.shape(prompt_mask)}.")
  if max_new_tokens < 1:
    raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, prompt_tokens, jnp.asarray(prompt_mask, bool), key,
                   policy_state, max_new_tokens=max_new_tokens,
                   policy=SamplingPolicy() if policy is None else policy,
                   stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id))
