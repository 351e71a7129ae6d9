"""Curriculum temperature KD, CTKD (Li et al., AAAI 2023, arXiv 2211.16231).

KD with a learnable global temperature trained *adversarially*: a gradient reversal layer
scales the temperature's gradient by ``lambda <= 0``, so the temperature moves to *increase*
the distillation loss, and ``|lambda|`` follows a cosine curriculum from 0 to 1 over the
first epochs. Ported from the official code (zhengli97/CTKD models/temp_global.py,
train_student.py ``CosineDecay``, helper/loops.py:132-141); the logit-standardization
repository's copy (CTKD/distiller_zoo/KD.py ``DistillKL_logit_stand``) standardizes both
logits first.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses.kd import kd


def gradient_reversal(x: chex.Array, scale: chex.Numeric) -> jax.Array:
  """Identity forward; backward multiplies the gradient by ``scale`` (negative: reversal).

  As the official ``GradientReversalFunction`` (``dx = lambda_ * grads``); ``scale`` gets
  no gradient. ``x`` must be a floating array (a gradient flows through it).
  """
  if isinstance(x, bool) or not (hasattr(x, "dtype") or isinstance(x, (int, float))):
    raise TypeError(f"`x` must be a floating array, got {type(x).__name__}.")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f"`x` must be a floating array, got dtype {jnp.result_type(x)}.")
  return _gradient_reversal(x, scale)


@jax.custom_vjp
def _gradient_reversal(x, scale):
  return jnp.asarray(x)


def _reversal_fwd(x, scale):
  return jnp.asarray(x), scale


def _reversal_bwd(scale, cotangent):
  return (scale * cotangent).astype(cotangent.dtype), jnp.zeros_like(scale)


_gradient_reversal.defvjp(_reversal_fwd, _reversal_bwd)


def ctkd_lambda(epoch: chex.Numeric, *, max_value: float = 0.0, min_value: float = -1.0,
                num_loops: float = 10.0) -> jax.Array:
  r"""The official cosine curriculum ``lambda(e)`` (``CosineDecay.get_value``).

  .. math:: \lambda = \tfrac12(\cos(\pi\,\mathrm{clip}(e, 0, L) / L) + 1)
                      (\lambda_{max} - \lambda_{min}) + \lambda_{min}

  ``epoch`` counted from 1 as the official loop (``for epoch in range(1, epochs + 1)``); the
  official CIFAR command uses ``max 0, min -1, loops 10``.
  """
  if num_loops <= 0:
    raise ValueError(f"`num_loops` must be > 0, got {num_loops}.")
  e = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, num_loops)
  value = (jnp.cos(e * math.pi / num_loops) + 1.0) * 0.5
  return value * (max_value - min_value) + min_value


def ctkd_temperature(temperature_param: chex.Array, grad_scale: chex.Numeric, *,
                     t_start: float = 1.0, t_end: float = 20.0) -> jax.Array:
  """``t_start + t_end * sigmoid(GRL(param, lambda))`` (helper/loops.py:133-134).

  ``temperature_param`` is the learnable global scalar (official init 1, so T starts at
  ``1 + 20 sigmoid(1) = 15.6``), ``grad_scale`` the curriculum's ``lambda``. The range
  ``(t_start, t_start + t_end)`` needs ``t_start >= 0`` and a width ``t_end > 0``; under jit,
  a traced ``t_end`` <= 0 gives NaN.
  """
  if not numerics.is_traced(t_start) and not 0 <= float(t_start) < math.inf:
    raise ValueError(f"`t_start` must be a finite number >= 0, got {t_start!r}.")
  numerics.check_positive("t_end", t_end)
  temperature = t_start + t_end * jax.nn.sigmoid(gradient_reversal(
      jnp.asarray(temperature_param, jnp.float32), jnp.asarray(grad_scale, jnp.float32)))
  return numerics.nan_unless_positive(temperature, t_end)


def ctkd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array | None = None,
    *,
    temperature_param: chex.Array,
    grad_scale: chex.Numeric,
    t_start: float = 1.0,
    t_end: float = 20.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""``kd(z_s, z_t, temperature=T)`` with CTKD's learned, gradient-reversed ``T``.

  The student gets the ordinary KD gradient; ``temperature_param`` gets
  ``grad_scale * dL/dparam``. Wrap with ``with_standardized_logits`` for CTKD + LS. Weights
  (official ``-r 0.1 -a 0.9``; ``-a 9`` with LS) are the recipe's.

  Args:
    student_logits, teacher_logits, labels, where, weights, reduction: as in
      :func:`logitlab.losses.kd`.
    temperature_param: scalar learnable parameter (``logitlab.kd_recipes`` adds it to the
      student).
    grad_scale: ``lambda`` of :func:`ctkd_lambda` at the current epoch.
    t_start, t_end: the temperature range ``(t_start, t_start + t_end)``.
  """
  if jnp.ndim(temperature_param) != 0:
    raise ValueError(f"`temperature_param` must be a scalar, got shape "
                     f"{jnp.shape(temperature_param)}.")
  temperature = ctkd_temperature(temperature_param, grad_scale, t_start=t_start, t_end=t_end)
  return kd(student_logits, teacher_logits, labels, temperature=temperature, where=where,
            weights=weights, reduction=reduction)
