"""GRPO / SofT-GRPO trainer: group rollouts, rewards, advantages, clipped updates.

One step (DeepSeekMath arXiv 2402.03300; SofT-GRPO arXiv 2511.06411; the loop of TRL's
``GRPOTrainer`` and verl's ``ray_trainer``):
  1. every prompt is repeated ``group_size`` times and decoded with
     ``logitlab.sampling.generate``: discrete sampling at T with optional top-k / top-p, or
     the SofT-GRPO soft-thinking policy (``soft_grpo.SoftGRPOPolicy``, which stores ids and
     g' per position and samples the answer after ``</think>`` from top-k 5 / top-p 0.95);
  2. rewards ``fn(prompts, completions, **kw) -> [B]`` (NaN = unscorable, advantage 0 as
     TRL); ``group_advantages`` (unbiased std by default);
  3. old / reference log-probs of the rollout under the current / frozen reference model;
  4. ``num_updates`` passes over the batch, each split into ``num_minibatches`` optimizer
     steps on ``grpo_loss`` (verl ``ppo_epochs`` x ``train_batch_size / ppo_mini_batch_size``).
Log-probs are computed chunked from hidden states (``logitlab.rl.logprobs``); soft
positions are re-fed as ``sum_i softmax(g'/tau)_i E[ids_i]`` (detached, as the reference)
and scored with the Gumbel log-density (``soft_grpo.mixed_logprobs_from_hidden``).

``lora=True`` trains (and ``save_checkpoint`` writes) only the ``nnx.LoRAParam`` adapters of a
model wrapped by ``logitlab.ssb.add_lora``; otherwise every ``nnx.Param`` is trained.
``mask_truncated_completions`` drops completions that hit ``max_new_tokens`` without a stop
token from the loss (TRL option of the same name, DAPO's overlong filtering).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from logitlab import sampling
from logitlab import training
from logitlab.rl import grpo
from logitlab.rl import logprobs as rl_logprobs
from logitlab.rl import soft_grpo

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Trainer settings (defaults: the SofT-GRPO reference / verl where it has one).

  ``top_k`` / ``top_p``: filtering of discrete rollouts (None: off). ``after_think_top_k`` /
  ``after_think_top_p``: the soft rollout's answer sampling after ``</think>``.
  ``advantage_ddof``: 1 = unbiased group std (verl, TRL, tunix), 0 = population std.
  ``group_size`` 1 is allowed for plain sampling (``rollout``), not for ``train_step``.
  ``loss.max_len`` None means ``max_new_tokens`` (the Dr. GRPO normalizer is B x the
  maximum completion length, TRL). ``num_minibatches`` must divide the number of prompts.
  """
  group_size: int = 8
  max_new_tokens: int = 56
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  soft: bool = False  # SofT-GRPO soft-thinking rollouts instead of discrete GRPO
  soft_top_k: int = 5
  soft_top_p: float = 0.95
  soft_tau: float = 0.1
  after_think_top_k: int | None = 5
  after_think_top_p: float | None = 0.95
  detach_soft_inputs: bool = True
  advantage_scale: grpo.AdvantageScale = "group"
  advantage_ddof: int = 1
  loss: grpo.GRPOLossConfig = grpo.GRPOLossConfig()
  num_updates: int = 1  # passes over each rollout batch (ppo_epochs)
  num_minibatches: int = 1  # optimizer steps per pass
  mask_truncated_completions: bool = False
  lora: bool = False  # train only nnx.LoRAParam adapters
  learning_rate: float = 1e-5
  chunk_size: int = 64

  def __post_init__(self):
    for name in ("group_size", "max_new_tokens", "num_updates", "num_minibatches",
                 "chunk_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if not self.temperature > 0:
      raise ValueError(f"`temperature` must be > 0, got {self.temperature!r}.")
    if not self.learning_rate > 0:
      raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
    if self.advantage_ddof not in (0, 1):
      raise ValueError(f"`advantage_ddof` must be 0 or 1, got {self.advantage_ddof!r}.")
    if self.advantage_scale not in ("group", "batch", "none"):
      raise ValueError(f"`advantage_scale` must be 'group', 'batch' or 'none', got "
                       f"{self.advantage_scale!r}.")
    # Filter settings are checked by the policies they build.
    sampling.SamplingPolicy(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
    sampling.SamplingPolicy(top_k=self.after_think_top_k, top_p=self.after_think_top_p)
    sampling.SamplingPolicy(top_k=self.soft_top_k, top_p=self.soft_top_p)

  @property
  def loss_config(self) -> grpo.GRPOLossConfig:
    """``loss`` with the Dr. GRPO constant set to ``max_new_tokens`` when unset."""
    if self.loss.max_len is not None:
      return self.loss
    return dataclasses.replace(self.loss, max_len=self.max_new_tokens)


class Rollout(NamedTuple):
  """A decoded batch as one left-padded sequence per rollout ``[B, L]`` (L = P + N).

  ``ids``/``perturbed`` ``[B, L, K]`` and ``soft [B, L]`` are the SofT-GRPO records (soft
  False everywhere for discrete rollouts). ``completion_mask`` is True on generated tokens.
  """
  tokens: Array
  attention_mask: Array
  completion_mask: Array
  ids: Array
  perturbed: Array
  soft: Array


def _check_config(config) -> None:
  if not isinstance(config, RLConfig):
    raise TypeError(f"`config` must be an RLConfig, got {type(config).__name__}.")


def _check_rollout(batch) -> None:
  if not isinstance(batch, Rollout):
    raise TypeError(f"`batch` must be a Rollout (from `rollout`), got {type(batch).__name__}.")


def rollout_policy(config: RLConfig, *, end_think_id: int, embedding_matrix=None):
  """(policy, initial state) for ``sampling.generate`` from ``config``."""
  _check_config(config)
  if not config.soft:
    return sampling.SamplingPolicy(temperature=config.temperature, top_k=config.top_k,
                                   top_p=config.top_p), None
  policy = soft_grpo.SoftGRPOPolicy(
      end_think_id=end_think_id, temperature=config.temperature, top_k=config.soft_top_k,
      top_p=config.soft_top_p, tau=config.soft_tau,
      after_think_temperature=config.temperature, after_think_top_k=config.after_think_top_k,
      after_think_top_p=config.after_think_top_p)
  return policy, embedding_matrix


def rollout(model, prompt_tokens: Array, prompt_lengths: Array, key: Array, config: RLConfig, *,
            end_think_id: int, stop_tokens: tuple[int, ...], pad_id: int = 0
            ) -> tuple[Rollout, np.ndarray, np.ndarray]:
  """Decodes ``group_size`` completions per prompt (right-padded ``[P_n, P]`` prompts).

  Returns the ``Rollout`` and the completion tokens ``[B, N]`` and lengths ``[B]`` (numpy),
  rows group-major.
  """
  _check_config(config)
  if jnp.ndim(prompt_tokens) != 2 or jnp.shape(prompt_lengths) != jnp.shape(prompt_tokens)[:1]:
    raise ValueError(f"`prompt_lengths` must have shape [P] matching `prompt_tokens` [P, W], "
                     f"got {jnp.shape(prompt_lengths)} and {jnp.shape(prompt_tokens)}.")
  prompts = jnp.repeat(jnp.asarray(prompt_tokens), config.group_size, axis=0)
  lengths = jnp.repeat(jnp.asarray(prompt_lengths), config.group_size, axis=0)
  prompt_mask = jnp.arange(prompts.shape[1])[None] < lengths[:, None]
  prompts, prompt_mask = sampling.left_align(prompts, prompt_mask)
  batch = prompts.shape[0]
  policy, embedding = rollout_policy(
      config, end_think_id=end_think_id,
      embedding_matrix=model.embedding_matrix() if config.soft else None)
  state = None if embedding is None else soft_grpo.SoftGRPOState(
      thinking=jnp.ones((batch,), bool), embedding_matrix=embedding)
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


def policy_logprobs(model, batch: Rollout, config: RLConfig, *, return_entropy: bool = False):
  """Per-position policy log-probs ``[B, L]`` of a rollout (index t scores token t);
  ``return_entropy`` also returns the policy entropies ``[B, L]``."""
  _check_rollout(batch)
  _check_config(config)
  if not config.soft:
    return rl_logprobs.sequence_logprobs(model, batch.tokens, batch.attention_mask,
                                         temperature=config.temperature,
                                         chunk_size=config.chunk_size,
                                         return_entropy=return_entropy)
  embeds = soft_grpo.soft_input_embeddings(model.embedding_matrix(), batch.tokens, batch.ids,
                                           batch.perturbed, batch.soft, tau=config.soft_tau,
                                           detach=config.detach_soft_inputs)
  hidden = rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch.tokens, batch.attention_mask, embeds))
  return soft_grpo.mixed_logprobs_from_hidden(
      hidden, batch.tokens, batch.ids, batch.perturbed, batch.soft, model.unembed,
      temperature=config.temperature, chunk_size=config.chunk_size,
      return_entropy=return_entropy)


