"""Cross-entropy with integer labels or soft targets: the supervised term of every KD recipe."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses import _common


def cross_entropy(
    logits: chex.Array,
    labels: chex.Array,
    *,
    label_smoothing: float = 0.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Softmax cross-entropy with (optionally smoothed) integer labels.

  Per example, with ``eps = label_smoothing`` and ``C`` classes the target distribution is
  ``y = (1 - eps) onehot(t) + eps / C`` and

  .. math:: \ell = -\sum_i y_i \log \mathrm{softmax}(z)_i
                 = -(1 - \epsilon) \log p_t - \frac{\epsilon}{C} \sum_i \log p_i .

  (USKD's weak head uses ``eps = 0.1``, i.e. ``0.9 onehot + 0.1 / C``; arXiv 2303.13005.)

  Args:
    logits: ``[..., C]`` float logits (bf16 accepted; math in float32).
    labels: ``[...]`` integer class indices in ``[0, C)``.
    label_smoothing: ``eps`` in ``[0, 1]``.
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).

  Returns:
    float32 scalar, or ``[...]`` for ``reduction="none"``.
  """
  numerics.check_logits("logits", logits)
  _common.check_labels("labels", labels, "logits", logits)
  log_probs = numerics.log_softmax(logits)
  per_example = -_common.take_class(log_probs, labels)
  if label_smoothing:
    per_example = ((1.0 - label_smoothing) * per_example
                   - label_smoothing * jnp.mean(log_probs, axis=-1))
  return _common.reduce_loss(per_example, where=where, weights=weights, reduction=reduction)


def soft_cross_entropy(
    logits: chex.Array,
    target_probs: chex.Array,
    *,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Cross-entropy against a soft target: ``-\sum_i q_i \log \mathrm{softmax}(z)_i``.

  ``0 log 0 = 0``: classes with zero target mass (e.g. a dropped target class whose logit is
  ``-inf``) contribute nothing and get no gradient. ``target_probs`` is a constant
  (``stop_gradient``), as soft labels are in every method here.

  Args:
    logits: ``[..., C]`` float logits.
    target_probs: ``[..., C]`` probability vectors (rows summing to 1).
    where, weights, reduction: as in :func:`cross_entropy`.
  """
  numerics.check_logits("logits", logits)
  numerics.check_logits("target_probs", target_probs)
  numerics.check_same_shape(("logits", "target_probs"), logits, target_probs)
  target_probs = jax.lax.stop_gradient(numerics.upcast(target_probs))
  per_example = -jnp.sum(numerics.xlogy_probs(target_probs, numerics.log_softmax(logits)),
                         axis=-1)
  return _common.reduce_loss(per_example, where=where, weights=weights, reduction=reduction)
