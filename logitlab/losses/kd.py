"""Vanilla knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses import _common


def kd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array | None = None,
    *,
    temperature: chex.Numeric = 4.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Temperature-scaled KL distillation loss.

  .. math:: \ell = T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t / T) \,\|\,
                                         \mathrm{softmax}(z_s / T)\big)

  The ``T^2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et
  al. 2015). Default ``T = 4`` is mdistiller's CIFAR-100 setting (CE weight 0.1, KD weight
  0.9, applied by the recipe, ``logitlab.kd_recipes``). The teacher is a constant
  (``stop_gradient``). ``labels`` are not used by the objective; they are accepted so every
  distillation loss shares the call ``loss(z_s, z_t, labels, ...)``, and validated by the
  same out-of-range policy when given.

  Args:
    student_logits: ``[..., C]`` float logits (bf16 accepted; math in float32).
    teacher_logits: ``[..., C]``, same shape.
    labels: optional ``[...]`` integer or ``[..., C]`` soft labels (checked, not used).
    temperature: ``T > 0``: a Python number, or a traced scalar (CTKD's learned
      temperature; under jit a non-positive value gives NaN).
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).

  Returns:
    float32 scalar, or ``[...]`` for ``reduction="none"``.
  """
  _common.check_logit_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
  _common.check_positive("temperature", temperature)
  ok = _common.check_any_labels(labels, "student_logits", student_logits, where)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  per_example = temperature**2 * numerics.kl_divergence_from_logits(
      teacher_logits, student_logits, temperature)
  ok = ok & (jnp.asarray(temperature) > 0)
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)