@nnx.jit(static_argnames="config")
def _logprobs_and_entropy(model, batch: Rollout, config: RLConfig):
  return policy_logprobs(model, batch, config, return_entropy=True)


@nnx.jit(static_argnames="config")
def _logprobs(model, batch: Rollout, config: RLConfig) -> Array:
  return policy_logprobs(model, batch, config)


def trainable(config: RLConfig):
  """The ``nnx`` variable filter the optimizer trains and checkpoints save."""
  _check_config(config)
  return nnx.LoRAParam if config.lora else nnx.Param


def update_step(model, optimizer: nnx.Optimizer, batch: Rollout, old_logp: Array,
                ref_logp: Array | None, advantages: Array, config: RLConfig):
  """One optimizer step on the GRPO objective (jitted); returns (loss, metrics)."""
  _check_rollout(batch)
  _check_config(config)
  return _update_step(model, optimizer, batch, old_logp, ref_logp, advantages, config)


@nnx.jit(static_argnames="config")
def _update_step(model, optimizer: nnx.Optimizer, batch: Rollout, old_logp: Array,
                 ref_logp: Array | None, advantages: Array, config: RLConfig):
  def loss_fn(m):
    logp = policy_logprobs(m, batch, config)
    return grpo.grpo_loss(logp, old_logp, advantages, batch.completion_mask, ref_logp,
                          config.loss_config)

  diff = nnx.DiffState(0, trainable(config))
  (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True, argnums=diff)(model)
  optimizer.update(model, grads)
  return loss, metrics


