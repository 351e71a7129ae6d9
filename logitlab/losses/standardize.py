"""Logit standardization (Sun et al., CVPR 2024, arXiv 2403.01427).

A Z-score pre-process applied to student and teacher logits separately before any logit
loss, so the student matches the teacher's logit *relations* rather than their range:

  ``kd(standardize(z_s), standardize(z_t), temperature=2.0)``

(reference defaults: base temperature 2, KD weight 9, CE weight 0.1). The standardized
logits are invariant to a per-sample shift and positive scale of the raw logits.
"""

from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics


def standardize(logits: chex.Array, *, axis: int = -1, eps: float = 1e-7,
                ddof: int = 1) -> jax.Array:
  r"""Z-score along ``axis``: ``(z - mean(z)) / (eps + std(z))`` in float32.

  ``std`` uses ``ddof=1`` (unbiased), as the reference code (``torch.std``). ``eps`` is
  added to the std (not the variance), as in the reference. The std's gradient is
  defined as 0 on constant rows (which map to all-zero logits), so constant inputs give
  finite gradients instead of NaN.

  Args:
    logits: ``[..., C]`` float logits (bf16 accepted) with ``C > ddof``.
    axis: the class axis.
    eps: added to the standard deviation.
    ddof: delta degrees of freedom of the standard deviation.

  Returns:
    float32 array of the shape of ``logits``.
  """
  numerics.check_logits("logits", logits)
  if not (isinstance(eps, (int, float)) and eps >= 0):
    raise ValueError(f"`eps` must be a number >= 0, got {eps!r}.")
  num_classes = logits.shape[axis]
  if num_classes <= ddof:
    raise ValueError(f"`logits` needs more than ddof={ddof} entries along axis {axis} to "
                     f"standardize, got shape {tuple(logits.shape)}.")
  logits = numerics.upcast(logits)
  centered = logits - jnp.mean(logits, axis=axis, keepdims=True)
  variance = jnp.sum(centered**2, axis=axis, keepdims=True) / (num_classes - ddof)
  # sqrt has an infinite derivative at 0: evaluate it on a safe value for constant rows.
  is_constant = variance <= 0
  std = jnp.where(is_constant, 0.0, jnp.sqrt(jnp.where(is_constant, 1.0, variance)))
  return centered / (eps + std)


def with_standardized_logits(loss_fn: Callable[..., jax.Array], *,
                             temperature: float | None = 2.0,
                             **standardize_kwargs) -> Callable[..., jax.Array]:
  """Wraps a ``loss_fn(student_logits, teacher_logits, *args, **kwargs)`` so both logit
  arguments are standardized first (arXiv 2403.01427), e.g.
  ``with_standardized_logits(dkd)(z_s, z_t, labels)``.

  ``temperature`` (default 2, the paper's base temperature, ``--base-temp 2`` in
  logit-standardization-KD tools/train.py:103) becomes the default ``temperature=`` of the
  wrapped call; a call that passes ``temperature`` overrides it, and ``None`` passes
  nothing (for losses without a temperature). ``standardize_kwargs`` (``eps``, ``ddof``) are
  forwarded to :func:`standardize`.
  """
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be a callable loss, got {type(loss_fn).__name__}.")
  unknown = set(standardize_kwargs) - {"axis", "eps", "ddof"}
  if unknown:
    raise TypeError(f"`standardize_kwargs` may hold axis, eps, ddof; got {sorted(unknown)}.")
  if temperature is not None:
    numerics.check_positive("temperature", temperature)

  @functools.wraps(loss_fn)
  def standardized_loss(student_logits, teacher_logits, *args, **kwargs):
    if temperature is not None:
      kwargs.setdefault("temperature", temperature)
    return loss_fn(standardize(student_logits, **standardize_kwargs),
                   standardize(teacher_logits, **standardize_kwargs), *args, **kwargs)

  return standardized_loss
