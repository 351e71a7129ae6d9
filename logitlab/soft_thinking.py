"""Soft thinking: decoding with soft (probability-weighted) input embeddings.

Soft Thinking (Zhang et al., arXiv 2505.15778) replaces the sampled token inside the
``<think>`` block by a *soft token*: the next input embedding is the probability-weighted
mixture of the embeddings of the most likely tokens,

  p = softmax(logits / T)                         (T = 0.6)
  p <- top-k (30) -> top-p (0.95) -> min-p filter, renormalize
  (w, ids) = the ``max_topk`` (10) largest entries of p, renormalized
  e = sum_k w_k E[ids_k]                          (E: input embedding matrix [V, D])

and switches back to ordinary discrete decoding after the end-of-think token. "LLMs are
Single-threaded Reasoners: Demystifying the Working Mechanism of Soft Thinking" (Wu et al.,
arXiv 2508.03440) shows with probes that the model mostly follows the top-1 component of a
soft input (vanilla soft thinking ~ greedy decoding) and restores exploration with
randomness:

  Dirichlet resampling:  w ~ Dir(alpha p) on the filtered probabilities (alpha ~ 4), then top-k.
  Gumbel-Softmax trick:  w' = softmax((log w + g) / tau), g ~ Gumbel(0, 1), tau ~ 0.5.

Cold Stop (Soft Thinking): if the entropy of the tempered distribution stays below a
threshold for ``patience`` consecutive steps, the end-of-think token is forced.

The decoding variants are policies for ``logitlab.sampling.generate`` (one decode loop in
the repo): ``policy(logits [B, V], state, key) -> (token_ids [B], inputs_embeds [B, D],
state, extras)``. The probes (``js_top1_probe``, ``logit_lens``) run a
``logitlab.models.decoder_lm.DecoderLM`` on input embeddings.

All functions are pure ``jax.numpy``, jit/vmap-able; inputs may be bf16, math is float32.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics, sampling
from logitlab.models import decoder_lm

Array = jax.Array
SoftMode = Literal["vanilla", "dirichlet", "gumbel"]

# Probabilities at or below this are treated as filtered out before Dirichlet resampling
# (reference code: Randomized-Soft-Thinking zeroes them so Gamma(alpha * 0) is never drawn).
_DIRICHLET_MIN_PROB = 1e-7


def _check_temperature(temperature) -> None:
  if not isinstance(temperature, (int, float)) or not 0 <= temperature < float("inf"):
    raise ValueError(f"`temperature` must be a finite number >= 0 (0 = greedy), got "
                     f"{temperature!r}.")


def _check_max_topk(max_topk) -> None:
  if not isinstance(max_topk, int) or max_topk < 1:
    raise ValueError(f"`max_topk` must be an int >= 1 (components of a soft token), got "
                     f"{max_topk!r}.")


def _check_weights_ids(weights: chex.Array, ids: chex.Array) -> None:
  numerics.check_logits("weights", weights)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"`ids` must be an integer array [..., k], got dtype {ids.dtype}.")
  numerics.check_same_shape(("weights", "ids"), weights, ids)


def filtered_top_k(
    logits: chex.Array,
    *,
    temperature: float = 0.6,
    top_k: int = 30,
    top_p: float = 0.95,
    min_p: float = 0.0,
) -> tuple[Array, Array]:
  """The ``top_k`` candidates of ``softmax(filter(logits / T))``, sorted and renormalized.

  The filter is ``logitlab.sampling.filter_logits`` (top-k -> top-p -> min-p, the order
  the Soft Thinking reference uses, arXiv 2505.15778); entries it removes get probability 0.

  Args:
    logits: [..., V] float logits (any float dtype).
    temperature: softmax temperature T >= 0; T = 0 puts all the mass on the argmax (greedy).
    top_k: number of candidates (clipped to V).
    top_p: nucleus mass in (0, 1].
    min_p: relative threshold in [0, 1].

  Returns:
    (probs [..., k], ids [..., k]) with k = min(top_k, V): float32 probabilities sorted in
    descending order summing to 1 (0 where filtered) and int32 token ids.
  """
  numerics.check_logits("logits", logits)
  _check_temperature(temperature)
  k = min(top_k, logits.shape[-1]) if isinstance(top_k, int) and top_k >= 1 else top_k
  if temperature == 0:  # greedy: all the mass on the argmax (transformers / vLLM convention)
    ids = jax.lax.top_k(numerics.upcast(logits), k)[1]
    return jax.nn.one_hot(jnp.zeros(ids.shape[:-1], jnp.int32), k), ids.astype(jnp.int32)
  filtered = sampling.filter_logits(numerics.upcast(logits) / temperature, top_k=top_k,
                                    top_p=top_p, min_p=min_p)
  probs, ids = jax.lax.top_k(jnp.exp(numerics.log_softmax(filtered)),
                             min(top_k, logits.shape[-1]))
  return probs, ids.astype(jnp.int32)


def truncate_sorted(probs: chex.Array, ids: chex.Array, max_topk: int) -> tuple[Array, Array]:
  """Keeps the ``max_topk`` largest of (probs, ids), sorted descending and renormalized.

  Args:
    probs: [..., n] non-negative weights (not necessarily sorted).
    ids: [..., n] integer token ids paired with ``probs``.
    max_topk: number of components kept (clipped to n).

  Returns:
    (weights [..., m], ids [..., m]) with m = min(max_topk, n), weights summing to 1.
  """
  _check_weights_ids(probs, ids)
  _check_max_topk(max_topk)
  weights, order = jax.lax.top_k(numerics.upcast(probs), min(max_topk, probs.shape[-1]))
  ids = jnp.take_along_axis(ids, order, axis=-1)
  return weights / jnp.sum(weights, axis=-1, keepdims=True), ids


def soft_token_weights(
    logits: chex.Array,
    *,
    temperature: float = 0.6,
    top_k: int = 30,
    top_p: float = 0.95,
    min_p: float = 0.0,
    max_topk: int = 10,
) -> tuple[Array, Array]:
  """Vanilla soft-token weights (Soft Thinking, arXiv 2505.15778).

  ``w = renorm(top_{max_topk}(filter(softmax(logits / T))))`` with the filter of
  ``filtered_top_k``.

  Args:
    logits: [..., V] next-token logits.

  Returns:
    (weights [..., m], ids [..., m]), m = min(max_topk, top_k, V): float32 weights sorted in
    descending order summing to 1 (zeros for filtered slots) and int32 token ids. The
    visible (discrete) token is ``ids[..., 0]``.
  """
  probs, ids = filtered_top_k(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                              min_p=min_p)
  return truncate_sorted(probs, ids, max_topk)


def dirichlet_resample(key: chex.PRNGKey, probs: chex.Array, *, alpha: float = 4.0,
                       min_prob: float = _DIRICHLET_MIN_PROB) -> Array:
  """One draw ``w ~ Dirichlet(alpha * p)`` over the support ``p > min_prob``.

  Randomized soft thinking (arXiv 2508.03440): concentration ``alpha * p``; entries with
  ``p <= min_prob`` stay exactly 0. ``E[w] = p`` (renormalized on the support) and
  ``Var[w_i] = p_i (1 - p_i) / (alpha + 1)``, so small ``alpha`` means more randomness.
  The Gamma draws are taken in log space (``jax.random.loggamma``) so tiny concentrations
  do not underflow to an all-zero row.

  Args:
    key: PRNG key.
    probs: [..., n] probabilities (rows with at least one entry > min_prob).
    alpha: total concentration > 0.

  Returns:
    float32 [..., n] weights summing to 1, in the original (unsorted) order.
  """
  numerics.check_logits("probs", probs)
  if alpha <= 0:
    raise ValueError(f"`alpha` must be > 0, got {alpha}.")
  probs = numerics.upcast(probs)
  support = probs > min_prob
  concentration = jnp.where(support, alpha * probs, 1.0)
  log_gamma = jax.random.loggamma(key, concentration, dtype=jnp.float32)
  return jax.nn.softmax(jnp.where(support, log_gamma, -jnp.inf), axis=-1)


def gumbel_softmax_weights(key: chex.PRNGKey, weights: chex.Array, *, tau: float = 0.5) -> Array:
  """Gumbel-Softmax relaxation ``y = softmax((log w + g) / tau)``, ``g ~ Gumbel(0, 1)``.

  Randomized soft thinking (arXiv 2508.03440), one noise sample per step. As tau -> 0 the
  output tends to the one-hot of a sample from ``Categorical(w)``; zero weights stay 0.

  Args:
    key: PRNG key.
    weights: [..., n] non-negative weights (need not be normalized).
    tau: temperature > 0.

  Returns:
    float32 [..., n] weights summing to 1, in the input order (re-sort with
    ``truncate_sorted``).
  """
  numerics.check_logits("weights", weights)
  if tau <= 0:
    raise ValueError(f"`tau` must be > 0, got {tau}.")
  weights = numerics.upcast(weights)
  log_w = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
  gumbel = jax.random.gumbel(key, weights.shape, dtype=jnp.float32)
  return jax.nn.softmax((log_w + gumbel) / tau, axis=-1)


def soft_embedding(weights: chex.Array, ids: chex.Array, embedding_matrix: chex.Array) -> Array:
  """Soft input embedding ``e = sum_k w_k E[ids_k]`` (arXiv 2505.15778, eq. for soft tokens).

  Args:
    weights: [..., k] mixture weights.
    ids: [..., k] integer token ids.
    embedding_matrix: [V, D] input embedding table.

  Returns:
    float32 [..., D]; equals ``E[i]`` exactly when the weights are one-hot on token i.
  """
  _check_weights_ids(weights, ids)
  if embedding_matrix.ndim != 2:
    raise ValueError(
        f"`embedding_matrix` must have shape [V, D], got {tuple(embedding_matrix.shape)}.")
  rows = numerics.upcast(jnp.take(embedding_matrix, ids, axis=0))  # [..., k, D]
  return jnp.einsum("...k,...kd->...d", numerics.upcast(weights), rows)


@dataclasses.dataclass(frozen=True)
class ColdStop:
  """Cold Stop (Soft Thinking, arXiv 2505.15778): force end-of-think after confident steps.

  A counter tracks consecutive steps whose entropy H (nats, of the full tempered
  distribution) is below ``threshold``; any step with H >= threshold resets it. The stop
  fires on the step where the counter reaches ``patience``, i.e. exactly after
  ``patience`` consecutive low-entropy steps. Reference values: threshold 0.01,
  patience 256.
  """

  threshold: float = 0.01
  patience: int = 256
  normalize_entropy: bool = False

  def __post_init__(self):
    if not isinstance(self.patience, int) or self.patience < 1:
      raise ValueError(f"`patience` must be an int >= 1, got {self.patience!r}.")
    if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold < float("inf")):
      raise ValueError(f"`threshold` must be a finite number >= 0, got {self.threshold!r}.")

  def init(self, batch_shape: tuple[int, ...]) -> Array:
    return jnp.zeros(batch_shape, jnp.int32)

  def update(self, count: chex.Array, entropy: chex.Array) -> tuple[Array, Array]:
    """Returns (new count [...], stop [...] bool) for this step's ``entropy`` [...]."""
    count = jnp.where(entropy < self.threshold, count + 1, 0)
    return count, count >= self.patience




