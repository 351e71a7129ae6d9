"""Decoupled knowledge distillation (Zhao et al., CVPR 2022, arXiv 2203.08679).

KD splits exactly into a target-class part and a non-target part,

  ``KD = TCKD + (1 - p_t^T) NCKD``,

where ``p_t^T`` is the teacher's target probability at temperature ``T``. DKD drops the
``(1 - p_t^T)`` coupling and weights the parts freely: ``alpha TCKD + beta NCKD``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses import _common


def _binary_log_probs(logits: chex.Array, labels: chex.Array, temperature) -> jax.Array:
  """``[..., 2]`` = ``[log p_t, log(1 - p_t)]`` of ``softmax(z / T)``.

  ``log(1 - p_t)`` is computed as ``logsumexp`` over the non-target logits minus the full
  ``logsumexp``, never as ``log(1 - exp(.))``: exact even when ``p_t`` rounds to 1 at
  |logits| = 1e4 (where mdistiller's ``log(1 - p_t)`` form gives ``log 0``).
  """
  scaled = numerics.upcast(logits) / temperature
  log_normalizer = jax.nn.logsumexp(scaled, axis=-1)
  log_target = _common.take_class(scaled, labels) - log_normalizer
  log_non_target = jax.nn.logsumexp(_common.drop_target(scaled, labels), axis=-1) - log_normalizer
  return jnp.stack([log_target, log_non_target], axis=-1)


def _check(student_logits, teacher_logits, labels, temperature, where) -> jax.Array:
  _common.check_logit_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
  _common.check_positive("temperature", temperature)
  return _common.valid_labels("labels", labels, "student_logits", student_logits, where)


def _tckd(student_logits, teacher_logits, labels, temperature) -> jax.Array:
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  # The inputs are log-probabilities, so log_softmax inside the KL helper is the identity.
  return temperature**2 * numerics.kl_divergence_from_logits(
      _binary_log_probs(teacher_logits, labels, temperature),
      _binary_log_probs(student_logits, labels, temperature))


def _nckd(student_logits, teacher_logits, labels, temperature) -> jax.Array:
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  return temperature**2 * numerics.kl_divergence_from_logits(
      _common.drop_target(teacher_logits, labels), _common.drop_target(student_logits, labels),
      temperature)


def tckd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 4.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Target-class KD: ``T^2 KL(b^T || b^S)`` with ``b = [p_t, 1 - p_t]`` at temperature T.

  Arguments as in :func:`dkd`; ``labels`` are ``[...]`` integer target classes.
  """
  ok = _check(student_logits, teacher_logits, labels, temperature, where)
  per_example = _tckd(student_logits, teacher_logits, labels, temperature)
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


def nckd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 4.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Non-target-class KD: ``T^2 KL(\hat p^T || \hat p^S)``.

  ``\hat p = softmax(z / T)`` over the ``C - 1`` non-target classes (target excluded
  exactly, see :func:`logitlab.losses._common.drop_target`). Arguments as in :func:`dkd`.
  """
  ok = _check(student_logits, teacher_logits, labels, temperature, where)
  per_example = _nckd(student_logits, teacher_logits, labels, temperature)
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


def dkd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Decoupled KD: ``alpha TCKD + beta NCKD`` (arXiv 2203.08679).

  The paper's training loss is ``CE + min(epoch / warmup, 1) * dkd(...)`` with ``epoch``
  counted from 1 (:func:`dkd_warmup`; the recipe is ``logitlab.kd_recipes``). CIFAR-100
  defaults (mdistiller): ``alpha=1, beta=8, T=4, warmup=20`` epochs (``beta=2`` for
  R56->R20 and R110->R32, ``beta=6`` for VGG13->VGG8 and WRN pairs). With logit
  standardization the official script multiplies ``alpha`` and ``beta`` by the kd weight
  (logit-standardization-KD tools/train.py:115-118). The teacher is a constant.

  Args:
    student_logits: ``[..., C]`` float logits (bf16 accepted; math in float32).
    teacher_logits: ``[..., C]``, same shape.
    labels: ``[...]`` integer target classes in ``[0, C)`` (out of range: ValueError when
      concrete, NaN for that example under jit).
    alpha: TCKD weight.
    beta: NCKD weight.
    temperature: ``T > 0``.
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).
  """
  ok = _check(student_logits, teacher_logits, labels, temperature, where)
  per_example = (alpha * _tckd(student_logits, teacher_logits, labels, temperature)
                 + beta * _nckd(student_logits, teacher_logits, labels, temperature))
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


def dkd_warmup(epoch: chex.Numeric, warmup: chex.Numeric = 20) -> jax.Array:
  """Linear warmup factor ``min(epoch / warmup, 1)`` multiplying the DKD term.

  mdistiller passes the epoch counted from 1 and constant within the epoch
  (mdistiller/engine/trainer.py: ``epoch = 1``; DKD.py:80 ``min(kwargs["epoch"] /
  self.warmup, 1.0)``), so the first epoch already has weight ``1 / warmup`` and ImageNet's
  ``warmup=1`` gives full weight from the first step. Pass that epoch
  (``logitlab.kd_recipes.mdistiller_epoch``). ``warmup <= 0`` means no warmup (factor 1).
  """
  progress = jnp.asarray(epoch, jnp.float32) / jnp.maximum(
      jnp.asarray(warmup, jnp.float32), 1e-12)
  return jnp.where(jnp.asarray(warmup) > 0, jnp.minimum(progress, 1.0), 1.0)
