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
import numpy as np

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
  """``labels`` are integers with the batch shape ``logits.shape[:-1]`` (static checks only)."""
  if not hasattr(labels, "dtype") or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"`{name}` must be an integer array of class indices, got "
                    f"{getattr(labels, 'dtype', type(labels).__name__)}.")
  if tuple(labels.shape) != tuple(logits.shape[:-1]):
    raise ValueError(f"`{name}` must have the batch shape of `{logits_name}` "
                     f"{tuple(logits.shape[:-1])} (logits [..., C] -> labels [...]), got shape "
                     f"{tuple(labels.shape)}.")


def valid_labels(name: str, labels: chex.Array, logits_name: str, logits: chex.Array,
                 where: chex.Array | None = None) -> jax.Array:
  """The one out-of-range label policy of ``logitlab.losses`` (docs/architecture.md).

  Static checks as :func:`check_labels`; then every label of a *valid* example (``where``
  true) must lie in ``[0, C)``. Concrete labels raise ``ValueError`` naming ``name`` and the
  range; under ``jit`` the returned bool ``[...]`` mask is False for those examples and the
  loss poisons them with NaN (:func:`poison`). Masked-out examples (``where`` false, e.g.
  padding labelled -1) are never checked and never poisoned.
  """
  check_labels(name, labels, logits_name, logits)
  num_classes = logits.shape[-1]
  labels = jnp.asarray(labels)
  ok = (labels >= 0) & (labels < num_classes)
  if where is not None:
    numerics.check_mask("where", where, labels.shape)
    ok = ok | ~jnp.broadcast_to(jnp.asarray(where).astype(bool), labels.shape)
  got = None
  if not numerics.is_traced(ok) and not bool(jnp.all(ok)):
    bad = np.asarray(labels)[~np.asarray(ok)]
    got = f"{bad.size} out-of-range label(s), e.g. {bad[:4].tolist()}"
  return numerics.check_values(name, ok, f"class indices in [0, {num_classes})", got)


def valid_soft_labels(name: str, labels: chex.Array, logits_name: str, logits: chex.Array,
                      where: chex.Array | None = None, atol: float = 1e-3) -> jax.Array:
  """Soft / mixed labels (mixup, CutMix): ``[..., C]`` rows >= 0 summing to 1 (+- ``atol``).

  Same policy as :func:`valid_labels`: concrete violations raise, traced ones give a False
  entry in the returned bool ``[...]`` mask, masked-out rows are not checked.
  """
  numerics.check_logits(name, labels)
  numerics.check_same_shape((logits_name, name), logits, labels)
  labels = numerics.upcast(labels)
  ok = jnp.all(labels >= 0, axis=-1) & (jnp.abs(jnp.sum(labels, axis=-1) - 1.0) <= atol)
  if where is not None:
    numerics.check_mask("where", where, ok.shape)
    ok = ok | ~jnp.broadcast_to(jnp.asarray(where).astype(bool), ok.shape)
  return numerics.check_values(name, ok, "probability vectors (entries >= 0, rows summing "
                               f"to 1 within {atol})", "a row outside the simplex")


def check_any_labels(labels: chex.Array | None, logits_name: str, logits: chex.Array,
                     where: chex.Array | None = None) -> jax.Array:
  """Validity mask ``[...]`` for integer or soft ``labels`` (all True when ``labels`` is None)."""
  if labels is None:
    return jnp.ones(logits.shape[:-1], bool)
  check = valid_soft_labels if is_soft(labels) else valid_labels
  return check("labels", labels, logits_name, logits, where)


def hard_labels(labels: chex.Array) -> jax.Array:
  """Integer labels ``[...]``: the argmax class of soft labels (cls_KD's rule for NKD,
  mmcls/models/dis_losses/nkd.py:25-26), integer labels unchanged."""
  return jnp.argmax(labels, axis=-1) if is_soft(labels) else jnp.asarray(labels)


def is_soft(labels: chex.Array) -> bool:
  """True for float labels ``[..., C]`` (soft / mixed), False for integer class indices."""
  return hasattr(labels, "dtype") and jnp.issubdtype(labels.dtype, jnp.floating)


def poison(per_example: jax.Array, ok: jax.Array) -> jax.Array:
  """NaN for the examples whose ``ok`` is False (the traced half of the label policy)."""
  return numerics.nan_unless(per_example, ok)


def check_positive(name: str, value: chex.Numeric) -> None:
  """Raises unless a concrete ``value`` is finite and > 0 (traced values pass)."""
  numerics.check_positive(name, value)


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