class SoftThinkingState(NamedTuple):
  """Decoding state of a ``SoftThinkingPolicy`` (arrays live here so jit traces them).

  Attributes:
    embedding_matrix: [V, D] input embeddings (``model.embedding_matrix()``).
    thinking: [B] bool, True while the row is inside the think block (soft inputs).
    low_entropy_steps: [B] int32 Cold Stop counter.
  """

  embedding_matrix: Array
  thinking: Array
  low_entropy_steps: Array


@dataclasses.dataclass(frozen=True)
class SoftThinkingPolicy:
  """Soft-thinking decoding policy for ``logitlab.sampling.generate`` (hashable, jit-static).

  Inside the think block each step feeds the soft embedding ``sum_k w_k E[ids_k]`` with
  weights from ``soft_token_weights`` (mode "vanilla", arXiv 2505.15778), a Dirichlet
  redraw of the filtered probabilities before truncation to ``max_topk`` (mode
  "dirichlet") or a Gumbel-Softmax perturbation of the vanilla weights (mode "gumbel"),
  both from arXiv 2508.03440; the emitted (visible) token is the heaviest component. When
  that token is ``end_think_id``, or Cold Stop fires (the token is then replaced by
  ``end_think_id``), the row feeds the discrete end-of-think embedding and leaves the think
  block. Outside it the row decodes discretely with ``after_think`` (a
  ``sampling.SamplingPolicy``; greedy by default) and feeds ordinary token embeddings; a
  discrete row that emits ``start_think_id`` (when given) enters the think block, so a
  model that writes its own ``<think>`` gets soft thinking from the next step on.

  ``__call__(logits [B, V], state, key) -> (token_ids [B] int32, inputs_embeds [B, D]
  float32, state, extras)``; extras: ``weights [B, m]`` and ``ids [B, m]`` (the soft token,
  sorted), ``entropy [B]`` (nats, tempered; divided by log V when the Cold Stop normalizes),
  ``soft [B]`` (True where a soft input was fed) and ``random_js [B]`` (see ``soft_token``).
  """

  end_think_id: int
  start_think_id: int | None = None
  mode: SoftMode = "vanilla"
  temperature: float = 0.6
  top_k: int = 30
  top_p: float = 0.95
  min_p: float = 0.0
  max_topk: int = 10
  dirichlet_alpha: float = 4.0
  gumbel_tau: float = 0.5
  cold_stop: ColdStop | None = None
  after_think: sampling.SamplingPolicy = sampling.GREEDY

  def __post_init__(self):
    if self.mode not in ("vanilla", "dirichlet", "gumbel"):
      raise ValueError(f"`mode` must be 'vanilla', 'dirichlet' or 'gumbel', got {self.mode!r}.")
    _check_temperature(self.temperature)
    _check_max_topk(self.max_topk)
    sampling._check_filter_args(self.top_k, self.top_p, self.min_p)
    for name in ("end_think_id", "start_think_id"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(f"`{name}` must be a token id >= 0, got {value!r}.")

  def soft_token(self, logits: Array, key: chex.PRNGKey) -> tuple[Array, Array, Array]:
    """This mode's (weights [B, m], ids [B, m]), sorted descending, and ``random_js [B]``.

    ``random_js`` is the "random JS" probe of Randomized-Soft-Thinking: the JS divergence
    (nats) between this mode's soft token and the vanilla one (the filtered probabilities
    truncated to ``max_topk``), both as distributions over the vocabulary; 0 for "vanilla".
    Deviation: the official code (``sampler.py``, ``calculate_js_divergence(new_probs,
    original_probs)``) passes the randomized *probabilities* where it expects logits and so
    compares ``softmax(new_probs)``; we compare the two weight vectors themselves.
    """
    probs, candidates = filtered_top_k(logits, temperature=self.temperature, top_k=self.top_k,
                                       top_p=self.top_p, min_p=self.min_p)
    vanilla, vanilla_ids = truncate_sorted(probs, candidates, self.max_topk)
    if self.mode == "vanilla":
      return vanilla, vanilla_ids, jnp.zeros(logits.shape[:-1], jnp.float32)
    noisy = probs
    if self.mode == "dirichlet":
      noisy = dirichlet_resample(key, probs, alpha=self.dirichlet_alpha)
    weights, ids = truncate_sorted(noisy, candidates, self.max_topk)
    if self.mode == "gumbel":
      weights, ids = truncate_sorted(gumbel_softmax_weights(key, weights, tau=self.gumbel_tau),
                                     ids, self.max_topk)
    # Both tokens live on the sorted candidates: vanilla on the first m, the noisy one on
    # the candidates its ids match.
    m = vanilla.shape[-1]
    on_candidates = jnp.einsum("...m,...mk->...k", weights,
                               (ids[..., :, None] == candidates[..., None, :]).astype(
                                   jnp.float32))
    vanilla = jnp.pad(vanilla, [(0, 0)] * (vanilla.ndim - 1) + [(0, probs.shape[-1] - m)])
    return weights, ids, numerics.js_divergence(on_candidates, vanilla)

  def __call__(self, logits: Array, state: SoftThinkingState, key: chex.PRNGKey):
    numerics.check_logits("logits", logits, min_rank=2)
    soft_key, discrete_key = jax.random.split(key)
    weights, ids, random_js = self.soft_token(logits, soft_key)
    if self.temperature > 0:
      entropy = numerics.entropy_from_logits(logits, self.temperature)
    else:  # the greedy (T -> 0) distribution is one-hot
      entropy = jnp.zeros(logits.shape[:-1], jnp.float32)
    if self.cold_stop is not None and self.cold_stop.normalize_entropy:
      entropy = entropy / jnp.log(jnp.float32(logits.shape[-1]))
    low_entropy_steps = state.low_entropy_steps
    end_think = ids[:, 0] == self.end_think_id
    if self.cold_stop is not None:
      low_entropy_steps, stop = self.cold_stop.update(low_entropy_steps, entropy)
      end_think |= stop
      # Only steps inside the think block count towards Cold Stop.
      low_entropy_steps = jnp.where(state.thinking & ~end_think, low_entropy_steps, 0)
    soft = state.thinking & ~end_think

    discrete = self.after_think(logits, None, discrete_key)[0]
    token_ids = jnp.where(soft, ids[:, 0],
                          jnp.where(state.thinking, self.end_think_id, discrete))
    # Discrete rows feed E[token]: a one-hot soft token is exactly that embedding.
    one_hot = jax.nn.one_hot(0, weights.shape[-1], dtype=weights.dtype)
    inputs_embeds = soft_embedding(jnp.where(soft[:, None], weights, one_hot),
                                   jnp.where(soft[:, None], ids, token_ids[:, None]),
                                   state.embedding_matrix)
    thinking = soft
    if self.start_think_id is not None:
      thinking |= ~state.thinking & (token_ids == self.start_think_id)
    state = state._replace(thinking=thinking, low_entropy_steps=low_entropy_steps)
    extras = dict(weights=weights, ids=ids, entropy=entropy, soft=soft, random_js=random_js)
    return token_ids.astype(jnp.int32), inputs_embeds, state, extras


def soft_thinking_policy(embedding_matrix: chex.Array, batch_size: int, *, end_think_id: int,
                         mode: SoftMode = "vanilla", thinking: bool = True,
                         **kwargs) -> tuple[SoftThinkingPolicy, SoftThinkingState]:
  """A ``SoftThinkingPolicy`` and its initial state for ``sampling.generate``.

  Args:
    embedding_matrix: [V, D] input embeddings (``model.embedding_matrix()``).
    batch_size: B.
    end_think_id: id of the end-of-think token.
    mode: "vanilla" | "dirichlet" | "gumbel".
    thinking: whether rows start inside the think block (True: the prompt ends with
      ``<think>``; False: pass ``start_think_id`` so the model's own ``<think>`` opens it).
    **kwargs: the other ``SoftThinkingPolicy`` fields (start_think_id, temperature, top_k,
      top_p, min_p, max_topk, dirichlet_alpha, gumbel_tau, cold_stop, after_think).

  Returns:
    (policy, state): pass as ``generate(..., policy=policy, policy_state=state)``.
  """
  if embedding_matrix.ndim != 2:
    raise ValueError(
        f"`embedding_matrix` must have shape [V, D], got {tuple(embedding_matrix.shape)}.")
  policy = SoftThinkingPolicy(end_think_id=end_think_id, mode=mode, **kwargs)
  vocab = embedding_matrix.shape[0]
  for name in ("end_think_id", "start_think_id"):
    value = getattr(policy, name)
    if value is not None and value >= vocab:
      raise ValueError(f"`{name}` must be a token id in [0, {vocab}) (the rows of "
                       f"`embedding_matrix`), got {value}.")
  state = SoftThinkingState(embedding_matrix=jnp.asarray(embedding_matrix),
                            thinking=jnp.full((batch_size,), thinking),
                            low_entropy_steps=jnp.zeros((batch_size,), jnp.int32))
  return policy, state


def _candidate_log_probs(model: decoder_lm.DecoderLM, inputs_embeds: chex.Array,
                         position: chex.Array, weights: chex.Array, ids: chex.Array, *,
                         attention_mask: chex.Array | None, temperature: float,
                         all_layers: bool) -> Array:
  """Next-token log-probs at ``position`` for the soft, top-1 and top-2 inputs there.

  Returns [3, B, V], or [3, L+1, B, V] (logit lens of every residual stream) when
  ``all_layers``; index 0/1/2 = soft / top-1 / top-2 input at ``position``.
  """
  _check_weights_ids(weights, ids)
  numerics.check_positive("temperature", temperature)
  if ids.shape[-1] < 2:
    raise ValueError(f"`ids` must hold >= 2 components [B, k >= 2], got {tuple(ids.shape)}.")
  batch, length, _ = inputs_embeds.shape
  if jnp.shape(position) != (batch,):
    raise ValueError(f"`position` must be [B] = ({batch},), got {jnp.shape(position)}.")
  table = model.embedding_matrix()
  candidates = jnp.stack([soft_embedding(weights, ids, table),
                          numerics.upcast(table[ids[:, 0]]),
                          numerics.upcast(table[ids[:, 1]])])  # [3, B, D]
  at_position = (jnp.arange(length)[None, :] == jnp.asarray(position)[:, None])[None, ..., None]
  embeds = jnp.where(at_position, candidates[:, :, None, :], numerics.upcast(inputs_embeds)[None])
  mask = None if attention_mask is None else jnp.tile(attention_mask, (3, 1))
  out = model(inputs_embeds=embeds.reshape(3 * batch, length, -1), attention_mask=mask,
              return_hidden_states=all_layers)
  rows = jnp.arange(3 * batch)
  positions = jnp.tile(jnp.asarray(position), 3)
  if all_layers:
    logits = jnp.stack([model.unembed(h[rows, positions]) for h in out.hidden_states])
    return numerics.log_softmax(logits, temperature).reshape(len(logits), 3, batch, -1).swapaxes(
        0, 1)
  return numerics.log_softmax(out.logits[rows, positions], temperature).reshape(3, batch, -1)


def _pairwise_js(log_probs: Array) -> dict[str, Array]:
  soft, top1, top2 = jnp.exp(log_probs)
  prediction = jnp.argmax(log_probs, axis=-1)
  return dict(js_soft_top1=numerics.js_divergence(soft, top1),
              js_soft_top2=numerics.js_divergence(soft, top2),
              js_top1_top2=numerics.js_divergence(top1, top2),
              agree_top1=prediction[0] == prediction[1],
              agree_top2=prediction[0] == prediction[2])


def js_top1_probe(model: decoder_lm.DecoderLM, inputs_embeds: chex.Array, position: chex.Array,
                  weights: chex.Array, ids: chex.Array, *,
                  attention_mask: chex.Array | None = None,
                  temperature: float = 1.0) -> dict[str, Array]:
  """JS probes of reliance on the top component of a soft input (arXiv 2508.03440).

  At ``position`` of the input sequence, feeds (a) the soft token ``sum_k w_k E[ids_k]``,
  (b) only its top-1 token ``E[ids_0]``, (c) only its top-2 token ``E[ids_1]``, and
  compares the model's next-token distributions ``softmax(logits / T)`` there. A
  single-threaded reasoner has ``JS(soft, top-1) << JS(top-1, top-2)``.

  Args:
    model: a ``DecoderLM``.
    inputs_embeds: [B, T, D] input embeddings of the sequence (entries after ``position``
      do not matter: attention is causal).
    position: [B] int index of the soft token in each row.
    weights: [B, k] soft weights (k >= 2), sorted descending; ids: [B, k] token ids.
    attention_mask: optional [B, T] bool (False on padding).
    temperature: temperature of the compared distributions.

  Returns:
    dict of [B] float32 JS divergences (nats): ``js_soft_top1``, ``js_soft_top2``,
    ``js_top1_top2`` (all 0 when the compared inputs are identical), and [B] bool
    ``agree_top1`` / ``agree_top2``: the argmax next token given the soft input equals the
    one given only the top-1 / top-2 token.
  """
  return _pairwise_js(_candidate_log_probs(
      model, inputs_embeds, position, weights, ids, attention_mask=attention_mask,
      temperature=temperature, all_layers=False))


def logit_lens(model: decoder_lm.DecoderLM, inputs_embeds: chex.Array, position: chex.Array,
               ids: chex.Array, *, top1_weight: float = 0.6,
               attention_mask: chex.Array | None = None,
               temperature: float = 1.0) -> dict[str, Array]:
  """Logit lens over layers for a two-token soft input (arXiv 2508.03440).

  Feeds ``top1_weight E[a] + (1 - top1_weight) E[b]`` (0.6 / 0.4 in the paper), ``E[a]``
  alone and ``E[b]`` alone at ``position`` and decodes every residual stream h_l
  (l = 0 input embeddings, ..., L) with the final norm and unembedding,
  ``softmax(unembed(h_l) / T)``. Returns per-layer JS divergences: a single-threaded
  reasoner's soft-input lens converges to the top-1 lens (``js_soft_top1`` -> 0) while
  ``js_soft_top2`` stays near ``js_top1_top2``.

  Args:
    ids: [B, 2] int (a, b) token ids.

  Returns:
    dict of [L+1, B]: float32 ``js_soft_top1``, ``js_soft_top2``, ``js_top1_top2`` and bool
    ``agree_top1``, ``agree_top2`` (as in ``js_top1_probe``, per layer).
  """
  if not 0.0 <= top1_weight <= 1.0:
    raise ValueError(f"`top1_weight` must be in [0, 1], got {top1_weight}.")
  weights = jnp.broadcast_to(jnp.array([top1_weight, 1.0 - top1_weight]), ids.shape)
  return _pairwise_js(_candidate_log_probs(
      model, inputs_embeds, position, weights, ids, attention_mask=attention_mask,
      temperature=temperature, all_layers=True))
