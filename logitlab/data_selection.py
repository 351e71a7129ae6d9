"""ASLEC: data selection by average log-prob without the step-length confound.

Average log-prob selection (keep the responses a target model finds most likely) is
confounded by step length (Step Length Confounding, ASLEC; reference code
wangbing1416/ASLEC): the first token(s) of each reasoning step carry much lower log-prob than
the rest, so responses with many short steps score low whatever their quality. With
per-token log-probs l_t of a response of T tokens and H the set of step-head tokens (the
first ``num_head_tokens`` tokens of every step; steps split at ". " / "? "):

  s_logp  = (1/T) sum_t l_t                       plain average log-prob
  s_first = mean_{t in H} l_t,  s_drop = mean_{t not in H} l_t   (ASLEC-DROP score)
  Z       = |H| / T                               step-head density
  OLS over the pool:  s_logp ~ b1 s_first + b2 s_drop + gamma Z + c
  s_casl  = s_logp - gamma Z                      (ASLEC-CASL score)

and the top-k responses of each question by a score are selected (e.g. 5 of 20).
"""

from __future__ import annotations

import re
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from logitlab import numerics
from logitlab.rl import logprobs as rl_logprobs

Array = jax.Array

STEP_SEPARATOR = re.compile(r"[.?] ")


def step_head_mask(text: str, offsets: Sequence[tuple[int, int]], *,
                   num_head_tokens: int = 1, never_head: Sequence[bool] | None = None,
                   separator: re.Pattern = STEP_SEPARATOR) -> np.ndarray:
  """bool ``[num_tokens]``: True on the first ``num_head_tokens`` tokens of every step.

  Args:
    text: the response text; steps start at 0 and right after each ``separator`` match.
    offsets: per-token ``(start, end)`` character spans in ``text`` (``tokenizers``
      ``Encoding.offsets``).
    num_head_tokens: heads per step (ASLEC skips 1-2).
    never_head: optional bool per token, True for tokens that cannot start a step (special
      tokens such as ``<think>``; empty-span tokens are always excluded).
  """
  if isinstance(num_head_tokens, bool) or not isinstance(num_head_tokens, int) or (
      num_head_tokens < 0):
    raise ValueError(f"`num_head_tokens` must be an integer >= 0, got {num_head_tokens!r}.")
  starts = [0] + [m.end() for m in separator.finditer(text)]
  excluded = np.zeros(len(offsets), bool) if never_head is None else np.asarray(never_head)
  token_starts = np.array([s if e > s and not x else -1
                           for (s, e), x in zip(offsets, excluded)])
  head = np.zeros(len(offsets), bool)
  bounds = starts + [len(text) + 1]
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    inside = np.flatnonzero((token_starts >= lo) & (token_starts < hi))
    head[inside[:num_head_tokens]] = True
  return head


def step_scores(token_logprobs: chex.Array, response_mask: chex.Array,
                head_mask: chex.Array) -> dict[str, Array]:
  """Per-response ``s_logp``, ``s_first``, ``s_drop`` and ``Z`` (each ``[N]``) from
  per-token log-probs ``[N, T]`` and bool masks ``[N, T]`` (response tokens, step heads)."""
  numerics.check_logits("token_logprobs", token_logprobs, min_rank=2)
  numerics.check_mask("response_mask", response_mask, token_logprobs.shape)
  numerics.check_mask("head_mask", head_mask, token_logprobs.shape)
  response_mask = jnp.asarray(response_mask, bool)
  head = jnp.asarray(head_mask, bool) & response_mask
  count = jnp.maximum(jnp.sum(response_mask, axis=-1), 1)
  return {
      "s_logp": numerics.masked_mean(token_logprobs, response_mask, axis=-1),
      "s_first": numerics.masked_mean(token_logprobs, head, axis=-1),
      "s_drop": numerics.masked_mean(token_logprobs, response_mask & ~head, axis=-1),
      "z": jnp.sum(head, axis=-1) / count,
  }


def casl_scores(scores: dict[str, Array]) -> tuple[Array, Array]:
  """ASLEC-CASL: OLS fit of ``s_logp`` on ``[s_first, s_drop, Z, 1]`` over the pool.

  Returns ``(s_casl [N], coefficients [4] = (b1, b2, gamma, c))``; the fit is float64-free
  least squares (``jnp.linalg.lstsq``) on float32 features.
  """
  missing = {"s_logp", "s_first", "s_drop", "z"} - set(scores)
  if missing:
    raise ValueError(f"`scores` must be the dict of `step_scores` (s_logp, s_first, s_drop, z); "
                     f"missing {sorted(missing)}.")
  design = jnp.stack([scores["s_first"], scores["s_drop"], scores["z"],
                      jnp.ones_like(scores["z"])], axis=-1)
  coef = jnp.linalg.lstsq(design, scores["s_logp"])[0]
  return scores["s_logp"] - coef[2] * scores["z"], coef


def select_top_k(scores: chex.Array, question_ids: chex.Array, k: int) -> np.ndarray:
  """Indices of the ``k`` highest-scoring responses of every question (ties: lower index).

  ``scores`` and ``question_ids`` are ``[N]``; ``k >= 1``. A NaN score raises (it would sort
  as the highest).
  """
  scores, question_ids = np.asarray(scores), np.asarray(question_ids)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be an integer >= 1, got {k!r}.")
  if scores.ndim != 1 or question_ids.shape != scores.shape:
    raise ValueError(f"`question_ids` must have the shape of `scores` [N] = {scores.shape}, got "
                     f"{question_ids.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("`scores` must be finite.")
  chosen = []
  for q in np.unique(question_ids):
    rows = np.flatnonzero(question_ids == q)
    order = np.argsort(-scores[rows], kind="stable")
    chosen.extend(rows[order[:k]].tolist())
  return np.array(sorted(chosen), np.int64)


def response_logprobs(model, tokens: chex.Array, attention_mask: chex.Array, *,
                      chunk_size: int = 128) -> Array:
  """Per-token log-probs ``[N, T]`` of ``tokens`` (prompt + response) under the target
  model, chunked over T (``logitlab.rl.logprobs.sequence_logprobs``)."""
  return rl_logprobs.sequence_logprobs(model, tokens, attention_mask, chunk_size=chunk_size)
