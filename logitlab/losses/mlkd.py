"""Multi-level logit distillation, MLKD (Jin, Wang & Lin, CVPR 2023, arXiv 2303.14757).

Instance-, batch- and class-level alignment of teacher and student predictions at several
temperatures, on a weakly and a strongly augmented view of each batch. Ported from the
official code (Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py; the
logit-standardization repository's MLKD.py adds the ``logit_stand`` switch), quirks included:

* every KD term is a batch mean *multiplied by* the mean of the confidence mask (a scalar
  times a ``[B]`` mask, then ``.mean()``), so the mask scales the term by the fraction of
  low-confidence examples (``confidence <= median``, about 1/2) instead of selecting them;
* the strong-view KD sum computes its last two temperatures (2 and 6) on the *weak* view;
* the class- and batch-correlation terms of the strong view are computed but not trained
  (only ``loss_cc_weak`` and ``loss_bc_weak`` reach the loss dict);
* logit standardization (arXiv 2403.01427) applies to the KD terms only, not to the
  correlation terms.

The CE term (``ce_weight * (CE(weak) + CE(strong))``) and ``kd_weight`` are the recipe's
(``logitlab.kd_recipes``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses import _common
from logitlab.losses.kd import kd
from logitlab.losses.standardize import standardize

# The official temperature list: the configured one followed by these (KD_ours.py:113-150).
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def _probs(logits, temperature, valid):
  """``[B, C]`` probabilities (0 on masked rows), unsharded: the correlation matrices
  contract over the batch or the classes, which Explicit meshes cannot leave ambiguous."""
  probs = jnp.where(valid[:, None], jnp.exp(numerics.log_softmax(logits, temperature)), 0.0)
  return numerics.gather_axis(numerics.gather_axis(probs, 0), 1)


def _class_correlation(student_logits, teacher_logits, temperature, valid):
  """``sum((Q_t^T Q_t - Q_s^T Q_s)^2) / C`` (KD_ours.py ``cc_loss``), ``Q`` the [B, C] probs."""
  ps, pt = _probs(student_logits, temperature, valid), _probs(teacher_logits, temperature, valid)
  return jnp.sum((pt.T @ pt - ps.T @ ps) ** 2) / student_logits.shape[-1]


def _batch_correlation(student_logits, teacher_logits, temperature, valid):
  """``sum((Q_t Q_t^T - Q_s Q_s^T)^2) / B`` (KD_ours.py ``bc_loss``) over the valid rows."""
  ps, pt = _probs(student_logits, temperature, valid), _probs(teacher_logits, temperature, valid)
  count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  return jnp.sum((pt @ pt.T - ps @ ps.T) ** 2) / count


def _fraction_at_most_median(values, valid):
  """``mean(values <= percentile(values, 50))`` over the valid entries (numpy's linear
  interpolation, as ``np.percentile`` in KD_ours.py:98-109)."""
  # A percentile sorts: the whole axis on one device (numerics.gather_axis, Explicit meshes).
  median = jnp.nanpercentile(numerics.gather_axis(jnp.where(valid, values, jnp.nan), 0), 50.0)
  hits = jnp.where(valid, values <= median, False)
  return jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def mlkd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array | None = None,
    *,
    strong_student_logits: chex.Array,
    strong_teacher_logits: chex.Array,
    temperature: float = 4.0,
    extra_temperatures: tuple[float, ...] = EXTRA_TEMPERATURES,
    logit_standardization: bool = False,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""MLKD distillation terms ``kd + cc + bc`` (unweighted) and its parts.

  With temperatures ``T_k`` = ``(temperature, *extra_temperatures)``, ``m`` the fraction of
  examples whose teacher confidence ``max softmax(z_t^{weak})`` is at most the batch median
  and ``m_c`` the fraction of classes whose summed teacher probability is at most the
  class median (both constants):

  .. math::
     kd = \sum_k m\,KD(z_s^w, z_t^w, T_k) + \sum_k KD(z_s^{v_k}, z_t^{v_k}, T_k), \quad
     cc = m_c \sum_k \frac{\|Q_t^T Q_t - Q_s^T Q_s\|^2}{C}, \quad
     bc = m \sum_k \frac{\|Q_t Q_t^T - Q_s Q_s^T\|^2}{B}

  on the weak view, ``v_k`` the strong view for the first three temperatures and the weak
  view for the last two (official quirk, module docstring). The teacher is a constant.

  Args:
    student_logits, teacher_logits: ``[B, C]`` logits of the weak (crop + flip) view.
    labels: optional ``[B]`` labels, checked by the common policy and not used.
    strong_student_logits, strong_teacher_logits: ``[B, C]`` logits of the strong
      (RandAugment) view of the same images.
    temperature: the configured temperature (official: 4; 2 with logit standardization).
    extra_temperatures: the rest of the list (official ``(3, 5, 2, 6)``).
    logit_standardization: standardize the logits of the KD terms (not of cc / bc).
    where: optional ``[B]`` bool mask; dropped rows leave every term and both medians.
    weights, reduction: only ``None`` / ``"mean"``: the batch- and class-level terms couple
      the examples, so there is no per-example value to weight.

  Returns:
    ``(total, parts)`` with ``parts`` ``kd``, ``cc``, ``bc`` (float32 scalars).
  """
  for name, value in (("teacher_logits", teacher_logits),
                      ("strong_student_logits", strong_student_logits),
                      ("strong_teacher_logits", strong_teacher_logits)):
    _common.check_logit_pair("student_logits", student_logits, name, value)
  if student_logits.ndim != 2:
    raise ValueError(f"`student_logits` must be [B, C] (MLKD couples the batch), got shape "
                     f"{tuple(student_logits.shape)}.")
  if weights is not None or reduction != "mean":
    raise ValueError("`weights` and `reduction` other than None / 'mean' are not defined for "
                     "MLKD (its batch- and class-level terms couple the examples).")
  temperatures = (temperature, *extra_temperatures)
  for value in temperatures:
    _common.check_positive("temperature", value)
  ok = _common.check_any_labels(labels, "student_logits", student_logits, where)
  valid = jnp.ones(student_logits.shape[:1], bool) if where is None else jnp.broadcast_to(
      jnp.asarray(where).astype(bool), student_logits.shape[:1])
  numerics.check_mask("where", where, student_logits.shape[:1])
  teacher_logits = jax.lax.stop_gradient(numerics.upcast(teacher_logits))
  strong_teacher_logits = jax.lax.stop_gradient(numerics.upcast(strong_teacher_logits))

  teacher_probs = jnp.exp(numerics.log_softmax(teacher_logits))
  instance_fraction = _fraction_at_most_median(jnp.max(teacher_probs, axis=-1), valid)
  class_mass = jnp.sum(jnp.where(valid[:, None], teacher_probs, 0.0), axis=0)
  class_fraction = _fraction_at_most_median(class_mass, jnp.ones(class_mass.shape, bool))

  def kd_term(zs, zt, t):
    if logit_standardization:
      zs, zt = standardize(zs), standardize(zt)
    return kd(zs, zt, temperature=t, where=valid)

  weak = [(student_logits, teacher_logits)] * len(temperatures)
  strong = [(strong_student_logits, strong_teacher_logits)] * 3 + weak[3:]
  parts = {
      "kd": sum(instance_fraction * kd_term(*weak[k], t) + kd_term(*strong[k], t)
                for k, t in enumerate(temperatures)),
      "cc": class_fraction * sum(_class_correlation(student_logits, teacher_logits, t, valid)
                                 for t in temperatures),
      "bc": instance_fraction * sum(_batch_correlation(student_logits, teacher_logits, t,
                                                       valid) for t in temperatures),
  }
  all_ok = jnp.all(ok | ~valid)
  parts = {name: numerics.nan_unless(value, all_ok) for name, value in parts.items()}
  return parts["kd"] + parts["cc"] + parts["bc"], parts
