"""SofT-GRPO: policy optimization of soft-thinking rollouts (arXiv 2511.06411).

Rollout (reference: zz1358m/SofT-GRPO-master). Inside the think block each step takes

  w, ids = top-p(0.95)(top-k(5)(softmax(logits / T)))   renormalized, T = 1
  g'     = log(w + 1e-6) + clip(g, -1.5, 3),             g ~ Gumbel(0, 1)
  y      = softmax(g' / tau),                            tau = 0.1

feeds the soft input ``sum_i y_i E[ids_i]`` and stores ``ids`` and ``g'``. The visible token
is the heaviest component ``ids[argmax g']``. After the end-of-think token decoding is
discrete, sampled from the top-k 5 / top-p 0.95 renormalized distribution at T = 1 (the
reference's ``after_thinking_top_k`` / ``after_thinking_top_p`` / ``after_thinking_temperature``,
SofT-GRPO-deepscaler-8k-*.sh), stored as a one-hot position.

Training log-prob of a soft position (the Gumbel(lq, 1) log-density of the stored g',
reparameterized through the model's top-k log-probs):

  q  = softmax(logits / T)[ids],  lq = log(q / sum q + 1e-6)
  z  = clip(g' - lq, -1.5, 3),    ll = -z - exp(-z)
  log pi = sum_i ll_i [lq_i > -3] / sum_i [lq_i > -3]

``g'`` is a constant (``stop_gradient``): the gradient flows only through ``lq``. The
re-created input embeddings are detached by default, as the reference
(verl-0.4.x/verl/workers/actor/dp_actor.py:210, ``inputs_embeds=topk_embs.detach()``), so the
embedding table learns only through the output side; ``detach=False`` is the option. Discrete
positions use ``log_softmax(logits / T)[token]``. Both plug into the GRPO objective of
``logitlab.rl.grpo`` unchanged (PPO clip, dual clip 3, k3 KL 0.001, token mean, G = 8).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from logitlab import distill_chunked
from logitlab import numerics
from logitlab import sampling
from logitlab import soft_thinking
from logitlab.rl import logprobs as rl_logprobs

Array = jax.Array

_LOG_EPS = 1e-6  # reference: log(w + 1e-6) and log(q / sum q + 1e-6)
_Z_MIN, _Z_MAX = -1.5, 3.0  # Gumbel noise / residual clamp of the reference
_LQ_MIN = -3.0  # components with lq <= -3 are excluded from the mean


def soft_token_logprob(logits: chex.Array, ids: chex.Array, perturbed: chex.Array, *,
                       temperature: float = 1.0) -> Array:
  """Gumbel log-density of stored soft tokens (module docstring): ``[...]`` float32.

  Args:
    logits: ``[..., V]`` next-token logits at the soft positions.
    ids: int ``[..., K]`` stored component ids.
    perturbed: ``[..., K]`` stored perturbed log-weights g' (no gradient flows into them).
  """
  numerics.check_logits("logits", logits)
  numerics.check_same_shape(("ids", "perturbed"), ids, perturbed)
  if ids.shape[:-1] != logits.shape[:-1]:
    raise ValueError(f"`ids` must be [..., K] with [...] = {logits.shape[:-1]}, got "
                     f"{ids.shape}.")
  q = jnp.take_along_axis(jnp.exp(numerics.log_softmax(logits, temperature)), ids, axis=-1)
  lq = jnp.log(q / jnp.sum(q, axis=-1, keepdims=True) + _LOG_EPS)
  z = jnp.clip(jax.lax.stop_gradient(numerics.upcast(perturbed)) - lq, _Z_MIN, _Z_MAX)
  return numerics.masked_mean(-z - jnp.exp(-z), lq > _LQ_MIN, axis=-1)


def mixed_logprob(logits: chex.Array, tokens: chex.Array, ids: chex.Array,
                  perturbed: chex.Array, soft: chex.Array, *, temperature: float = 1.0) -> Array:
  """Per-position log-prob ``[...]``: soft-token density where ``soft``, else the ordinary
  log-prob of ``tokens`` under ``softmax(logits / T)``."""
  discrete = jnp.take_along_axis(numerics.log_softmax(logits, temperature),
                                 tokens[..., None], axis=-1)[..., 0]
  return jnp.where(soft, soft_token_logprob(logits, ids, perturbed, temperature=temperature),
                   discrete)


def mixed_logprobs_from_hidden(hidden: chex.Array, tokens: chex.Array, ids: chex.Array,
                               perturbed: chex.Array, soft: chex.Array,
                               logits_fn: Callable[[Array], Array], *,
                               temperature: float = 1.0, chunk_size: int = 128,
                               return_entropy: bool = False):
  """``mixed_logprob`` of ``[B, T]`` positions from ``hidden [B, T, D]``, chunked over T
  (``distill_chunked.map_token_chunks``) so ``[B, T, V]`` logits never exist at once.
  ``return_entropy``: also the entropy ``[B, T]`` of ``softmax(logits / T)`` (a tuple)."""
  def per_chunk(h, tok, i, g, s):
    logits = logits_fn(h)
    logp = mixed_logprob(logits, tok, i, g, s, temperature=temperature)
    if not return_entropy:
      return logp
    return logp, rl_logprobs.entropy(logits, temperature)

  return distill_chunked.map_token_chunks(per_chunk, (hidden, tokens, ids, perturbed, soft),
                                          chunk_size)


class SoftGRPOState(NamedTuple):
  """Rollout state: ``thinking [B]`` bool and the input ``embedding_matrix [V, D]``."""
  thinking: Array
  embedding_matrix: Array


@dataclasses.dataclass(frozen=True)
class SoftGRPOPolicy:
  """SofT-GRPO rollout policy for ``logitlab.sampling.generate`` (hashable settings).

  ``policy(logits [B, V], SoftGRPOState, key) -> (token_ids, inputs_embeds [B, D], state,
  extras)`` with extras ``ids [B, K]``, ``perturbed [B, K]`` (g') and ``soft [B]``. At
  discrete positions ``ids[:, 0]`` is the emitted token (one-hot storage).
  """
  end_think_id: int
  temperature: float = 1.0
  top_k: int = 5
  top_p: float = 0.95
  tau: float = 0.1
  after_think_temperature: float = 1.0
  after_think_top_k: int | None = 5
  after_think_top_p: float | None = 0.95

  def __post_init__(self):
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
      raise ValueError(f"`top_k` must be a positive int (the K soft candidates), got "
                       f"{self.top_k!r}.")
    numerics.check_positive("tau", self.tau)
    # Temperature and filter settings are checked by the sampling policies they mirror.
    sampling.SamplingPolicy(temperature=self.temperature, top_p=self.top_p)
    sampling.SamplingPolicy(temperature=self.after_think_temperature,
                            top_k=self.after_think_top_k, top_p=self.after_think_top_p)

  def __call__(self, logits: Array, state: SoftGRPOState, key: chex.PRNGKey):
    numerics.check_logits("logits", logits, min_rank=2)
    noise_key, discrete_key = jax.random.split(key)
    probs, ids = soft_thinking.filtered_top_k(logits, temperature=self.temperature,
                                              top_k=self.top_k, top_p=self.top_p)
    gumbel = jnp.clip(jax.random.gumbel(noise_key, probs.shape), _Z_MIN, _Z_MAX)
    perturbed = jnp.log(probs + _LOG_EPS) + gumbel
    # Sort by g' so the visible token (heaviest soft weight) is ids[:, 0].
    perturbed, order = jax.lax.top_k(perturbed, perturbed.shape[-1])
    ids = jnp.take_along_axis(ids, order, axis=-1)
    soft = state.thinking & (ids[:, 0] != self.end_think_id)
    discrete = sampling.sample_token(logits, discrete_key, temperature=self.after_think_temperature,
                                     top_k=self.after_think_top_k, top_p=self.after_think_top_p)
    token_ids = jnp.where(state.thinking, ids[:, 0], discrete).astype(jnp.int32)
    weights = jax.nn.softmax(perturbed / self.tau, axis=-1)
    one_hot = jax.nn.one_hot(0, ids.shape[-1], dtype=weights.dtype)
    ids = jnp.where(soft[:, None], ids, token_ids[:, None])
    weights = jnp.where(soft[:, None], weights, one_hot)
    embeds = soft_thinking.soft_embedding(weights, ids, state.embedding_matrix)
    extras = dict(ids=ids, perturbed=perturbed, soft=soft)
    return token_ids, embeds, state._replace(thinking=soft), extras


def soft_input_embeddings(embedding_matrix: chex.Array, tokens: chex.Array, ids: chex.Array,
                          perturbed: chex.Array, soft: chex.Array, *, tau: float = 0.1,
                          detach: bool = True) -> Array:
  """Re-creates the rollout's inputs ``[B, T, D]``: ``sum_i softmax(g'/tau)_i E[ids_i]`` at
  soft positions, ``E[tokens]`` elsewhere. The gradient never reaches ``g'``; it reaches
  ``E`` only with ``detach=False`` (the reference detaches, module docstring).
  Under jit, a traced ``tau`` <= 0 gives NaN."""
  numerics.check_positive("tau", tau)
  if detach:
    embedding_matrix = jax.lax.stop_gradient(embedding_matrix)
  weights = jax.nn.softmax(jax.lax.stop_gradient(numerics.upcast(perturbed)) / tau, axis=-1)
  mixed = soft_thinking.soft_embedding(weights, ids, embedding_matrix)
  hard = numerics.upcast(jnp.take(embedding_matrix, tokens, axis=0))
  return numerics.nan_unless_positive(jnp.where(soft[..., None], mixed, hard), tau)
