"""GRPO / SofT-GRPO trainer: group rollouts, rewards, advantages, clipped updates.

One step (DeepSeekMath arXiv 2402.03300; SofT-GRPO arXiv 2511.06411):
  1. every prompt is repeated ``group_size`` times and decoded with
     ``logitlab.sampling.generate``: discrete sampling at T, or the SofT-GRPO soft-thinking
     policy (``soft_grpo.SoftGRPOPolicy``, which stores ids and g' per position);
  2. rewards ``fn(prompts, completions, **kw) -> [B]``; ``group_advantages``;
  3. old / reference log-probs of the rollout under the current / frozen reference model;
  4. ``num_updates`` steps on ``grpo_loss`` (PPO clip, dual clip, k3 KL, aggregation).
Log-probs are computed chunked from hidden states (``logitlab.rl.logprobs``); soft
positions are re-fed as ``sum_i softmax(g'/tau)_i E[ids_i]`` and scored with the Gumbel
log-density (``soft_grpo.mixed_logprobs_from_hidden``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from logitlab import sampling
from logitlab.rl import grpo
from logitlab.rl import logprobs as rl_logprobs
from logitlab.rl import soft_grpo

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Trainer settings (defaults: the SofT-GRPO reference where it has one)."""
  group_size: int = 8
  max_new_tokens: int = 56
  temperature: float = 1.0
  soft: bool = False  # SofT-GRPO soft-thinking rollouts instead of discrete GRPO
  soft_top_k: int = 5
  soft_top_p: float = 0.95
  soft_tau: float = 0.1
  advantage_scale: grpo.AdvantageScale = "group"
  loss: grpo.GRPOLossConfig = grpo.GRPOLossConfig()
  num_updates: int = 1  # optimizer steps per rollout batch
  learning_rate: float = 1e-5
  chunk_size: int = 64


class Rollout(NamedTuple):
  """A decoded batch as one left-padded sequence per rollout ``[B, L]`` (L = P + N).

  ``ids``/``perturbed`` ``[B, L, K]`` and ``soft [B, L]`` are the SofT-GRPO records (soft
  False everywhere for discrete rollouts).
  """
  tokens: Array
  attention_mask: Array
  completion_mask: Array
  ids: Array
  perturbed: Array
  soft: Array


def rollout(model, prompt_tokens: Array, prompt_lengths: Array, key: Array, config: RLConfig, *,
            end_think_id: int, stop_tokens: tuple[int, ...], pad_id: int = 0
            ) -> tuple[Rollout, np.ndarray, np.ndarray]:
  """Decodes ``group_size`` completions per prompt (right-padded ``[P_n, P]`` prompts).

  Returns the ``Rollout`` and the completion tokens ``[B, N]`` and lengths ``[B]`` (numpy),
  rows group-major.
  """
  prompts = jnp.repeat(jnp.asarray(prompt_tokens), config.group_size, axis=0)
  lengths = jnp.repeat(jnp.asarray(prompt_lengths), config.group_size, axis=0)
  prompt_mask = jnp.arange(prompts.shape[1])[None] < lengths[:, None]
  prompts, prompt_mask = sampling.left_align(prompts, prompt_mask)
  batch = prompts.shape[0]
  if config.soft:
    policy = soft_grpo.SoftGRPOPolicy(
        end_think_id=end_think_id, temperature=config.temperature, top_k=config.soft_top_k,
        top_p=config.soft_top_p, tau=config.soft_tau,
        after_think_temperature=config.temperature)
    state = soft_grpo.SoftGRPOState(thinking=jnp.ones((batch,), bool),
                                    embedding_matrix=model.embedding_matrix())
  else:
    policy, state = sampling.SamplingPolicy(temperature=config.temperature), None
  out = sampling.generate(model, prompts, prompt_mask=prompt_mask,
                          max_new_tokens=config.max_new_tokens, key=key, policy=policy,
                          policy_state=state, stop_tokens=stop_tokens, pad_id=pad_id)
  completion_mask = jnp.arange(config.max_new_tokens)[None] < out.lengths[:, None]
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  if config.soft:
    ids, perturbed = out.extras["ids"], out.extras["perturbed"]
    soft = out.extras["soft"] & completion_mask
  else:
    ids, perturbed = out.tokens[..., None], jnp.zeros(out.tokens.shape + (1,), jnp.float32)
    soft = jnp.zeros_like(completion_mask)
  pad = lambda x: jnp.concatenate([jnp.zeros((batch, prompts.shape[1]) + x.shape[2:], x.dtype),
                                   x], axis=1)
  result = Rollout(tokens=tokens, attention_mask=jnp.concatenate([prompt_mask, completion_mask], 1),
                   completion_mask=pad(completion_mask), ids=pad(ids),
                   perturbed=pad(perturbed), soft=pad(soft))
  return result, np.asarray(out.tokens), np.asarray(out.lengths)


