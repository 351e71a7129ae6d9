"""Normalized knowledge distillation (Yang et al., ICCV 2023, arXiv 2303.13005).

KD's non-target term matches ``p_i`` to ``q_i`` for ``i != t`` although the two non-target
masses ``1 - p_t`` and ``1 - q_t`` differ; NKD renormalizes the non-target distributions
so they can match exactly, and keeps a target term weighted by the teacher's confidence.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses import _common
from logitlab.losses.cross_entropy import soft_cross_entropy


def _target_term(student_logits, teacher_logits, labels) -> jax.Array:
  teacher_target_prob = jnp.exp(_common.take_class(
      numerics.log_softmax(jax.lax.stop_gradient(teacher_logits)), labels))
  return -teacher_target_prob * _common.take_class(numerics.log_softmax(student_logits), labels)


def _non_target_term(student_logits, teacher_logits, labels, temperature) -> jax.Array:
  teacher_non_target = jnp.exp(numerics.log_softmax(
      _common.drop_target(jax.lax.stop_gradient(teacher_logits), labels), temperature))
  return temperature**2 * soft_cross_entropy(
      _common.drop_target(student_logits, labels) / temperature, teacher_non_target,
      reduction="none")


def _check(student_logits, teacher_logits, labels, where, temperature=1.0):
  """Validity mask and the integer labels NKD uses (the argmax class of soft labels)."""
  _common.check_logit_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
  _common.check_positive("temperature", temperature)
  ok = _common.check_any_labels(labels, "student_logits", student_logits, where)
  return ok, _common.hard_labels(labels)


def nkd_target(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""NKD target term ``L_t = -q_t \log p_t`` at temperature 1 (``q_t`` a constant).

  Arguments as in :func:`nkd`.
  """
  ok, labels = _check(student_logits, teacher_logits, labels, where)
  per_example = _target_term(student_logits, teacher_logits, labels)
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


def nkd_non_target(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 1.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Normalized non-target term ``-T^2 \sum_{i \ne t} \hat q_i^T \log \hat p_i^T``.

  ``\hat q, \hat p`` are softmaxes of ``z / T`` over the ``C - 1`` non-target classes only
  (the old cls_KD code built the mask with the target kept, a bug; here the target is
  excluded exactly, so the term does not depend on either target logit). This is a
  cross-entropy, as in the reference code (it differs from the KL by the teacher's
  non-target entropy, a constant in the student). ``gamma`` is applied by :func:`nkd`.
  """
  ok, labels = _check(student_logits, teacher_logits, labels, where, temperature)
  per_example = _non_target_term(student_logits, teacher_logits, labels, temperature)
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


def nkd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""NKD distillation term ``L_t + gamma L_non`` (arXiv 2303.13005).

  .. math:: L_t = -q_t \log p_t, \qquad
            L_{non} = -T^2 \sum_{i \ne t} \hat q_i^T \log \hat p_i^T

  with ``p, q`` the student/teacher softmax at temperature 1 and ``\hat p^T, \hat q^T``
  the softmax of ``z / T`` over the non-target classes. The paper's training loss is
  ``CE + nkd(...)`` (recipe: ``logitlab.kd_recipes``). Defaults are the ImageNet setting
  (``T=1, gamma=1.5``); CIFAR-100 R34->R18 uses ``T=3, gamma=3.5``.

  Args:
    student_logits: ``[..., C]`` float logits (bf16 accepted; math in float32).
    teacher_logits: ``[..., C]``, same shape; a constant (``stop_gradient``).
    labels: ``[...]`` integer target classes, or ``[..., C]`` soft / mixed labels whose
      argmax class is the target (as cls_KD, mmcls/models/dis_losses/nkd.py:25-26).
      Out-of-range labels: ValueError when concrete, NaN for that example under jit.
    temperature: ``T > 0`` of the non-target term.
    gamma: weight of the non-target term.
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).
  """
  ok, labels = _check(student_logits, teacher_logits, labels, where, temperature)
  per_example = (_target_term(student_logits, teacher_logits, labels)
                 + gamma * _non_target_term(student_logits, teacher_logits, labels,
                                            temperature))
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)
