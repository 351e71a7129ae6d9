"""Per-token log-probs of a sequence, computed chunk by chunk from hidden states.

``log pi(x_t | x_<t) = log_softmax(logits_fn(h_{t-1}) / T)[x_t]`` where ``h`` are the
model's final residual states and ``logits_fn`` its output projection
(``DecoderLM.unembed``). The projection runs inside ``distill_chunked.map_token_chunks``
(``lax.scan`` + ``jax.checkpoint``), so the float32 ``[B, T, V]`` logits are never
materialized at once, in the forward or the backward pass.

Index convention: outputs are aligned with the tokens, ``logp[:, t]`` scores
``tokens[:, t]``; position 0 (no prefix) is 0 and must be masked out by the caller.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from logitlab import distill_chunked
from logitlab import numerics

Array = jax.Array


def shift_right(values: Array) -> Array:
  """``[B, T, ...] -> [B, T, ...]`` with row t holding ``values[:, t - 1]`` (zeros at t = 0)."""
  if jnp.ndim(values) < 2:
    raise ValueError(f"`values` must have shape [B, T, ...] (rank >= 2), got shape "
                     f"{jnp.shape(values)}.")
  return jnp.pad(values[:, :-1], [(0, 0), (1, 0)] + [(0, 0)] * (values.ndim - 2))


def entropy(logits: chex.Array, temperature: float = 1.0) -> Array:
  """Entropy ``[...]`` (nats) of ``softmax(logits / T)`` over the last axis, float32."""
  log_probs = numerics.log_softmax(logits, temperature)
  probs = jnp.exp(log_probs)
  return -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)


def token_logprobs_from_hidden(hidden: chex.Array, targets: chex.Array,
                               logits_fn: Callable[[Array], Array], *,
                               temperature: float = 1.0, chunk_size: int = 128,
                               return_entropy: bool = False):
  """``log_softmax(logits_fn(hidden) / T)`` at ``targets``, chunked: ``[B, T]`` float32.

  Args:
    hidden: ``[B, T, D]`` states whose projection predicts ``targets`` at the same index.
    targets: int ``[B, T]``.
    return_entropy: also return the per-position entropy ``[B, T]`` (a tuple).
  """
  numerics.check_logits("hidden", hidden, min_rank=3)
  if targets.shape != hidden.shape[:2]:
    raise ValueError(f"`targets` must be [B, T] = {hidden.shape[:2]}, got {targets.shape}.")

  def per_chunk(h, ids):
    logits = logits_fn(h)
    log_probs = numerics.log_softmax(logits, temperature)
    logp = jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
    return (logp, entropy(logits, temperature)) if return_entropy else logp

  return distill_chunked.map_token_chunks(per_chunk, (hidden, targets), chunk_size)


def final_hidden(model, tokens: Array, attention_mask: Array,
                 inputs_embeds: Array | None = None) -> Array:
  """Final residual states ``[B, T, D]`` of a ``DecoderLM`` (its full logits are unused,
  so ``jit`` drops them)."""
  if inputs_embeds is None:
    out = model(tokens, attention_mask=attention_mask, return_hidden_states=True)
  else:
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                return_hidden_states=True)
  return out.hidden_states[-1]


def sequence_logprobs(model, tokens: chex.Array, attention_mask: chex.Array, *,
                      inputs_embeds: chex.Array | None = None, temperature: float = 1.0,
                      chunk_size: int = 128, return_entropy: bool = False):
  """Per-token log-probs ``[B, T]`` of ``tokens`` under a ``DecoderLM`` (index convention
  of the module docstring). ``inputs_embeds`` overrides the inputs (soft tokens);
  ``return_entropy`` also returns the per-position entropies."""
  hidden = shift_right(final_hidden(model, tokens, attention_mask, inputs_embeds))
  return token_logprobs_from_hidden(hidden, tokens, model.unembed, temperature=temperature,
                                    chunk_size=chunk_size, return_entropy=return_entropy)