def policy_logprobs(model, batch: Rollout, config: RLConfig) -> Array:
  """Per-position policy log-probs ``[B, L]`` of a rollout (index t scores token t)."""
  if not config.soft:
    return rl_logprobs.sequence_logprobs(model, batch.tokens, batch.attention_mask,
                                         temperature=config.temperature,
                                         chunk_size=config.chunk_size)
  embeds = soft_grpo.soft_input_embeddings(model.embedding_matrix(), batch.tokens, batch.ids,
                                           batch.perturbed, batch.soft, tau=config.soft_tau)
  hidden = rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch.tokens, batch.attention_mask, embeds))
  return soft_grpo.mixed_logprobs_from_hidden(
      hidden, batch.tokens, batch.ids, batch.perturbed, batch.soft, model.unembed,
      temperature=config.temperature, chunk_size=config.chunk_size)


@nnx.jit(static_argnames="config")
def _logprobs(model, batch: Rollout, config: RLConfig) -> Array:
  return policy_logprobs(model, batch, config)


@nnx.jit(static_argnames="config")
def update_step(model, optimizer: nnx.Optimizer, batch: Rollout, old_logp: Array,
                ref_logp: Array | None, advantages: Array, config: RLConfig):
  """One optimizer step on the GRPO objective; returns (loss, metrics)."""
  def loss_fn(m):
    logp = policy_logprobs(m, batch, config)
    return grpo.grpo_loss(logp, old_logp, advantages, batch.completion_mask, ref_logp,
                          config.loss)

  (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  return loss, metrics


def make_optimizer(model, config: RLConfig) -> nnx.Optimizer:
  return nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                          optax.adam(config.learning_rate)), wrt=nnx.Param)


def train_step(model, optimizer: nnx.Optimizer, ref_model, prompt_tokens: Array,
               prompt_lengths: Array, prompt_texts: Sequence[str], reward_fn: Callable,
               reward_kwargs: dict[str, Sequence[Any]], key: Array, config: RLConfig, *,
               decode: Callable[[np.ndarray, np.ndarray], list[str]], end_think_id: int,
               stop_tokens: tuple[int, ...], pad_id: int = 0) -> dict[str, float]:
  """Rollout + rewards + ``num_updates`` GRPO updates; returns scalar metrics.

  ``reward_kwargs`` hold per-prompt lists (repeated per group here); ``decode(tokens,
  lengths)`` turns completion tokens into strings.
  """
  batch, tokens, lengths = rollout(model, prompt_tokens, prompt_lengths, key, config,
                                   end_think_id=end_think_id, stop_tokens=stop_tokens,
                                   pad_id=pad_id)
  g = config.group_size
  rewards = reward_fn([p for p in prompt_texts for _ in range(g)], decode(tokens, lengths),
                      **{k: [x for x in v for _ in range(g)] for k, v in reward_kwargs.items()})
  advantages = grpo.group_advantages(jnp.asarray(rewards), g, scale=config.advantage_scale)
  old_logp = _logprobs(model, batch, config)
  ref_logp = None if ref_model is None else _logprobs(ref_model, batch, config)
  for _ in range(config.num_updates):
    loss, metrics = update_step(model, optimizer, batch, old_logp, ref_logp, advantages, config)
  return {"loss": float(loss), "reward": float(np.mean(rewards)),
          "length": float(np.mean(lengths)),
          **{k: float(v) for k, v in metrics.items()}}
