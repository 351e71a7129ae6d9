"""n-gram style priors injected in logit space.

"Limits of n-gram Style Control for LLMs via Logit-Space Injection" (arXiv 2601.16224;
abstract only) steers a frozen LM at decode time with an interpolated 1-to-3-gram model
trained on a style corpus:

  logits'(x) = logits(x) + lambda * sum_{n matching ctx} w_n log P_n(x | ctx),  lambda in [0, 1].

The paper leaves smoothing, the weights w_n and tokenization open; our choices (all
parameters, see docs/ngram.md):

* Tokens are the LM's own token ids, so the prior lives on the LM's vocabulary [V].
* Smoothing is interpolated absolute discounting (Ney, Essen & Kneser 1994), applied
  recursively down to a uniform distribution, so every order is a proper distribution
  with full support:

    P_0(x) = 1 / V
    P_n(x | h) = max(c(h x) - d, 0) / c(h) + d N1+(h .) / c(h) * P_{n-1}(x | h')   if c(h) > 0
    P_n(x | h) = P_{n-1}(x | h')                                                  otherwise

  with h the last n-1 tokens, h' = h without its oldest token, c(h) = sum_x c(h x),
  N1+(h .) the number of distinct continuations of h and discount d in (0, 1].
* An order n *matches* when its context h was seen in the corpus (order 1 always
  matches). Weights are renormalized over the matching orders by default, so lambda has
  the same scale at every step.
* Context tokens < 0 mean "no token" (sequence start): such a context never matches.

Storage is compact and jit-friendly: for each order the distinct contexts are a
lexicographically sorted int32 table [C_n, n-1] with their continuations padded to the
longest row ([C_n, R_n] ids and counts); a lookup is a binary search plus a scatter into a
dense [V] row. The model is a pytree of arrays and can be closed over or passed into jit.

Decoding: ``NGramStylePolicy`` / ``ngram_style_policy`` is a ``logitlab.sampling.generate``
policy that samples from the steered logits (lambda is traced state: one compile per sweep).

Metrics: style perplexity (under the n-gram model), base perplexity (under the LM), JS
divergence between the original and the steered next-token distributions, token overlap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from logitlab import numerics, sampling

Array = jax.Array


class NGramTable(NamedTuple):
  """Counts of one order n: contexts [C, n-1] (sorted), continuation ids/counts [C, R]."""

  contexts: Array
  next_ids: Array
  counts: Array


class NGramModel(NamedTuple):
  """Interpolated absolute-discounting n-gram model over a vocabulary of ``vocab_size``.

  Attributes:
    tables: one ``NGramTable`` per order 1..max_order.
    discount: absolute discount d (float32 scalar).
    unigram_counts: [V] float32 corpus counts of each token (for overlap metrics).
  """

  tables: tuple[NGramTable, ...]
  discount: Array
  unigram_counts: Array

  @property
  def max_order(self) -> int:
    return len(self.tables)

  @property
  def vocab_size(self) -> int:
    return self.unigram_counts.shape[0]


def _count_order(sequences: list[np.ndarray], order: int) -> NGramTable:
  """Counts all length-``order`` windows (within sequences) into a padded table."""
  windows = [np.lib.stride_tricks.sliding_window_view(s, order) for s in sequences
             if len(s) >= order]
  windows = np.concatenate(windows) if windows else np.zeros((0, order), np.int64)
  grams, counts = np.unique(windows, axis=0, return_counts=True)  # lexicographic order
  contexts, starts, sizes = np.unique(grams[:, :-1], axis=0, return_index=True,
                                      return_counts=True)
  width = max(int(sizes.max()) if len(sizes) else 1, 1)
  row = np.repeat(np.arange(len(contexts)), sizes)
  col = np.arange(len(grams)) - starts[row]
  next_ids = np.zeros((max(len(contexts), 1), width), np.int32)
  padded_counts = np.zeros((max(len(contexts), 1), width), np.float32)
  next_ids[row, col] = grams[:, -1]
  padded_counts[row, col] = counts
  if not len(contexts):  # an empty corpus: one never-matching context
    contexts = np.full((1, order - 1), -1)
  return NGramTable(contexts=jnp.asarray(contexts, jnp.int32), next_ids=jnp.asarray(next_ids),
                    counts=jnp.asarray(padded_counts))


def build_ngram(sequences: Iterable[Sequence[int]], vocab_size: int, *, max_order: int = 3,
                discount: float = 0.75) -> NGramModel:
  """Counts n-grams (n = 1..max_order) of token-id sequences; windows never cross sequences.

  Args:
    sequences: iterable of token-id sequences (lists or 1-D integer arrays) in [0, V).
    vocab_size: V, the LM's vocabulary size.
    max_order: highest order N >= 1 (3 for the paper's 1-to-3-gram prior).
    discount: absolute discount d in (0, 1].

  Returns:
    An ``NGramModel`` (host-built, device arrays).
  """
  if max_order < 1:
    raise ValueError(f"`max_order` must be >= 1, got {max_order}.")
  if not 0 < discount <= 1:
    raise ValueError(f"`discount` must be in (0, 1], got {discount}.")
  sequences = [np.asarray(s, np.int64).reshape(-1) for s in sequences]
  for s in sequences:
    if len(s) and (s.min() < 0 or s.max() >= vocab_size):
      raise ValueError(f"`sequences` must hold token ids in [0, {vocab_size}), got ids in "
                       f"[{s.min()}, {s.max()}].")
  tables = tuple(_count_order(sequences, n) for n in range(1, max_order + 1))
  unigram_counts = np.bincount(np.concatenate(sequences + [np.zeros(0, np.int64)]),
                               minlength=vocab_size).astype(np.float32)
  return NGramModel(tables=tables, discount=jnp.float32(discount),
                    unigram_counts=jnp.asarray(unigram_counts))


def _find_context(contexts: Array, query: Array) -> tuple[Array, Array]:
  """Binary search of ``query`` [n-1] in the sorted rows of ``contexts`` [C, n-1]."""
  num_rows = contexts.shape[0]

  def row_less(row):  # lexicographic row < query
    differs = row != query
    first = jnp.argmax(differs)
    return jnp.any(differs) & (row[first] < query[first])

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    go_right = row_less(contexts[mid])
    return jnp.where(go_right, mid + 1, lo), jnp.where(go_right, hi, mid)

  lo, _ = jax.lax.fori_loop(0, max(math.ceil(math.log2(num_rows + 1)), 1), step,
                            (jnp.int32(0), jnp.int32(num_rows)))
  index = jnp.minimum(lo, num_rows - 1)
  return index, jnp.all(contexts[index] == query)


def _order_log_probs_single(model: NGramModel, context: Array) -> tuple[Array, Array]:
  """Per-order log P_n(. | context) [N, V] and matched [N] for one context [N-1]."""
  vocab_size, discount = model.vocab_size, model.discount
  probs = jnp.full((vocab_size,), 1.0 / vocab_size)
  log_probs, matched = [], []
  for n, table in enumerate(model.tables, start=1):
    if n == 1:  # the empty context: a single row
      row, found = jnp.int32(0), jnp.bool_(True)
    else:
      row, found = _find_context(table.contexts, context[context.shape[0] - (n - 1):])
    counts = table.counts[row]
    total = jnp.sum(counts)
    discounted = jnp.zeros(vocab_size).at[table.next_ids[row]].add(
        jnp.maximum(counts - discount, 0.0))
    backoff_mass = discount * jnp.sum(counts > 0)
    interpolated = (discounted + backoff_mass * probs) / jnp.maximum(total, 1.0)
    found &= total > 0
    probs = jnp.where(found, interpolated, probs)
    log_probs.append(jnp.log(probs))
    matched.append(found)
  return jnp.stack(log_probs), jnp.stack(matched)


def _check_context(model: NGramModel, context: chex.Array) -> None:
  if not jnp.issubdtype(context.dtype, jnp.integer):
    raise TypeError(f"`context` must be an integer array [..., {model.max_order - 1}], got "
                    f"dtype {context.dtype}.")
  if context.ndim < 1 or context.shape[-1] != model.max_order - 1:
    raise ValueError(f"`context` must have shape [..., {model.max_order - 1}] (the last "
                     f"max_order - 1 tokens, oldest first), got {tuple(context.shape)}.")


@jax.jit
def order_log_probs(model: NGramModel, context: chex.Array) -> tuple[Array, Array]:
  """Smoothed log P_n(x | context) for every order n and token x.

  Args:
    model: an ``NGramModel`` with max order N.
    context: [..., N-1] int token ids, oldest first; ids < 0 mean "no token".

  Returns:
    (log_probs [..., N, V] float32, matched [..., N] bool). Each ``exp(log_probs[..., n, :])``
    sums to 1; ``log_probs[..., -1, :]`` is the full interpolated model.
  """
  _check_context(model, context)
  batch_shape = context.shape[:-1]
  # An explicit row count: with max_order 1 the context is empty and -1 cannot be inferred.
  flat = context.reshape(math.prod(batch_shape), context.shape[-1]).astype(jnp.int32)
  log_probs, matched = jax.vmap(lambda c: _order_log_probs_single(model, c))(flat)
  return (log_probs.reshape(*batch_shape, *log_probs.shape[1:]),
          matched.reshape(*batch_shape, matched.shape[-1]))


def _check_order_weights(order_weights: Sequence[float], num_orders: int | None = None) -> None:
  """Raises unless ``order_weights`` are finite numbers >= 0 with a positive sum (one per order)."""
  if num_orders is not None and len(order_weights) != num_orders:
    raise ValueError(f"`order_weights` must have {num_orders} entries (one per order), "
                     f"got {len(order_weights)}.")
  if not all(isinstance(w, (int, float)) and 0 <= w < math.inf for w in order_weights) or \
      not sum(order_weights) > 0:
    raise ValueError(f"`order_weights` must be finite numbers >= 0 with a positive sum (one "
                     f"per n-gram order), got {tuple(order_weights)}.")


def _check_tokens(name: str, tokens: chex.Array) -> None:
  """Raises unless ``tokens`` is an integer array [B, T]."""
  if not hasattr(tokens, "dtype") or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"`{name}` must be an integer array [B, T] of token ids, got "
                    f"{getattr(tokens, 'dtype', type(tokens).__name__)}.")
  if tokens.ndim != 2:
    raise ValueError(f"`{name}` must have shape [B, T], got {tuple(tokens.shape)}.")


def _combine_orders(log_probs: Array, matched: Array, order_weights: Sequence[float],
                    normalize_weights: bool) -> Array:
  """``sum_n w_n [matched_n] log_probs_n`` [..., V] from [..., N, V] and [..., N]."""
  _check_order_weights(order_weights, matched.shape[-1])
  weights = jnp.where(matched, jnp.asarray(order_weights, jnp.float32), 0.0)
  if normalize_weights:
    weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-30)
  return jnp.einsum("...n,...nv->...v", weights, log_probs)


def style_log_prior(model: NGramModel, context: chex.Array,
                    order_weights: Sequence[float] = (0.2, 0.3, 0.5), *,
                    normalize_weights: bool = True) -> Array:
  """``sum_{n matching} w_n log P_n(x | context)`` [..., V] (weights renormalized if asked)."""
  log_probs, matched = order_log_probs(model, context)
  return _combine_orders(log_probs, matched, order_weights, normalize_weights)


def inject_style(logits: chex.Array, model: NGramModel, context: chex.Array, *,
                 strength: float | Array,
                 order_weights: Sequence[float] = (0.2, 0.3, 0.5),
                 normalize_weights: bool = True) -> Array:
  """Logit-space style injection ``logits + lambda * sum_n w_n log P_n(x | ctx)``.

  Args:
    logits: [..., V] LM next-token logits (any float dtype).
    model: the style ``NGramModel``.
    context: [..., N-1] last token ids, oldest first (ids < 0: none).
    strength: lambda, a finite number >= 0 (the paper sweeps [0, 1]; values above 1 weight
      the prior more than the paper does, see docs/ngram.md); 0 returns the logits unchanged.
      Eager: a negative or NaN lambda raises; under jit it gives NaN logits.
    order_weights: w_1..w_N.

  Returns:
    float32 [..., V] steered logits.
  """
  numerics.check_logits("logits", logits)
  if logits.shape[-1] != model.vocab_size:
    raise ValueError(f"`logits` must have shape [..., {model.vocab_size}] (the n-gram "
                     f"vocabulary), got {tuple(logits.shape)}.")
  ok = _check_strength(strength)
  prior = style_log_prior(model, context, order_weights, normalize_weights=normalize_weights)
  return numerics.nan_unless(numerics.upcast(logits) + strength * prior, ok)


def _check_strength(strength) -> Array:
  return numerics.check_values("strength", jnp.isfinite(strength) & (strength >= 0),
                               "a finite number >= 0 (lambda; the paper sweeps [0, 1])",
                               strength)


def shifted_contexts(model: NGramModel, tokens: chex.Array) -> Array:
  """Contexts [B, T, N-1] of each position of ``tokens`` [B, T] (left-padded with -1)."""
  _check_tokens("tokens", tokens)
  width = model.max_order - 1
  padded = jnp.pad(tokens.astype(jnp.int32), ((0, 0), (width, 0)), constant_values=-1)
  return jnp.stack([padded[:, i:i + tokens.shape[1]] for i in range(width)], axis=-1)


def perplexity(token_log_probs: chex.Array, where: chex.Array | None = None) -> Array:
  """``exp(-mean log p)`` over the masked token log-probabilities."""
  return jnp.exp(-numerics.masked_mean(token_log_probs, where))


def style_perplexity(model: NGramModel, tokens: chex.Array,
                     where: chex.Array | None = None) -> Array:
  """``exp(-mean_t log P_N(x_t | x_{t-N+1:t}))`` under the full interpolated model.

  Args:
    tokens: [B, T] token ids; position t is scored given the tokens before it in the row.
      Ids < 0 (e.g. left padding) are "no token" in contexts and must be masked out.
    where: optional [B, T] mask of the positions to score.
  """
  _check_tokens("tokens", tokens)
  numerics.check_mask("where", where, tokens.shape)
  log_probs, _ = order_log_probs(model, shifted_contexts(model, tokens))
  targets = jnp.maximum(tokens, 0)[..., None]
  return perplexity(jnp.take_along_axis(log_probs[..., -1, :], targets, axis=-1)[..., 0], where)


def base_perplexity(lm_logits: chex.Array, targets: chex.Array,
                    where: chex.Array | None = None) -> Array:
  """``exp(-mean_t log softmax(lm_logits_t)[targets_t])``: perplexity under the LM.

  Args:
    lm_logits: [B, T, V] LM logits predicting ``targets`` (already shifted).
    targets: [B, T] token ids.
    where: optional [B, T] mask.
  """
  numerics.check_logits("lm_logits", lm_logits, min_rank=2)
  if not hasattr(targets, "dtype") or not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f"`targets` must be an integer array [B, T], got "
                    f"{getattr(targets, 'dtype', type(targets).__name__)}.")
  if tuple(targets.shape) != tuple(lm_logits.shape[:-1]):
    raise ValueError(f"`targets` must have shape {tuple(lm_logits.shape[:-1])} (`lm_logits` "
                     f"without its vocabulary axis), got {tuple(targets.shape)}.")
  numerics.check_mask("where", where, targets.shape)
  vocab = lm_logits.shape[-1]
  in_vocab = numerics.check_values("targets", (targets >= 0) & (targets < vocab),
                                   f"token ids in [0, {vocab})")
  log_probs = numerics.log_softmax(lm_logits)
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return perplexity(numerics.nan_unless(picked, in_vocab), where)


def steering_js(logits: chex.Array, steered_logits: chex.Array,
                where: chex.Array | None = None, *, reduce: bool = True) -> Array:
  """JS(softmax(original), softmax(steered)) in nats: masked mean, or per row [...]."""
  numerics.check_same_shape(("logits", "steered_logits"), logits, steered_logits)
  js = numerics.js_divergence(jnp.exp(numerics.log_softmax(logits)),
                              jnp.exp(numerics.log_softmax(steered_logits)))
  return numerics.masked_mean(js, where) if reduce else js


def _ngrams(tokens: Array, where: Array | None, n: int) -> tuple[Array, Array]:
  """The n-grams ``[B, K, n]`` of each row and whether each lies inside the mask ``[B, K]``."""
  k = tokens.shape[1] - n + 1
  grams = jnp.stack([tokens[:, i:i + k] for i in range(n)], axis=-1)
  if where is None:
    return grams, jnp.ones(grams.shape[:2], bool)
  where = jnp.broadcast_to(jnp.asarray(where, bool), tokens.shape)
  return grams, jnp.all(jnp.stack([where[:, i:i + k] for i in range(n)], axis=-1), axis=-1)


def token_overlap(tokens: chex.Array, reference_tokens: chex.Array,
                  where: chex.Array | None = None, reference_where: chex.Array | None = None,
                  *, n: int = 2) -> Array:
  """Clipped n-gram overlap of ``tokens`` with ``reference_tokens`` (BLEU's modified n-gram
  precision, Papineni et al. 2002), pooled over the batch.

  ``sum_rows sum_g min(c_tokens(g), c_reference(g)) / sum_rows sum_g c_tokens(g)`` over the
  n-grams g of each row lying inside its mask (``where`` for ``tokens``, ``reference_where``
  for the reference; default all True). Unlike a position-by-position match, one inserted
  or deleted token changes at most ``n`` n-grams instead of every later position.
  1 for identical rows, 0 when no n-gram is shared; 0 when no row has an n-gram.

  Args:
    tokens, reference_tokens: int ``[B, T]`` and ``[B, T']`` (rows compared pairwise).
    where, reference_where: optional bool ``[B, T]`` / ``[B, T']`` masks (e.g. lengths).
    n: n-gram order >= 1 (1: bag-of-tokens overlap).
  """
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"`n` must be an int >= 1, got {n!r}.")
  for name, x in (("tokens", tokens), ("reference_tokens", reference_tokens)):
    if jnp.ndim(x) != 2 or not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
      raise ValueError(f"`{name}` must be an int array [B, T], got {jnp.shape(x)}.")
  if reference_tokens.shape[0] != tokens.shape[0]:
    raise ValueError(f"`reference_tokens` must have the batch size of `tokens` "
                     f"({tokens.shape[0]}), got {reference_tokens.shape[0]}.")
  numerics.check_mask("where", where, tokens.shape)
  numerics.check_mask("reference_where", reference_where, reference_tokens.shape)
  if min(tokens.shape[1], reference_tokens.shape[1]) < n:
    return jnp.float32(0.0)
  grams, valid = _ngrams(jnp.asarray(tokens), where, n)
  ref_grams, ref_valid = _ngrams(jnp.asarray(reference_tokens), reference_where, n)
  same = lambda a, b: jnp.all(a[:, :, None] == b[:, None], axis=-1)  # [B, K, K']
  count_self = jnp.sum(same(grams, grams) & valid[:, None, :], axis=-1)  # c_tokens(g_i)
  count_ref = jnp.sum(same(grams, ref_grams) & ref_valid[:, None, :], axis=-1)
  # Each occurrence of g carries min(c_tok, c_ref) / c_tok: the sum over occurrences is clipped.
  share = jnp.minimum(count_self, count_ref) / jnp.maximum(count_self, 1)
  matches = jnp.sum(jnp.where(valid, share, 0.0))
  return matches / jnp.maximum(jnp.sum(valid), 1)


def style_vocab_overlap(model: NGramModel, tokens: chex.Array,
                        where: chex.Array | None = None) -> Array:
  """Fraction of masked tokens ([B, T]) that occur in the style corpus.

  Ids outside ``[0, V)`` at unmasked positions raise (eager) or give NaN (under jit).
  """
  _check_tokens("tokens", tokens)
  numerics.check_mask("where", where, tokens.shape)
  vocab = model.vocab_size
  valid = (tokens >= 0) & (tokens < vocab)
  if where is not None:
    valid = valid | ~jnp.broadcast_to(jnp.asarray(where, bool), tokens.shape)
  ok = numerics.check_values("tokens", valid, f"token ids in [0, {vocab}) where unmasked")
  seen = model.unigram_counts[jnp.clip(tokens, 0, vocab - 1)] > 0
  return numerics.nan_unless(numerics.masked_mean(seen, where), jnp.all(ok))


class NGramStyleState(NamedTuple):
  """State of an ``NGramStylePolicy``: the style model, lambda and each row's last N-1 tokens.

  lambda lives here (a traced scalar), not in the policy, so a sweep compiles once.
  """

  model: NGramModel
  strength: Array
  context: Array


@dataclasses.dataclass(frozen=True)
class NGramStylePolicy:
  """Decoding policy for ``logitlab.sampling.generate`` that samples from steered logits.

  Each step: ``steered = inject_style(logits, model, context, strength=state.strength)``, then
  ``sampler`` (a ``sampling.SamplingPolicy``, greedy by default) picks the token from
  ``steered``; the context shifts by one token. Extras per step: ``js`` [B]
  (JS(softmax(logits), softmax(steered))), ``lm_log_prob`` [B] (the token's log-prob under
  the unsteered LM: base perplexity) and ``style_log_prob`` [B] (under the full n-gram
  model: style perplexity).
  """

  order_weights: tuple[float, ...] = (0.2, 0.3, 0.5)
  normalize_weights: bool = True
  sampler: sampling.SamplingPolicy = sampling.GREEDY

  def __post_init__(self):
    _check_order_weights(self.order_weights)

  def __call__(self, logits: Array, state: NGramStyleState, key: chex.PRNGKey):
    log_probs, matched = order_log_probs(state.model, state.context)
    prior = _combine_orders(log_probs, matched, self.order_weights, self.normalize_weights)
    steered = numerics.nan_unless(numerics.upcast(logits) + state.strength * prior,
                                  _check_strength(state.strength))
    tokens = self.sampler(steered, None, key)[0]
    pick = lambda x: jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]
    extras = dict(js=steering_js(logits, steered, None, reduce=False),
                  lm_log_prob=pick(numerics.log_softmax(logits)),
                  style_log_prob=pick(log_probs[:, -1]))
    context = jnp.concatenate([state.context[:, 1:], tokens[:, None]], axis=1)
    return tokens, None, state._replace(context=context), extras


def ngram_style_policy(model: NGramModel, prompt_tokens: chex.Array,
                       prompt_lengths: chex.Array, *, strength: float,
                       **kwargs) -> tuple[NGramStylePolicy, NGramStyleState]:
  """An ``NGramStylePolicy`` and its state for right-padded prompts [B, P] with lengths [B].

  ``kwargs``: ``order_weights``, ``normalize_weights``, ``sampler``.
  """
  width = model.max_order - 1
  prompt_tokens = jnp.asarray(prompt_tokens)
  if prompt_tokens.ndim != 2 or not jnp.issubdtype(prompt_tokens.dtype, jnp.integer):
    raise ValueError(f"`prompt_tokens` must be an int array [B, P], got {prompt_tokens.dtype} "
                     f"{tuple(prompt_tokens.shape)}.")
  if jnp.shape(prompt_lengths) != prompt_tokens.shape[:1]:
    raise ValueError(f"`prompt_lengths` must be [B] = ({prompt_tokens.shape[0]},), got "
                     f"{tuple(jnp.shape(prompt_lengths))}.")
  if numerics.is_traced(prompt_lengths) or numerics.is_traced(strength):
    raise TypeError("`prompt_lengths` and `strength` must be concrete (build the policy state "
                    "outside jit; lambda is then traced state of the decode loop).")
  prompt_lengths = jnp.asarray(prompt_lengths)
  numerics.check_values("prompt_lengths",
                        (prompt_lengths >= 1) & (prompt_lengths <= prompt_tokens.shape[1]),
                        f"in [1, P={prompt_tokens.shape[1]}]", prompt_lengths)
  _check_strength(jnp.float32(strength))
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  offsets = jnp.asarray(prompt_lengths)[:, None] - width + jnp.arange(width)[None]
  context = jnp.where(offsets >= 0, jnp.take_along_axis(prompt_tokens, jnp.maximum(offsets, 0),
                                                        axis=1), -1)
  return NGramStylePolicy(**kwargs), NGramStyleState(
      model=model, strength=jnp.float32(strength), context=context)
