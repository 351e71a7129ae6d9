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
    label_smoothing: ``eps`` in ``[0, 1]`` (a traced value outside it gives NaN under jit).
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).

  Returns:
    float32 scalar, or ``[...]`` for ``reduction="none"``.
  """
  numerics.check_logits("logits", logits)
  _common.check_labels("labels", labels, "logits", logits)
  smoothing_ok = numerics.check_values(
      "label_smoothing", (label_smoothing >= 0) & (label_smoothing <= 1), "in [0, 1]",
      label_smoothing)
  log_probs = numerics.log_softmax(logits)
  per_example = -_common.take_class(log_probs, labels)
  if numerics.is_traced(label_smoothing) or label_smoothing:
    per_example = ((1.0 - label_smoothing) * per_example
                   - label_smoothing * jnp.mean(log_probs, axis=-1))
    per_example = numerics.nan_unless(per_example, smoothing_ok)
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
    target_probs: ``[..., C]`` probability vectors (entries >= 0, rows summing to 1 within
      1e-3); under jit a row that is not one gives NaN for that example.
    where, weights, reduction: as in :func:`cross_entropy`.
  """
  numerics.check_logits("logits", logits)
  numerics.check_logits("target_probs", target_probs)
  numerics.check_same_shape(("logits", "target_probs"), logits, target_probs)
  target_probs = jax.lax.stop_gradient(numerics.upcast(target_probs))
  row_sums = jnp.sum(target_probs, axis=-1)
  ok = numerics.check_values(
      "target_probs", jnp.all(target_probs >= 0, axis=-1) & (jnp.abs(row_sums - 1) <= 1e-3),
      "probability vectors (entries >= 0, rows summing to 1)",
      f"row sums in [{jnp.min(row_sums, initial=1.0)}, {jnp.max(row_sums, initial=1.0)}]")
  per_example = -jnp.sum(numerics.xlogy_probs(target_probs, numerics.log_softmax(logits)),
                         axis=-1)
  per_example = numerics.nan_unless(per_example, ok)
  return _common.reduce_loss(per_example, where=where, weights=weights, reduction=reduction)
