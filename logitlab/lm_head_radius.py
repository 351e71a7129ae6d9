"""Per-token step radius of a language model without a ``[B, T, V]`` tangent.

For a decoder the logits are ``z = x W (+ b)`` with ``x = norm(h_L) [B, T, D]`` the features
entering the LM head and ``W [D, V]`` its kernel (``E^T`` for tied embeddings). Along a
parameter step ``p`` the logit tangent (:func:`logitlab.ghosts.directional_logits`) is

    a = dx W + x dW (+ db),        dx = J_x p,   dW, db = the head's part of p,

so one ``jax.jvp`` of the *features* (``[B, T, D]``, cheap) and of the head parameters gives
everything; the ``[B, T, V]`` tangent is never needed as a whole. The per-token spread
``Delta_a = max_v a_v - min_v a_v`` is accumulated vocabulary chunk by vocabulary chunk
(a running max and min per token) inside token chunks that reuse
:func:`logitlab.distill_chunked.map_token_chunks`, so live memory is
``O(B * token_chunk * vocab_chunk)`` instead of ``O(B * T * V)``. The kernel and its
tangent are read by ``dynamic_slice`` (no V-sized copy); products accumulate in float32.

The normalized step is then ``r = max_{valid tokens} Delta_a / (pi T)``, exactly as
:func:`logitlab.ghosts.normalized_step` gives from the full tangent (tested equal).
Use it with the guard through ``update(..., logits_spread=lm_head_spread_fn(...))``.

Sharding: the token axis may be sharded freely (data/fsdp), and the vocabulary too (tensor
parallel head), under Explicit and Auto axis types (tested equal to one device). With the
vocabulary sharded prefer ``vocab_chunk_size=None``: each device then reduces its own
``[B, C, V / n]`` slice and XLA combines the max/min across devices, whereas a vocabulary
scan slices across shards (correct, but the partitioner may gather kernel chunks).
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from logitlab import distill_chunked
from logitlab import numerics

Array = jax.Array
PyTree = Any


def _check_int(name: str, value, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"`{name}` must be an int >= 1{' or None' if allow_none else ''}, got "
                     f"{value!r}.")


def lm_head_spread(
    features: chex.Array,
    features_tangent: chex.Array,
    kernel: chex.Array,
    kernel_tangent: chex.Array | None = None,
    *,
    bias_tangent: chex.Array | None = None,
    where: chex.Array | None = None,
    token_chunk_size: int = 128,
    vocab_chunk_size: int | None = 8192,
) -> Array:
  """Per-token ``Delta_a`` of ``a = dx W + x dW + db``, reduced in token and vocabulary chunks.

  Args:
    features: ``x [B, T, D]``, the LM head's input (after the final norm).
    features_tangent: ``dx [B, T, D]``, its tangent along the step.
    kernel: ``W [D, V]``.
    kernel_tangent: ``dW [D, V]`` (``None``: the head is not updated, e.g. frozen).
    bias_tangent: optional ``db [V]``.
    where: optional mask of valid tokens, broadcastable to ``[B, T]`` (masked tokens get 0).
    token_chunk_size: tokens per chunk C.
    vocab_chunk_size: vocabulary entries per chunk; ``None`` reduces the whole (possibly
      sharded) vocabulary of a token chunk at once.

  Returns:
    float32 ``[B, T]``, equal to ``ghosts.logit_spread(a, where=where)``.
  """
  numerics.check_logits("features", features, min_rank=3)
  if features.ndim != 3:
    raise ValueError(f"`features` must have shape [B, T, D], got {features.shape}.")
  numerics.check_logits("features_tangent", features_tangent)
  numerics.check_same_shape(("features", "features_tangent"), features, features_tangent)
  numerics.check_logits("kernel", kernel, min_rank=2)
  b, t, d = features.shape
  if kernel.ndim != 2 or kernel.shape[0] != d:
    raise ValueError(f"`kernel` must have shape [D, V] with D = {d} (features' last axis), "
                     f"got {kernel.shape}.")
  v = kernel.shape[1]
  if kernel_tangent is not None:
    numerics.check_logits("kernel_tangent", kernel_tangent)
    numerics.check_same_shape(("kernel", "kernel_tangent"), kernel, kernel_tangent)
  if bias_tangent is not None:
    numerics.check_logits("bias_tangent", bias_tangent)
    if bias_tangent.shape != (v,):
      raise ValueError(f"`bias_tangent` must have shape [V] = ({v},), got "
                       f"{bias_tangent.shape}.")
  numerics.check_mask("where", where, (b, t))
  _check_int("token_chunk_size", token_chunk_size)
  _check_int("vocab_chunk_size", vocab_chunk_size, allow_none=True)

  chunk = v if vocab_chunk_size is None else min(vocab_chunk_size, v)
  num_chunks = -(-v // chunk)

  def tangent_chunk(x, dx, start):
    """``a[..., start:start + chunk]`` in float32; slices, so nothing V-sized is copied."""
    take = lambda w: jax.lax.dynamic_slice_in_dim(w, start, chunk, axis=w.ndim - 1)
    a = jnp.einsum("bcd,dv->bcv", dx, take(kernel), preferred_element_type=jnp.float32)
    if kernel_tangent is not None:
      a += jnp.einsum("bcd,dv->bcv", x, take(kernel_tangent),
                      preferred_element_type=jnp.float32)
    if bias_tangent is not None:
      a += numerics.upcast(take(bias_tangent))
    return a

  def per_token(x, dx):
    def body(carry, i):
      # dynamic_slice clamps the last start to V - chunk: that chunk overlaps the previous
      # one, which leaves a max and a min unchanged (no padding, no copy of the kernel).
      a = tangent_chunk(x, dx, i * chunk)
      return (jnp.maximum(carry[0], jnp.max(a, -1)),
              jnp.minimum(carry[1], jnp.min(a, -1))), None
    shape = x.shape[:2]
    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.full(shape, jnp.inf, jnp.float32))
    (high, low), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
    return high - low

  spread = distill_chunked.map_token_chunks(per_token, (features, features_tangent),
                                            token_chunk_size)
  if where is not None:
    spread = jnp.where(jnp.broadcast_to(jnp.asarray(where, bool), (b, t)), spread, 0.0)
  return spread


def lm_head_spread_fn(
    head_inputs_fn: Callable[[PyTree], tuple[Array, ...]],
    params: PyTree,
    *,
    where: chex.Array | None = None,
    token_chunk_size: int = 128,
    vocab_chunk_size: int | None = 8192,
) -> Callable[[PyTree], Array]:
  """``step -> per-token Delta_a [B, T]`` of an LM, for ``radius_guard``'s ``logits_spread=``.

  One ``jax.jvp`` of ``head_inputs_fn`` along the step gives ``x, dx, W, dW (, db)``;
  :func:`lm_head_spread` reduces them.

  Args:
    head_inputs_fn: ``params -> (x [B, T, D], W [D, V])`` or ``(x, W, b [V])``: the head's
      input features on the batch (eval mode; final norm applied) and the head's kernel
      (and bias) selected from ``params`` (the transposed embedding when tied). For
      ``DecoderLM`` use :func:`decoder_lm_head_inputs`.
    params: the point of expansion (the guard's ``params``).
    where, token_chunk_size, vocab_chunk_size: as in :func:`lm_head_spread`.
  """
  if not callable(head_inputs_fn):
    raise TypeError(f"`head_inputs_fn` must be callable, got {type(head_inputs_fn).__name__}.")
  _check_int("token_chunk_size", token_chunk_size)
  _check_int("vocab_chunk_size", vocab_chunk_size, allow_none=True)

  def spread_of(step):
    step = jax.tree.map(lambda s, p: jnp.asarray(s).astype(jnp.result_type(p)), step, params)
    primal, tangent = jax.jvp(lambda p: tuple(head_inputs_fn(p)), (params,), (step,))
    if len(primal) not in (2, 3):
      raise ValueError("`head_inputs_fn` must return (features, kernel) or (features, kernel, "
                       f"bias); got {len(primal)} outputs.")
    return lm_head_spread(primal[0], tangent[0], primal[1], tangent[1],
                          bias_tangent=tangent[2] if len(primal) == 3 else None, where=where,
                          token_chunk_size=token_chunk_size, vocab_chunk_size=vocab_chunk_size)

  return spread_of


def decoder_lm_head_inputs(model, tokens: chex.Array, *,
                           attention_mask: chex.Array | None = None
                           ) -> Callable[[PyTree], tuple[Array, Array]]:
  """``params_state -> (final-normed features [B, T, D], W [D, V])`` for a ``DecoderLM``.

  Built on :func:`logitlab.nnx_logits_fn` (a pure function of the ``nnx.Param`` state, the
  caller's model untouched). The model's own logits are computed but unused; under ``jit``
  XLA drops them (and their tangent).
  """
  if not hasattr(tokens, "dtype") or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"`tokens` must be an int array [B, T], got "
                    f"{getattr(tokens, 'dtype', type(tokens).__name__)}.")
  if tokens.ndim != 2:
    raise ValueError(f"`tokens` must have shape [B, T], got {tokens.shape}.")
  if attention_mask is not None and jnp.shape(attention_mask) != tokens.shape:
    raise ValueError(f"`attention_mask` must have the tokens' shape {tokens.shape}, got "
                     f"{jnp.shape(attention_mask)}.")
  from logitlab.nnx_logits import nnx_logits_fn  # pylint: disable=g-import-not-at-top

  def forward(module, tokens):
    hidden = module(tokens, attention_mask=attention_mask,
                    return_hidden_states=True).hidden_states[-1]
    if module.lm_head is None:  # the raw tied table (embedding_matrix() adds Gemma's sqrt(D))
      kernel = module.embed_tokens.embedding[...].T
    else:
      kernel = module.lm_head[...]
    return module.final_norm(hidden), kernel

  return nnx_logits_fn(model, tokens, forward=forward)