def make_optimizer(model, config: RLConfig) -> nnx.Optimizer:
  """Adam (clip 1) over ``trainable(config)``: all parameters, or only the LoRA adapters."""
  _check_config(config)
  if config.lora and not jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
    raise ValueError("`config.lora` is True but `model` has no nnx.LoRAParam adapters; wrap it "
                     "with `logitlab.ssb.add_lora` first.")
  return nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                          optax.adam(config.learning_rate)),
                       wrt=trainable(config))


def check_rewards(rewards, batch: int) -> np.ndarray:
  """float32 ``[B]`` rewards from a reward function's output; NaN (unscorable) is allowed,
  anything else that is not a finite real number raises."""
  array = np.asarray(rewards)
  if array.shape != (batch,):
    raise ValueError(f"`rewards` (the reward function's output) must have one reward per "
                     f"completion, shape [B] = ({batch},), got shape {array.shape}.")
  if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
          or array.dtype == bool):
    raise TypeError(f"`rewards` (the reward function's output) must be real numbers, got "
                    f"dtype {array.dtype}.")
  array = array.astype(np.float32)
  if np.isinf(array).any():
    raise ValueError(f"`rewards` (the reward function's output) are infinite at rows "
                     f"{np.flatnonzero(np.isinf(array)).tolist()}; use NaN for unscorable.")
  return array


