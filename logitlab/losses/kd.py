"""Vanilla knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531)."""

from __future__ import annotations

import chex
import jax

from logitlab import numerics
from logitlab.losses import _common


def kd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    *,
    temperature: float = 4.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Temperature-scaled KL distillation loss.

  .. math:: \ell = T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t / T) \,\|\,
                                         \mathrm{softmax}(z_s / T)\big)

  The ``T^2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et
  al. 2015, arXiv 1503.02531). Default ``T = 4`` is mdistiller's CIFAR-100 setting (with
  CE weight 0.1 and KD weight 0.9, applied by the trainer). The teacher is a constant
  (``stop_gradient``). Combine with :func:`logitlab.losses.standardize` for logit
  standardization (arXiv 2403.01427).

  Args:
    student_logits: ``[..., C]`` float logits (bf16 accepted; math in float32).
    teacher_logits: ``[..., C]``, same shape.
    temperature: ``T > 0``.
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).

  Returns:
    float32 scalar, or ``[...]`` for ``reduction="none"``.
  """
  _common.check_logit_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
  _common.check_positive("temperature", temperature)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  per_example = temperature**2 * numerics.kl_divergence_from_logits(
      teacher_logits, student_logits, temperature)
  return _common.reduce_loss(per_example, where=where, weights=weights, reduction=reduction)
