"""Chunked, masked logit distillation for large vocabularies.

For an LM with hidden states ``h [B, T, D]`` and output projection ``logits_fn`` (e.g.
``DecoderLM.unembed``: final norm + ``[D, V]`` matmul), the naive distillation loss builds
``[B, T, V]`` float32 logits for the student *and* the teacher, plus the same again for the
backward pass. At V = 151936 (Qwen2.5) that dominates memory. Here the sequence axis is
cut into chunks of ``chunk_size`` tokens and a ``jax.lax.scan`` over the chunks computes

  loss = (1 / N) * sum_{b, t : mask[b, t]} D(p_teacher(. | b, t) || p_student(. | b, t))

with N the number of valid tokens (global valid-token normalization: every valid token
weighs the same, whatever the row length; pass ``num_valid_tokens`` to normalize by the
count of a whole accumulated batch). The scan body is wrapped in ``jax.checkpoint`` so the
backward pass recomputes one chunk's logits at a time: live memory is O(B * chunk * V)
instead of O(B * T * V), while the FLOPs grow only by one extra projection forward.

Divergences D on ``softmax(. / temperature)``:
  * "forward_kl": KL(p_t || p_s) (standard KD, mode covering),
  * "reverse_kl": KL(p_s || p_t) (mode seeking, as in on-policy distillation / MiniLLM),
  * "jsd": generalized JSD (GKD, Agarwal et al., arXiv 2306.13649) with
    m = beta p_t + (1 - beta) p_s and D = beta KL(p_t || m) + (1 - beta) KL(p_s || m).
The losses are multiplied by ``temperature**2`` (Hinton et al., arXiv 1503.02531) so that
gradient magnitudes do not shrink with T.

Top-k teacher (our option, for stored teacher logits): the teacher is given as its top-k
logits and ids per token; p_t is the softmax over those k entries only (teacher mass
outside the top k is dropped and the rest renormalized), and the student's full-vocabulary
log-probs are gathered at the ids. Only "forward_kl" is defined for a top-k teacher.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np

from logitlab import numerics

Array = jax.Array
LogitsFn = Callable[[Array], Array]
Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def map_token_chunks(fn: Callable[..., Any], arrays: tuple[Array, ...],
                     chunk_size: int) -> Any:
  """Applies ``fn`` to consecutive sequence chunks under ``scan`` + ``checkpoint``.

  Args:
    fn: maps chunk arrays ``[B, C, ...]`` (one per entry of ``arrays``) to per-token
      values ``[B, C, ...]`` (an array or a pytree of arrays). Closed-over arrays
      (projection weights) get gradients.
    arrays: arrays with leading axes ``[B, T, ...]``; T is padded with zeros to a
      multiple of ``chunk_size`` (padded outputs are dropped).
    chunk_size: tokens per chunk C (clipped to T).

  Returns:
    ``fn``'s outputs for all tokens, ``[B, T, ...]``; floating leaves are float32, integer
    leaves keep their dtype. Only one chunk's intermediates (e.g. its ``[B, C, V]``
    logits) are live in the forward and the backward pass.
  """
  if chunk_size < 1:
    raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
  b, t = arrays[0].shape[:2]
  for a in arrays:
    if a.shape[:2] != (b, t):
      raise ValueError(f"All chunked arrays must share leading axes [B, T] = {(b, t)}, got "
                       f"{a.shape}.")
  as_f32 = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.inexact) else x
  body = jax.checkpoint(lambda _, xs: (None, jax.tree.map(as_f32, fn(*xs))))
  _, out = jax.lax.scan(body, None, tuple(_to_chunks(a, chunk_size) for a in arrays))
  return jax.tree.map(lambda o: _from_chunks(o, t), out)


def _to_chunks(a: Array, chunk_size: int) -> Array:
  """``[B, T, ...] -> [num_chunks, B, C, ...]``, zero-padding T to a multiple of C."""
  b, t = a.shape[:2]
  chunk = min(chunk_size, t)
  num_chunks = -(-t // chunk)
  a = jnp.pad(a, [(0, 0), (0, num_chunks * chunk - t)] + [(0, 0)] * (a.ndim - 2))
  return jnp.moveaxis(a.reshape((b, num_chunks, chunk) + a.shape[2:]), 1, 0)


def _from_chunks(a: Array, t: int) -> Array:
  """Inverse of ``_to_chunks``: ``[num_chunks, B, C, ...] -> [B, T, ...]``."""
  a = jnp.moveaxis(a, 0, 1)
  return a.reshape((a.shape[0], -1) + a.shape[3:])[:, :t]


def _zero_cotangent(x: Array):
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, jax.dtypes.float0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5))
def sum_token_chunks_fused(fn: Callable[..., Array], params, hidden: Array,
                           rest: tuple[Array, ...], weights: Array, chunk_size: int) -> Array:
  """``sum_{b,t} weights[b, t] * fn(params, hidden, *rest)[b, t]``, chunked over T, with the
  gradient computed *during the forward scan* (fused, as in Liger's fused linear
  cross-entropy).

  Each chunk's vjp w.r.t. ``params`` and its hidden states is taken right after its forward,
  so no chunk is recomputed: the FLOPs equal the naive loss's forward + backward, and live
  memory is one chunk's logits plus the ``params`` gradient accumulator. Without
  differentiation only the plain chunked forward runs. ``params`` (e.g. the output
  projection) and ``hidden`` get gradients; ``rest`` and ``weights`` are constants.
  """
  per_token = map_token_chunks(lambda h, *r: fn(params, h, *r), (hidden,) + tuple(rest),
                               chunk_size)
  return jnp.sum(per_token * weights)


def _fused_fwd(fn, params, hidden, rest, weights, chunk_size):
  def chunk_value_and_grads(p, h, r, w):
    value, vjp = jax.vjp(lambda p_, h_: jnp.sum(fn(p_, h_, *r) * w), p, h)
    return value, vjp(jnp.ones_like(value))

  def body(grad_params, xs):
    h, r, w = xs
    value, (g_p, g_h) = chunk_value_and_grads(params, h, r, w)
    return jax.tree.map(jnp.add, grad_params, g_p), (value, g_h)

  to_chunks = lambda a: _to_chunks(a, chunk_size)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.result_type(x, jnp.float32)), params)
  grad_params, (values, grad_hidden) = jax.lax.scan(
      body, zeros, (to_chunks(hidden), tuple(to_chunks(r) for r in rest),
                    to_chunks(weights.astype(jnp.float32))))
  grad_hidden = _from_chunks(grad_hidden, hidden.shape[1])
  grad_params = jax.tree.map(lambda g, x: g.astype(x.dtype), grad_params, params)
  return jnp.sum(values), (grad_params, grad_hidden.astype(hidden.dtype), rest, weights)


def _fused_bwd(fn, chunk_size, residuals, g):
  del fn, chunk_size
  grad_params, grad_hidden, rest, weights = residuals
  scale = lambda x: (g * x).astype(x.dtype)
  return (jax.tree.map(scale, grad_params), scale(grad_hidden),
          jax.tree.map(_zero_cotangent, rest), jnp.zeros_like(weights))


sum_token_chunks_fused.defvjp(_fused_fwd, _fused_bwd)


def divergence_from_logits(teacher_logits: Array, student_logits: Array, *,
                           divergence: Divergence = "forward_kl", beta: float = 0.5,
                           temperature: float = 1.0) -> Array:
  """Per-token divergence ``[...]`` between teacher and student logits ``[..., V]``.

  See the module docstring for the definitions; not scaled by ``temperature**2``.
  """
  if divergence == "forward_kl":
    return numerics.kl_divergence_from_logits(teacher_logits, student_logits, temperature)
  if divergence == "reverse_kl":
    return numerics.kl_divergence_from_logits(student_logits, teacher_logits, temperature)
  if divergence == "jsd":
    if not 0.0 < beta < 1.0:
      raise ValueError(f"`beta` must be in (0, 1) for 'jsd', got {beta}; use 'forward_kl' "
                       "(beta -> 0 limit direction) or 'reverse_kl' instead.")
    log_t = numerics.log_softmax(teacher_logits, temperature)
    log_s = numerics.log_softmax(student_logits, temperature)
    log_m = jnp.logaddexp(log_t + jnp.log(beta), log_s + jnp.log1p(-beta))
    p_t, p_s = jnp.exp(log_t), jnp.exp(log_s)
    kl_tm = jnp.sum(numerics.xlogy_probs(p_t, log_t) - numerics.xlogy_probs(p_t, log_m), -1)
    kl_sm = jnp.sum(numerics.xlogy_probs(p_s, log_s) - numerics.xlogy_probs(p_s, log_m), -1)
    return beta * kl_tm + (1.0 - beta) * kl_sm
  raise ValueError(f"`divergence` must be 'forward_kl', 'reverse_kl' or 'jsd', got "
                   f"{divergence!r}.")


def topk_forward_kl(teacher_topk_logits: Array, teacher_topk_ids: Array,
                    student_logits: Array, *, temperature: float = 1.0) -> Array:
  """Per-token KL(p_t^k || p_s) with p_t^k the teacher softmax over its stored top-k.

  ``sum_j p_t^k[j] (log p_t^k[j] - log p_s[ids_j])`` with ``p_s`` the full-vocabulary
  student softmax (T-tempered). Shapes: ``[..., k]``, ``[..., k]``, ``[..., V]`` -> ``[...]``.
  """
  log_t = numerics.log_softmax(teacher_topk_logits, temperature)
  # A gather of k ids from a vocabulary split over an Explicit axis has no unambiguous
  # output sharding: gather_axis all-gathers the vocabulary first (the Auto partitioner
  # does the same implicitly).
  log_s = jnp.take_along_axis(
      numerics.gather_axis(numerics.log_softmax(student_logits, temperature)),
      teacher_topk_ids, axis=-1)
  p_t = jnp.exp(log_t)
  return jnp.sum(numerics.xlogy_probs(p_t, log_t) - numerics.xlogy_probs(p_t, log_s), -1)


def tail_logprob(logits: Array, ids: Array, temperature: float = 1.0) -> Array:
  """``log sum_{j not in ids} softmax(logits / T)_j`` ``[...]``: the exact log-mass outside
  the (distinct) ``ids [..., k]``, computed as a log-sum-exp over the tail (-inf when
  ``ids`` covers the vocabulary)."""
  numerics.check_positive("temperature", temperature)
  z = numerics.upcast(logits) / temperature
  flat, flat_ids = z.reshape(-1, z.shape[-1]), ids.reshape(-1, ids.shape[-1])
  tail = flat.at[jnp.arange(flat.shape[0])[:, None], flat_ids].set(-jnp.inf)
  out = jax.nn.logsumexp(tail, axis=-1) - jax.nn.logsumexp(flat, axis=-1)
  return out.reshape(z.shape[:-1])


def topk_rest_forward_kl(teacher_topk_logits: Array, teacher_topk_ids: Array,
                         teacher_rest_logprob: Array, student_logits: Array, *,
                         temperature: float = 1.0) -> Array:
  """Per-token KL over k + 1 buckets: the teacher's top-k ids and a "rest" bucket.

  Teacher: ``p_i = softmax_k(t / T)_i (1 - p_rest)``, ``p_rest = exp(teacher_rest_logprob)``
  (its exact tail mass at T, ``tail_logprob``). Student: ``q_i = softmax(s / T)[ids_i]``
  and ``q_rest`` its own tail mass. The result is the KL of the two bucketed distributions:
  exact when the teacher's tail is empty, otherwise a lower bound of the full KL missing
  ``p_rest KL(p_tail || q_tail)`` (data processing inequality).
  """
  log_top = numerics.log_softmax(teacher_topk_logits, temperature)
  rest = numerics.upcast(teacher_rest_logprob)
  log_t = log_top + jnp.log(-jnp.expm1(rest))[..., None]
  log_s = jnp.take_along_axis(numerics.log_softmax(student_logits, temperature),
                              teacher_topk_ids, axis=-1)
  log_s_rest = tail_logprob(student_logits, teacher_topk_ids, temperature)
  p_t, p_rest = jnp.exp(log_t), jnp.exp(rest)
  top = jnp.sum(numerics.xlogy_probs(p_t, log_t) - numerics.xlogy_probs(p_t, log_s), -1)
  return top + numerics.xlogy_probs(p_rest, rest) - numerics.xlogy_probs(p_rest, log_s_rest)


def _check_hidden(name: str, hidden: Array) -> None:
  numerics.check_logits(name, hidden, min_rank=3)
  if hidden.ndim != 3:
    raise ValueError(f"`{name}` must have shape [B, T, D], got {hidden.shape}.")


def chunked_distill_loss(
    student_hidden: chex.Array,
    student_logits_fn: Callable[..., Array],
    mask: chex.Array,
    *,
    teacher_hidden: chex.Array | None = None,
    teacher_logits_fn: LogitsFn | None = None,
    teacher_topk_logits: chex.Array | None = None,
    teacher_topk_ids: chex.Array | None = None,
    teacher_rest_logprob: chex.Array | None = None,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = 256,
    num_valid_tokens: chex.Numeric | None = None,
    student_params: Any = None,
) -> Array:
  """Masked distillation loss computed chunk by chunk from hidden states.

  Args:
    student_hidden: ``[B, T, D]`` student states fed to ``student_logits_fn``.
    student_logits_fn: ``[B, C, D] -> [B, C, V]`` float logits (e.g. ``model.unembed``).
    mask: bool ``[B, T]``, True on the tokens that count (reply tokens, not padding).
    teacher_hidden, teacher_logits_fn: full teacher (``[B, T, D']`` and its projection);
      the teacher side gets no gradient.
    teacher_topk_logits, teacher_topk_ids: alternatively a stored top-k teacher
      ``[B, T, k]`` (float logits, int ids); only with ``divergence="forward_kl"``.
    teacher_rest_logprob: optional ``[B, T]`` log tail mass of the teacher outside its
      top-k at ``temperature`` (``tail_logprob``): the KL then has a "rest" bucket
      (``topk_rest_forward_kl``); None renormalizes the teacher over its top-k.
    divergence: "forward_kl" | "reverse_kl" | "jsd" (generalized JSD with ``beta``).
    temperature: softmax temperature T; the loss is scaled by T**2.
    chunk_size: tokens per chunk.
    num_valid_tokens: normalizer (defaults to ``mask.sum()``); pass the count of the full
      accumulated batch when summing micro-batch losses.
    student_params: optional pytree (e.g. the output projection); then
      ``student_logits_fn(student_params, h)`` is used and the backward is fused into the
      forward scan (``sum_token_chunks_fused``: no recomputation, same FLOPs as the naive
      loss). Without it, closed-over parameters get gradients through ``jax.checkpoint``
      (one extra chunk forward in the backward pass).

  Returns:
    float32 scalar ``T**2 * sum_valid D / N``.
  """
  _check_hidden("student_hidden", student_hidden)
  b, t = student_hidden.shape[:2]
  numerics.check_mask("mask", mask, (b, t))
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, t))
  if temperature <= 0:
    raise ValueError(f"`temperature` must be > 0, got {temperature}.")
  full_teacher = teacher_hidden is not None or teacher_logits_fn is not None
  topk_teacher = teacher_topk_logits is not None or teacher_topk_ids is not None
  if student_params is None:
    student_logits = lambda _, h: student_logits_fn(h)
  else:
    student_logits = student_logits_fn
  if full_teacher == topk_teacher:
    raise ValueError("Pass either (`teacher_hidden`, `teacher_logits_fn`) or "
                     "(`teacher_topk_logits`, `teacher_topk_ids`).")

  if full_teacher:
    if teacher_hidden is None or teacher_logits_fn is None:
      raise ValueError("`teacher_hidden` [B, T, D] and `teacher_logits_fn` go together.")
    _check_hidden("teacher_hidden", teacher_hidden)
    if teacher_hidden.shape[:2] != (b, t):
      raise ValueError(f"`teacher_hidden` must be [B, T, D'] with [B, T] = {(b, t)}, got "
                       f"{teacher_hidden.shape}.")

    def per_chunk(params, s_h, t_h):
      t_logits = jax.lax.stop_gradient(teacher_logits_fn(t_h))
      return divergence_from_logits(t_logits, student_logits(params, s_h),
                                    divergence=divergence, beta=beta, temperature=temperature)

    rest = (jax.lax.stop_gradient(teacher_hidden),)
  else:
    if teacher_topk_logits is None or teacher_topk_ids is None:
      raise ValueError("`teacher_topk_logits` and `teacher_topk_ids` [B, T, k] go together.")
    if divergence != "forward_kl":
      raise ValueError(f"A top-k teacher supports only divergence='forward_kl', got "
                       f"{divergence!r}.")
    numerics.check_same_shape(("teacher_topk_logits", "teacher_topk_ids"),
                              teacher_topk_logits, teacher_topk_ids)
    if teacher_topk_logits.shape[:2] != (b, t):
      raise ValueError(f"`teacher_topk_logits` must be [B, T, k] with [B, T] = {(b, t)}, got "
                       f"{teacher_topk_logits.shape}.")

    rest = (jax.lax.stop_gradient(teacher_topk_logits), teacher_topk_ids)
    if teacher_rest_logprob is None:
      def per_chunk(params, s_h, t_logits, t_ids):
        return topk_forward_kl(t_logits, t_ids, student_logits(params, s_h),
                               temperature=temperature)
    else:
      if jnp.shape(teacher_rest_logprob) != (b, t):
        raise ValueError(f"`teacher_rest_logprob` must be [B, T] = {(b, t)}, got "
                         f"{jnp.shape(teacher_rest_logprob)}.")

      def per_chunk(params, s_h, t_logits, t_ids, t_rest):
        return topk_rest_forward_kl(t_logits, t_ids, t_rest, student_logits(params, s_h),
                                    temperature=temperature)

      rest = rest + (jax.lax.stop_gradient(numerics.upcast(teacher_rest_logprob)),)

  # Global valid-token normalization: every valid token of the (accumulated) batch weighs
  # T^2 / N, so micro-batch losses add up to the full-batch loss.
  count = jnp.sum(mask) if num_valid_tokens is None else num_valid_tokens
  weights = mask * (temperature**2 / jnp.maximum(jnp.asarray(count, jnp.float32), 1.0))
  if student_params is not None:
    return sum_token_chunks_fused(per_chunk, student_params, student_hidden, rest, weights,
                                  chunk_size)
  per_token = map_token_chunks(lambda s_h, *r: per_chunk(None, s_h, *r),
                               (student_hidden,) + rest, chunk_size)
  return jnp.sum(jnp.where(mask, per_token * weights, 0.0))
