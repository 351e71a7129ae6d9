"""Argument checks and reductions shared by every loss in ``logitlab.losses``.

Every loss computes a per-example value of shape ``batch_shape = logits.shape[:-1]`` and
reduces it here, so masking, weighting and the ``reduction`` contract live in one place:

* ``where`` (bool, broadcastable to ``batch_shape``) drops examples; ``weights``
  (float, broadcastable to ``batch_shape``) scales each example's loss.
* ``reduction="mean"``: ``sum(where * weights * loss) / max(sum(where), 1)``, i.e. the
  mean over *valid* examples (weights rescale, they do not renormalize), 0 if all masked.
* ``reduction="sum"``: ``sum(where * weights * loss)``.
* ``reduction="none"``: ``where * weights * loss`` with shape ``batch_shape`` (masked
  entries are exactly 0).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics

REDUCTIONS = ("mean", "sum", "none")


def check_logit_pair(student_name: str, student_logits: chex.Array, teacher_name: str,
                     teacher_logits: chex.Array) -> None:
  """Both arguments are float ``[..., C]`` arrays of the same shape."""
  numerics.check_logits(student_name, student_logits)
  numerics.check_logits(teacher_name, teacher_logits)
  numerics.check_same_shape((student_name, teacher_name), student_logits, teacher_logits)


def check_labels(name: str, labels: chex.Array, logits_name: str,
                 logits: chex.Array) -> None:
  """``labels`` are integers with the batch shape ``logits.shape[:-1]``."""
  if not hasattr(labels, "dtype") or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"`{name}` must be an integer array of class indices, got "
                    f"{getattr(labels, 'dtype', type(labels).__name__)}.")
  if tuple(labels.shape) != tuple(logits.shape[:-1]):
    raise ValueError(f"`{name}` must have the batch shape of `{logits_name}` "
                     f"{tuple(logits.shape[:-1])} (logits [..., C] -> labels [...]), got shape "
                     f"{tuple(labels.shape)}.")


def check_positive(name: str, value: chex.Numeric) -> None:
  """Raises unless a Python-number ``value`` is > 0 (arrays, possibly traced, pass)."""
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"`{name}` must be > 0, got {value}.")


def target_mask(labels: chex.Array, num_classes: int) -> jax.Array:
  """Boolean one-hot ``[..., C]`` marking the target class of each example."""
  return jnp.arange(num_classes) == jnp.asarray(labels)[..., None]


def drop_target(logits: jax.Array, labels: chex.Array) -> jax.Array:
  """float32 logits with the target entry set to ``-inf``.

  A softmax of the result is the softmax over the C-1 non-target classes (the target has
  probability exactly 0 at any logit magnitude; a finite offset such as mdistiller's
  ``- 1000 * gt_mask`` does not mask a 1e4 logit).
  """
  logits = numerics.upcast(logits)
  return jnp.where(target_mask(labels, logits.shape[-1]), -jnp.inf, logits)


# ``values[..., labels]`` per example (one-hot select: sharding-agnostic, NaN off range).
take_class = numerics.take_class


def reduce_loss(per_example: jax.Array, *, where: chex.Array | None,
                weights: chex.Array | None, reduction: str) -> jax.Array:
  """Applies the module-level ``where`` / ``weights`` / ``reduction`` contract."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
  batch_shape = per_example.shape
  numerics.check_mask("where", where, batch_shape)
  numerics.check_mask("weights", weights, batch_shape)
  if weights is not None:
    per_example = per_example * numerics.upcast(weights)
  if reduction == "mean":
    return numerics.masked_mean(per_example, where)
  if where is not None:
    # `jnp.where`, not a product, so a non-finite value at a masked slot cannot leak out.
    per_example = jnp.where(jnp.broadcast_to(jnp.asarray(where).astype(bool), batch_shape),
                            per_example, 0.0)
  return jnp.sum(per_example) if reduction == "sum" else per_example
