"""GRPO: group-relative advantages, the PPO clipped objective, k3 KL and loss aggregation.

Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) samples G completions
per prompt and replaces the value baseline by group statistics of the rewards r:

  A_i = (r_i - mean_group(r)) / (s + eps),   s = std_group(r) | std_batch(r) | 1

("group" as in the paper, "batch" as in REINFORCE++/Dr. GRPO ablations, "none" as in
Dr. GRPO, arXiv 2503.20783). Every variant has zero mean inside each group. The per-token
surrogate is the PPO clipped objective (arXiv 1707.06347) with ratio
rho = exp(logp - old_logp), asymmetric clip range [1 - eps_low, 1 + eps_high] (DAPO,
arXiv 2503.14476) and optional dual clip for negative advantages (Ye et al., arXiv
1912.09729): for A < 0 the loss is capped at -c A,

  l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A);   A < 0: l = min(l, -c A).

The KL to a frozen reference uses the k3 estimator (Schulman, "Approximating KL"),
k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, added with coefficient ``kl_coef``.
Aggregation over tokens: "token_mean" (sum over all valid tokens / their count, DAPO),
"sequence_mean" (per-sequence mean, then batch mean, the original GRPO), "dr_grpo" (sum
over tokens / (B * max_len), a constant normalizer, Dr. GRPO).

All functions are pure ``jax.numpy`` on float32 (bf16 inputs are upcast), masks are bool
``[B, T]`` True on completion tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics

Array = jax.Array
AdvantageScale = Literal["group", "batch", "none"]
Aggregation = Literal["token_mean", "sequence_mean", "dr_grpo"]


def group_advantages(rewards: chex.Array, group_size: int, *,
                     scale: AdvantageScale = "group", eps: float = 1e-6) -> Array:
  """Group-relative advantages ``[B]`` for rewards ``[B]`` laid out group-major.

  Rows ``[g * group_size, (g + 1) * group_size)`` are the completions of prompt g.
  Standard deviations are population (ddof 0) stds.
  """
  rewards = numerics.upcast(rewards)
  if rewards.ndim != 1:
    raise ValueError(f"`rewards` must have shape [B], got {rewards.shape}.")
  if group_size < 1 or rewards.shape[0] % group_size:
    raise ValueError(f"`rewards` length {rewards.shape[0]} must be a positive multiple of "
                     f"`group_size` = {group_size}.")
  grouped = rewards.reshape(-1, group_size)
  centered = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  if scale == "group":
    centered = centered / (jnp.std(grouped, axis=1, keepdims=True) + eps)
  elif scale == "batch":
    centered = centered / (jnp.std(rewards) + eps)
  elif scale != "none":
    raise ValueError(f"`scale` must be 'group', 'batch' or 'none', got {scale!r}.")
  return centered.reshape(-1)


def k3_kl(logp: chex.Array, ref_logp: chex.Array) -> Array:
  """Per-token k3 estimate of KL(pi || pi_ref): ``exp(d) - d - 1``, ``d = ref - logp``."""
  delta = numerics.upcast(ref_logp) - numerics.upcast(logp)
  return jnp.expm1(delta) - delta


def ppo_clipped_loss(logp: chex.Array, old_logp: chex.Array, advantages: chex.Array, *,
                     eps_low: float = 0.2, eps_high: float = 0.2,
                     dual_clip: float | None = None) -> tuple[Array, Array]:
  """Per-token PPO clipped loss (to minimize) and a bool "was clipped" indicator.

  Args:
    logp, old_logp: ``[B, T]`` log-probs of the sampled tokens under the current policy
      (differentiated) and the rollout policy (no gradient).
    advantages: ``[B]`` per-sequence (or ``[B, T]`` per-token) advantages.
    eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``.
    dual_clip: c > 1 caps the loss of negative-advantage tokens at ``-c A``; None: off.

  Returns:
    (loss [B, T], clipped [B, T]); the gradient is exactly zero where ``clipped``.
  """
  logp = numerics.upcast(logp)
  old_logp = jax.lax.stop_gradient(numerics.upcast(old_logp))
  numerics.check_same_shape(("logp", "old_logp"), logp, old_logp)
  advantages = numerics.upcast(advantages)
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  advantages = jax.lax.stop_gradient(jnp.broadcast_to(advantages, logp.shape))
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"`dual_clip` must be > 1 (or None), got {dual_clip}.")
  ratio = jnp.exp(logp - old_logp)
  unclipped = -ratio * advantages
  clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = jnp.maximum(unclipped, -clipped_ratio * advantages)
  clipped = loss > unclipped
  if dual_clip is not None:
    capped = (advantages < 0) & (loss > -dual_clip * advantages)
    loss = jnp.where(capped, -dual_clip * advantages, loss)
    clipped = clipped | capped
  return loss, clipped


def aggregate(per_token: chex.Array, mask: chex.Array, mode: Aggregation = "token_mean",
              *, max_len: int | None = None) -> Array:
  """Reduces ``[B, T]`` per-token values over valid tokens to a scalar (see module doc).

  ``max_len`` is the Dr. GRPO constant (defaults to T).
  """
  per_token = numerics.upcast(per_token)
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), per_token.shape)
  if mode == "token_mean":
    return numerics.masked_mean(per_token, mask)
  if mode == "sequence_mean":
    return jnp.mean(numerics.masked_mean(per_token, mask, axis=-1))
  if mode == "dr_grpo":
    normalizer = per_token.shape[0] * (per_token.shape[-1] if max_len is None else max_len)
    return jnp.sum(jnp.where(mask, per_token, 0.0)) / normalizer
  raise ValueError(f"`mode` must be 'token_mean', 'sequence_mean' or 'dr_grpo', got {mode!r}.")


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
  """Hyper-parameters of ``grpo_loss`` (defaults: SofT-GRPO reference, arXiv 2511.06411)."""
  eps_low: float = 0.2
  eps_high: float = 0.2
  dual_clip: float | None = 3.0
  kl_coef: float = 0.001
  aggregation: Aggregation = "token_mean"
  max_len: int | None = None


def grpo_loss(logp: chex.Array, old_logp: chex.Array, advantages: chex.Array,
              mask: chex.Array, ref_logp: chex.Array | None = None,
              config: GRPOLossConfig = GRPOLossConfig()) -> tuple[Array, dict[str, Array]]:
  """GRPO / SofT-GRPO objective: clipped surrogate + ``kl_coef`` * k3 KL, aggregated.

  Args:
    logp, old_logp, ref_logp: ``[B, T]`` per-position policy log-probs (discrete-token
      log-probs or SofT-GRPO soft-token log-densities) under the current, rollout and
      reference policies; ``ref_logp`` None disables the KL term.
    advantages: ``[B]`` from ``group_advantages``.
    mask: bool ``[B, T]`` True on completion tokens.

  Returns:
    (scalar loss, metrics dict with ``pg_loss``, ``kl``, ``clip_frac``).
  """
  numerics.check_logits("logp", logp, min_rank=2)
  numerics.check_mask("mask", mask, logp.shape)
  pg, clipped = ppo_clipped_loss(logp, old_logp, advantages, eps_low=config.eps_low,
                                 eps_high=config.eps_high, dual_clip=config.dual_clip)
  pg_loss = aggregate(pg, mask, config.aggregation, max_len=config.max_len)
  metrics = {"pg_loss": pg_loss, "clip_frac": numerics.masked_mean(clipped, mask)}
  loss = pg_loss
  if ref_logp is not None:
    numerics.check_same_shape(("logp", "ref_logp"), logp, ref_logp)
    kl = k3_kl(logp, jax.lax.stop_gradient(ref_logp))
    kl_loss = aggregate(kl, mask, config.aggregation, max_len=config.max_len)
    loss = loss + config.kl_coef * kl_loss
    metrics["kl"] = kl_loss
  return loss, metrics
