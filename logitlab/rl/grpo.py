"""GRPO: group-relative advantages, the PPO clipped objective, k3 KL and loss aggregation.

Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) samples G completions
per prompt and replaces the value baseline by group statistics of the rewards r:

  A_i = (r_i - mean_group(r)) / (s + eps),   s = std_group(r) | std_batch(r) | 1

("group" as in the paper, "batch" as in REINFORCE++/Dr. GRPO ablations, "none" as in
Dr. GRPO, arXiv 2503.20783). Every variant has zero mean inside each group. ``std`` is the
unbiased (ddof 1) std by default, as verl (``torch.std``), TRL (``nanstd``) and tunix; ddof 0
is an option. A NaN reward marks an *unscorable* completion (TRL: every reward function
returned None): it is left out of the group mean and std and gets advantage 0, so it moves
nothing; a group with fewer than ``ddof + 1`` scorable completions gets advantage 0. The
per-token
surrogate is the PPO clipped objective (arXiv 1707.06347) with ratio
rho = exp(logp - old_logp), asymmetric clip range [1 - eps_low, 1 + eps_high] (DAPO,
arXiv 2503.14476) and optional dual clip for negative advantages (Ye et al., arXiv
1912.09729): for A < 0 the loss is capped at -c A,

  l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A);   A < 0: l = min(l, -c A).

GSPO (arXiv 2507.18071; TRL ``importance_sampling_level="sequence"``) replaces the
per-token ratio by the sequence ratio exp(mean_t(logp - old_logp)) over valid tokens.
The KL to a frozen reference uses the k3 estimator (Schulman, "Approximating KL"),
k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, added with coefficient ``kl_coef`` and clamped
at ``kl_clamp`` (verl ``low_var_kl`` clamps at 10; None: no clamp).
Aggregation over tokens: "token_mean" (sum over all valid tokens / their count, DAPO),
"sequence_mean" (per-sequence mean, then batch mean, the original GRPO), "dr_grpo" (sum
over tokens / (B * max_len), a constant normalizer, Dr. GRPO; ``max_len`` is the maximum
completion length, TRL ``max_completion_length``).

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
ImportanceSampling = Literal["token", "sequence"]


def group_advantages(rewards: chex.Array, group_size: int, *,
                     scale: AdvantageScale = "group", eps: float = 1e-6,
                     ddof: int = 1) -> Array:
  """Group-relative advantages ``[B]`` for rewards ``[B]`` laid out group-major.

  Rows ``[g * group_size, (g + 1) * group_size)`` are the completions of prompt g.
  ``ddof`` 1 (default): unbiased std (verl, TRL, tunix); 0: population std. NaN rewards are
  unscorable: excluded from the statistics, advantage 0 (module docstring; TRL
  ``grpo_trainer.py`` ``unscorable_mask`` / ``nanstd`` / ``nan_to_num``).
  """
  rewards = numerics.upcast(rewards)
  if rewards.ndim != 1:
    raise ValueError(f"`rewards` must have shape [B], got {rewards.shape}.")
  if not isinstance(group_size, int) or group_size < 2 or rewards.shape[0] % group_size:
    raise ValueError(f"`rewards` length {rewards.shape[0]} must be a multiple of "
                     f"`group_size` = {group_size!r}, an int >= 2 (a group of one has no "
                     "baseline).")
  if ddof not in (0, 1):
    raise ValueError(f"`ddof` must be 0 or 1, got {ddof!r}.")
  if scale not in ("group", "batch", "none"):
    raise ValueError(f"`scale` must be 'group', 'batch' or 'none', got {scale!r}.")
  valid = ~jnp.isnan(rewards)
  grouped, grouped_valid = rewards.reshape(-1, group_size), valid.reshape(-1, group_size)

  def centered_and_std(values, ok, axis):
    count = jnp.sum(ok, axis=axis, keepdims=True)
    mean = jnp.sum(jnp.where(ok, values, 0.0), axis=axis, keepdims=True) / jnp.maximum(count, 1)
    centered = jnp.where(ok, values - mean, 0.0)
    var = jnp.sum(centered ** 2, axis=axis, keepdims=True) / jnp.maximum(count - ddof, 1)
    return centered, jnp.sqrt(var), count > ddof

  centered, std, enough = centered_and_std(grouped, grouped_valid, 1)
  if scale == "group":
    centered = centered / (std + eps)
  elif scale == "batch":
    _, batch_std, batch_enough = centered_and_std(rewards, valid, 0)
    centered = centered / (batch_std + eps)
    enough = enough & batch_enough
  return jnp.where(grouped_valid & enough, centered, 0.0).reshape(-1)


def k3_kl(logp: chex.Array, ref_logp: chex.Array, *, clamp: float | None = None) -> Array:
  """Per-token k3 estimate of KL(pi || pi_ref): ``exp(d) - d - 1``, ``d = ref - logp``;
  ``clamp`` c limits it to ``[-c, c]`` (verl ``core_algos.kl_penalty`` "low_var_kl": 10)."""
  numerics.check_same_shape(("logp", "ref_logp"), jnp.asarray(logp), jnp.asarray(ref_logp))
  delta = numerics.upcast(ref_logp) - numerics.upcast(logp)
  kl = jnp.expm1(delta) - delta
  if clamp is not None:
    if not clamp > 0:
      raise ValueError(f"`clamp` must be > 0 (or None), got {clamp!r}.")
    kl = jnp.clip(kl, -clamp, clamp)
  return kl


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
  _check_clip(eps_low, eps_high)
  advantages = numerics.upcast(advantages)
  if advantages.shape not in (logp.shape[:1], logp.shape):
    raise ValueError(f"`advantages` must be [B] = {logp.shape[:1]} or [B, T] = {logp.shape}, "
                     f"got {advantages.shape}.")
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


def _check_clip(eps_low, eps_high) -> None:
  if not 0.0 <= eps_low < 1.0:
    raise ValueError(f"`eps_low` must be in [0, 1) (ratio floor 1 - eps_low > 0), got "
                     f"{eps_low!r}.")
  if not eps_high >= 0.0:
    raise ValueError(f"`eps_high` must be >= 0, got {eps_high!r}.")


def sequence_log_ratio(logp: chex.Array, old_logp: chex.Array, mask: chex.Array) -> Array:
  """GSPO's per-sequence log importance ratio ``[B, 1]``: the mean over valid tokens of
  ``logp - old_logp`` (TRL ``importance_sampling_level="sequence"``)."""
  numerics.check_same_shape(("logp", "old_logp"), jnp.asarray(logp), jnp.asarray(old_logp))
  _check_token_mask(mask, jnp.shape(logp))
  diff = numerics.upcast(logp) - jax.lax.stop_gradient(numerics.upcast(old_logp))
  return numerics.masked_mean(diff, mask, axis=-1)[:, None]


def aggregate(per_token: chex.Array, mask: chex.Array, mode: Aggregation = "token_mean",
              *, max_len: int | None = None) -> Array:
  """Reduces ``[B, T]`` per-token values over valid tokens to a scalar (see module doc).

  ``max_len`` is the Dr. GRPO constant, the maximum completion length (defaults to T; a
  trainer whose T also holds the prompt must pass it). ``mask`` must be exactly ``[B, T]``.
  """
  per_token = numerics.upcast(per_token)
  _check_token_mask(mask, per_token.shape)
  mask = jnp.asarray(mask, bool)
  if mode == "token_mean":
    return numerics.masked_mean(per_token, mask)
  if mode == "sequence_mean":
    return jnp.mean(numerics.masked_mean(per_token, mask, axis=-1))
  if mode == "dr_grpo":
    normalizer = per_token.shape[0] * (per_token.shape[-1] if max_len is None else max_len)
    return jnp.sum(jnp.where(mask, per_token, 0.0)) / normalizer
  raise ValueError(f"`mode` must be 'token_mean', 'sequence_mean' or 'dr_grpo', got {mode!r}.")


def _check_token_mask(mask, shape) -> None:
  # Exact shape: a [B] mask would broadcast along T when B == T and silently mask tokens.
  if jnp.shape(mask) != tuple(shape):
    raise ValueError(f"`mask` must be a bool [B, T] = {tuple(shape)} array, got shape "
                     f"{jnp.shape(mask)}.")


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
  """Hyper-parameters of ``grpo_loss`` (defaults: SofT-GRPO reference = verl, arXiv
  2511.06411: clip 0.2, dual clip 3, low_var_kl 0.001 clamped at 10, token mean).

  ``importance_sampling`` "sequence" is GSPO (use ``aggregation="sequence_mean"`` for the
  paper's per-sequence objective, as TRL advises).
  """
  eps_low: float = 0.2
  eps_high: float = 0.2
  dual_clip: float | None = 3.0
  kl_coef: float = 0.001
  kl_clamp: float | None = 10.0
  aggregation: Aggregation = "token_mean"
  max_len: int | None = None
  importance_sampling: ImportanceSampling = "token"

  def __post_init__(self):
    _check_clip(self.eps_low, self.eps_high)
    if self.dual_clip is not None and not self.dual_clip > 1.0:
      raise ValueError(f"`dual_clip` must be > 1 (or None), got {self.dual_clip!r}.")
    if not self.kl_coef >= 0.0:
      raise ValueError(f"`kl_coef` must be >= 0, got {self.kl_coef!r}.")
    if self.kl_clamp is not None and not self.kl_clamp > 0.0:
      raise ValueError(f"`kl_clamp` must be > 0 (or None), got {self.kl_clamp!r}.")
    if self.aggregation not in ("token_mean", "sequence_mean", "dr_grpo"):
      raise ValueError(f"`aggregation` must be 'token_mean', 'sequence_mean' or 'dr_grpo', got "
                       f"{self.aggregation!r}.")
    if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len < 1):
      raise ValueError(f"`max_len` must be a positive int or None, got {self.max_len!r}.")
    if self.importance_sampling not in ("token", "sequence"):
      raise ValueError(f"`importance_sampling` must be 'token' or 'sequence', got "
                       f"{self.importance_sampling!r}.")


def grpo_loss(logp: chex.Array, old_logp: chex.Array, advantages: chex.Array,
              mask: chex.Array, ref_logp: chex.Array | None = None,
              config: GRPOLossConfig = GRPOLossConfig()) -> tuple[Array, dict[str, Array]]:
  """GRPO / SofT-GRPO objective: clipped surrogate + ``kl_coef`` * k3 KL, aggregated.

  Args:
    logp, old_logp, ref_logp: ``[B, T]`` per-position policy log-probs (discrete-token
      log-probs or SofT-GRPO soft-token log-densities) under the current, rollout and
      reference policies; ``ref_logp`` None disables the KL term.
    advantages: ``[B]`` from ``group_advantages``.
    mask: bool ``[B, T]`` True on completion tokens (exactly that shape).

  Returns:
    (scalar loss, metrics dict with ``pg_loss``, ``kl``, ``clip_frac``).
  """
  numerics.check_logits("logp", logp, min_rank=2)
  if logp.ndim != 2:
    raise ValueError(f"`logp` must be [B, T], got {logp.shape}.")
  _check_token_mask(mask, logp.shape)
  ratio_logp = logp
  if config.importance_sampling == "sequence":
    numerics.check_same_shape(("logp", "old_logp"), logp, old_logp)
    old = jax.lax.stop_gradient(numerics.upcast(old_logp))
    ratio_logp = old + sequence_log_ratio(logp, old, mask)
  pg, clipped = ppo_clipped_loss(ratio_logp, old_logp, advantages, eps_low=config.eps_low,
                                 eps_high=config.eps_high, dual_clip=config.dual_clip)
  pg_loss = aggregate(pg, mask, config.aggregation, max_len=config.max_len)
  metrics = {"pg_loss": pg_loss, "clip_frac": numerics.masked_mean(clipped, mask)}
  loss = pg_loss
  if ref_logp is not None:
    numerics.check_same_shape(("logp", "ref_logp"), logp, ref_logp)
    kl = k3_kl(logp, jax.lax.stop_gradient(ref_logp), clamp=config.kl_clamp)
    kl_loss = aggregate(kl, mask, config.aggregation, max_len=config.max_len)
    loss = loss + config.kl_coef * kl_loss
    metrics["kl"] = kl_loss
  return loss, metrics