def _truncated(tokens: np.ndarray, lengths: np.ndarray, max_new_tokens: int,
               stop_tokens: tuple[int, ...]) -> np.ndarray:
  """bool ``[B]``: the completion used every token and its last one is not a stop token."""
  last = tokens[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
  return (lengths >= max_new_tokens) & ~np.isin(last, np.asarray(stop_tokens, np.int64))


def train_step(model, optimizer: nnx.Optimizer, ref_model, prompt_tokens: Array,
               prompt_lengths: Array, prompt_texts: Sequence[str], reward_fn: Callable,
               reward_kwargs: dict[str, Sequence[Any]], key: Array, config: RLConfig, *,
               decode: Callable[[np.ndarray, np.ndarray], list[str]], end_think_id: int,
               stop_tokens: tuple[int, ...], pad_id: int = 0) -> dict[str, float]:
  """Rollout + rewards + ``num_updates`` x ``num_minibatches`` GRPO updates.

  ``reward_kwargs`` hold per-prompt lists (repeated per group here); ``decode(tokens,
  lengths)`` turns completion tokens into strings. Returns scalar metrics: ``loss``,
  ``pg_loss``, ``kl``, ``clip_frac`` (last update), ``reward`` / ``reward_std`` (over
  scorable completions), ``unscorable_frac``, ``truncated_frac``, ``entropy`` (mean over
  completion tokens, rollout policy), ``length``, and the time split ``generate_s``,
  ``score_s`` (rewards + old/ref log-probs), ``update_s`` with ``rollout_tokens_per_s``.
  """
  num_prompts = len(prompt_texts)
  if config.group_size < 2:
    raise ValueError(f"`config.group_size` must be >= 2 for training (a group of one has no "
                     f"baseline), got {config.group_size}.")
  if jnp.shape(prompt_tokens)[0] != num_prompts or jnp.shape(prompt_lengths) != (num_prompts,):
    raise ValueError(f"`prompt_tokens` [P, W], `prompt_lengths` [P] and `prompt_texts` (P) "
                     f"must agree, got {jnp.shape(prompt_tokens)}, {jnp.shape(prompt_lengths)} "
                     f"and {num_prompts}.")
  if num_prompts % config.num_minibatches:
    raise ValueError(f"`config.num_minibatches` = {config.num_minibatches} must divide the "
                     f"number of prompts {num_prompts}.")
  for name, values in reward_kwargs.items():
    if len(values) != num_prompts:
      raise ValueError(f"`reward_kwargs[{name!r}]` must hold one entry per prompt "
                       f"({num_prompts}), got {len(values)}.")
  start = time.perf_counter()
  batch, tokens, lengths = rollout(model, prompt_tokens, prompt_lengths, key, config,
                                   end_think_id=end_think_id, stop_tokens=stop_tokens,
                                   pad_id=pad_id)
  generate_s = time.perf_counter() - start
  g = config.group_size
  num = num_prompts * g
  rewards = check_rewards(
      reward_fn([p for p in prompt_texts for _ in range(g)], decode(tokens, lengths),
                **{k: [x for x in v for _ in range(g)] for k, v in reward_kwargs.items()}), num)
  advantages = grpo.group_advantages(jnp.asarray(rewards), g, scale=config.advantage_scale,
                                     ddof=config.advantage_ddof)
  truncated = _truncated(tokens, lengths, config.max_new_tokens, stop_tokens)
  if config.mask_truncated_completions:
    batch = batch._replace(completion_mask=batch.completion_mask & ~jnp.asarray(truncated)[:, None])
  old_logp, entropy = _logprobs_and_entropy(model, batch, config)
  ref_logp = None if ref_model is None else _logprobs(ref_model, batch, config)
  entropy = float(np.sum(np.where(batch.completion_mask, entropy, 0.0))
                  / max(int(np.sum(batch.completion_mask)), 1))
  score_s = time.perf_counter() - start - generate_s
  rows = num // config.num_minibatches
  for _ in range(config.num_updates):
    for m in range(config.num_minibatches):
      part = slice(m * rows, (m + 1) * rows)  # whole groups: rows is a multiple of g
      loss, metrics = update_step(
          model, optimizer, jax.tree.map(lambda x: x[part], batch), old_logp[part],
          None if ref_logp is None else ref_logp[part], advantages[part], config)
  loss = float(loss)
  update_s = time.perf_counter() - start - generate_s - score_s
  scorable = rewards[~np.isnan(rewards)]
  return {"loss": loss,
          "reward": float(np.mean(scorable)) if scorable.size else float("nan"),
          "reward_std": float(np.std(scorable, ddof=1)) if scorable.size > 1 else 0.0,
          "unscorable_frac": float(np.mean(np.isnan(rewards))),
          "truncated_frac": float(np.mean(truncated)),
          "length": float(np.mean(lengths)), "entropy": entropy,
          "generate_s": generate_s, "score_s": score_s, "update_s": update_s,
          "rollout_tokens_per_s": float(np.sum(lengths)) / max(generate_s, 1e-9),
          **{k: float(v) for k, v in metrics.items()}}


def _checkpoint_tree(model, optimizer: nnx.Optimizer, config: RLConfig, key: Array):
  return {"params": nnx.to_pure_dict(nnx.state(model, trainable(config))),
          "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
          "key": jax.random.key_data(key)}


def save_checkpoint(directory: str, step: int, model, optimizer: nnx.Optimizer,
                    config: RLConfig, key: Array) -> None:
  """Writes the trainable variables (only the LoRA adapters with ``config.lora``), the
  optimizer state and the trainer's PRNG ``key`` at ``directory/<step>`` (Orbax, through
  ``logitlab.training.Checkpointer``); ``restore_checkpoint`` resumes bit-exactly."""
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise ValueError(f"`step` must be an int >= 0, got {step!r}.")
  _check_config(config)
  checkpointer = training.Checkpointer(directory, save_interval_steps=1, max_to_keep=2,
                                       async_save=False)
  checkpointer.save(step, _checkpoint_tree(model, optimizer, config, key),
                    {"position": step}, force=True)
  checkpointer.close()


def restore_checkpoint(directory: str, model, optimizer: nnx.Optimizer, config: RLConfig,
                       key: Array, step: int | None = None) -> tuple[int, Array] | None:
  """Loads a ``save_checkpoint`` into ``model`` / ``optimizer`` in place (built as for the
  saved run: same architecture, LoRA rank, config); returns ``(step, key)`` or None when
  ``directory`` holds no checkpoint. ``key`` only gives the PRNG implementation."""
  tree = _checkpoint_tree(model, optimizer, config, key)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  checkpointer = training.Checkpointer(directory, save_interval_steps=1, async_save=False)
  restored = checkpointer.restore(abstract, step)
  checkpointer.close()
  if restored is None:
    return None
  values, data = restored
  params = nnx.state(model, trainable(config))
  nnx.replace_by_pure_dict(params, values["params"])
  nnx.update(model, params)
  opt_state = nnx.state(optimizer)
  nnx.replace_by_pure_dict(opt_state, values["optimizer"])
  nnx.update(optimizer, opt_state)
  restored_key = jax.random.wrap_key_data(values["key"], impl=jax.random.key_impl(key))
  return int(data["position"]), restored_key
