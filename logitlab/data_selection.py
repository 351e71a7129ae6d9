r"""ASLEC: data selection by average log-prob without the step-length confound.

Average log-prob selection (keep the responses a target model finds most likely) is
confounded by step length (Step Length Confounding, ASLEC; reference code
wangbing1416/ASLEC): the first token(s) of each reasoning step carry much lower log-prob than
the rest, so responses with many short steps score low whatever their quality. With
per-token log-probs l_t of a response of T tokens and H the set of step-head tokens (the
first ``num_head_tokens`` tokens of every step, 2 in the official script; steps split at
". " / "? "):

  s_logp  = (1/T) sum_t l_t                       plain average log-prob
  s_first = mean_{t in H} l_t,  s_drop = mean_{t not in H} l_t   (ASLEC-DROP score)
  Z       = |H| / T                               step-head density
  OLS over the pool:  s_logp ~ b1 s_first + b2 s_non_head + gamma Z + c
  s_casl  = s_logp - gamma Z                      (ASLEC-CASL score)

and the top-k responses of each question by a score are selected (e.g. 5 of 20). Empty
sets as the official code (merge_cal_limo_ours.py): the DROP score of a response without
non-head tokens is 0.0 (``output_drop_score``); in the regression an empty head or non-head
mean is -16 (``safe_mean``), kept apart as ``s_non_head``.

Step heads follow the official split (``merge_cal_limo_ours.py`` lines 60-73, 221-265): a
step is ``re.split(r'(\. |\? )')``'s text plus its separator, and its first token is the
first token of the tokenized ``' ' + step``. With BPE tokenizers that attach the space to
the next word (Qwen, Llama, GPT: ``". The"`` -> ``"."``, ``" The"``), that token starts at
the separator's space, so a step's tokens are those starting at or after the character
*before* the step text (``step_head_mask``). Whitespace-only steps get no head.
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
_EMPTY_MEAN = -16.0  # official safe_mean() of an empty set
NUM_HEAD_TOKENS = 2  # official --skip_token default


def step_head_mask(text: str, offsets: Sequence[tuple[int, int]], *,
                   num_head_tokens: int = NUM_HEAD_TOKENS,
                   never_head: Sequence[bool] | None = None,
                   separator: re.Pattern = STEP_SEPARATOR) -> np.ndarray:
  """bool ``[num_tokens]``: True on the first ``num_head_tokens`` tokens of every step.

  Args:
    text: the response text; steps start at 0 and right after each ``separator`` match.
    offsets: per-token ``(start, end)`` character spans in ``text``, the space that BPE
      attaches to a word included (e.g. from decoding each token on its own, as
      ``experiments/aslec.py`` does).
    num_head_tokens: heads per step (official default 2).
    never_head: optional bool per token, True for tokens that cannot start a step (special
      tokens such as ``<think>``; empty-span tokens are always excluded).

  A step after a separator owns the tokens starting at or after the separator's last
  character (its space, which BPE merges into the step's first word); see the module
  docstring for the official rule this reproduces.
  """
  if not isinstance(num_head_tokens, int) or num_head_tokens < 1:
    raise ValueError(f"`num_head_tokens` must be a positive int, got {num_head_tokens!r}.")
  if never_head is not None and len(never_head) != len(offsets):
    raise ValueError(f"`never_head` must have one entry per token ({len(offsets)}), got "
                     f"{len(never_head)}.")
  text_starts = [0] + [m.end() for m in separator.finditer(text)]
  text_ends = text_starts[1:] + [len(text)]
  excluded = np.zeros(len(offsets), bool) if never_head is None else np.asarray(never_head)
  token_starts = np.array([s if e > s and not x else -1
                           for (s, e), x in zip(offsets, excluded)])
  # Step i owns tokens from its first character minus the separator's space (i > 0).
  lows = [0] + [max(t - 1, 0) for t in text_starts[1:]]
  keep = [i for i, (a, b) in enumerate(zip(text_starts, text_ends)) if text[a:b].strip()]
  lows = [lows[i] for i in keep]
  head = np.zeros(len(offsets), bool)
  for lo, hi in zip(lows, lows[1:] + [len(text) + 1]):
    inside = np.flatnonzero((token_starts >= lo) & (token_starts < hi))
    head[inside[:num_head_tokens]] = True
  return head


def step_scores(token_logprobs: chex.Array, response_mask: chex.Array,
                head_mask: chex.Array) -> dict[str, Array]:
  """Per-response ``s_logp``, ``s_first``, ``s_drop``, ``s_non_head`` and ``z`` (each
  ``[N]``) from per-token log-probs ``[N, T]`` and bool masks ``[N, T]`` (response tokens,
  step heads). Empty sets as the official code: ``s_drop`` 0.0, ``s_first`` / ``s_non_head``
  -16 (module docstring)."""
  numerics.check_logits("token_logprobs", token_logprobs, min_rank=2)
  numerics.check_mask("response_mask", response_mask, token_logprobs.shape)
  numerics.check_mask("head_mask", head_mask, token_logprobs.shape)
  response_mask = jnp.asarray(response_mask, bool)
  head = jnp.asarray(head_mask, bool) & response_mask
  non_head = response_mask & ~head
  count = jnp.maximum(jnp.sum(response_mask, axis=-1), 1)
  def mean_or(where, empty):
    return jnp.where(jnp.any(where, axis=-1),
                     numerics.masked_mean(token_logprobs, where, axis=-1), empty)
  return {
      "s_logp": numerics.masked_mean(token_logprobs, response_mask, axis=-1),
      "s_first": mean_or(head, _EMPTY_MEAN),
      "s_drop": mean_or(non_head, 0.0),
      "s_non_head": mean_or(non_head, _EMPTY_MEAN),
      "z": jnp.sum(head, axis=-1) / count,
  }


def casl_scores(scores: dict[str, Array]) -> tuple[Array, Array]:
  """ASLEC-CASL: OLS fit of ``s_logp`` on ``[s_first, s_non_head, Z, 1]`` over the pool
  (official ``output_causal_score``: sklearn ``LinearRegression`` with intercept).

  Returns ``(s_casl [N], coefficients [4] = (b1, b2, gamma, c))``; the fit is float64-free
  least squares (``jnp.linalg.lstsq``) on float32 features.
  """
  missing = {"s_logp", "s_first", "s_non_head", "z"} - set(scores)
  if missing:
    raise ValueError(f"`scores` must be the dict of `step_scores` (s_logp, s_first, s_non_head, "
                     f"z); missing {sorted(missing)}.")
  design = jnp.stack([scores["s_first"], scores["s_non_head"], scores["z"],
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
