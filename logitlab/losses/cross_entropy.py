"""Cross-entropy with integer, soft or mixed labels: the supervised term of every KD recipe."""

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
  r"""Softmax cross-entropy with integer class indices or soft (mixup / CutMix) labels.

  Per example the target distribution is ``y = (1 - eps) q + eps / C`` with ``eps =
  label_smoothing``, ``q = onehot(t)`` for integer labels or the given probability vector
  for soft labels, and

  .. math:: \ell = -\sum_i y_i \log \mathrm{softmax}(z)_i .

  USKD's weak head uses ``eps = 0.1`` on either kind, exactly as cls_KD builds its target
  (``gt_label * 0.9 + 0.1 / c``, mmcls/models/dis_losses/uskd.py:58-61; arXiv 2303.13005).

  Args:
    logits: ``[..., C]`` float logits (bf16 accepted; math in float32).
    labels: ``[...]`` integer class indices in ``[0, C)``, or ``[..., C]`` float probability
      vectors (soft / mixed labels; a constant, ``stop_gradient``).
    label_smoothing: ``eps`` in ``[0, 1]``.
    where: optional bool mask broadcastable to ``[...]``; False drops an example.
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` over valid examples (default), ``"sum"`` or ``"none"`` (``[...]``).

  Returns:
    float32 scalar, or ``[...]`` for ``reduction="none"``. Out-of-range integer labels (or
    soft rows off the simplex) raise when concrete; under jit they give NaN for that example
    (docs/architecture.md, jit-value policy).
  """
  numerics.check_logits("logits", logits)
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing}.")
  log_probs = numerics.log_softmax(logits)
  if _common.is_soft(labels):
    ok = _common.valid_soft_labels("labels", labels, "logits", logits, where)
    target = jax.lax.stop_gradient(numerics.upcast(labels))
    per_example = -jnp.sum(numerics.xlogy_probs(target, log_probs), axis=-1)
  else:
    ok = _common.valid_labels("labels", labels, "logits", logits, where)
    per_example = -_common.take_class(log_probs, labels)
  if label_smoothing:
    per_example = ((1.0 - label_smoothing) * per_example
                   - label_smoothing * jnp.mean(log_probs, axis=-1))
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


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
  (``stop_gradient``), as soft labels are in every method here. Rows are checked like
  :func:`cross_entropy`'s soft labels (concrete: raise; traced: NaN for that example).

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
