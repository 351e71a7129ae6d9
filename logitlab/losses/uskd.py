"""Universal self-knowledge distillation, USKD (Yang et al., ICCV 2023, arXiv 2303.13005).

Teacher-free: the soft labels are built from the student itself. The target soft label
is the student's smoothed target probability; the non-target soft labels follow Zipf's
law over a class ranking given by an auxiliary linear head on a middle feature (GAP of the
second-to-last stage for CNNs, the cls token at depth/2 for ViTs) plus the student.
The auxiliary head is trained with a weak, label-smoothed CE.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.losses import _common
from logitlab.losses.cross_entropy import cross_entropy, soft_cross_entropy

RANK_SCORES = ("probs", "log_probs")


def _label_columns(labels: chex.Array) -> tuple[jax.Array, jax.Array]:
  """``(classes [..., K], values [..., K])``: the labelled classes and their label mass.

  Integer labels: ``K = 1``, value 1. Soft / mixed labels: the two largest entries, as cls_KD
  (mmcls/models/dis_losses/uskd.py:33-36, ``torch.sort(gt_label, descending=True)[:, :2]``;
  ``lax.top_k`` breaks ties to the lower index like a stable sort).
  """
  if _common.is_soft(labels):
    values, classes = jax.lax.top_k(
        numerics.gather_axis(jax.lax.stop_gradient(numerics.upcast(labels))), 2)
    return classes, values
  classes = jnp.asarray(labels)[..., None]
  return classes, jnp.ones(classes.shape, jnp.float32)


def _take_columns(values: jax.Array, classes: jax.Array) -> jax.Array:
  """``values[..., classes]``: ``[..., C]``, ``[..., K]`` -> ``[..., K]`` (one-hot selects,
  sharding-agnostic, ``numerics.take_class``)."""
  return jnp.stack([numerics.take_class(values, classes[..., k])
                    for k in range(classes.shape[-1])], axis=-1)


def _masked_batch_mean(values: jax.Array, where: jax.Array) -> jax.Array:
  """Mean of ``values [..., K]`` over every leading axis, counting ``where [...]`` only."""
  axes = tuple(range(values.ndim - 1))
  where = jnp.broadcast_to(where[..., None], values.shape)
  total = jnp.sum(jnp.where(where, values, 0.0), axis=axes)
  return total / jnp.maximum(jnp.sum(where, axis=axes).astype(jnp.float32), 1.0)


def _check(student_logits, labels, where):
  numerics.check_logits("student_logits", student_logits)
  ok = _common.check_any_labels(labels, "student_logits", student_logits, where)
  valid = ok if where is None else ok & jnp.broadcast_to(
      jnp.asarray(where).astype(bool), ok.shape)
  return ok, valid


def _target_soft_labels(student_logits, labels, valid) -> tuple[jax.Array, jax.Array]:
  """``(y [..., K], log p at the labelled classes [..., K])``; y is a constant."""
  classes, values = _label_columns(labels)
  log_probs = _take_columns(numerics.log_softmax(student_logits), classes)
  target_prob_sq = jnp.exp(2.0 * jax.lax.stop_gradient(log_probs))
  soft = target_prob_sq + values - _masked_batch_mean(target_prob_sq, valid)
  return jnp.where(values == 0, 0.0, soft), log_probs


def uskd_target_soft_labels(
    student_logits: chex.Array,
    labels: chex.Array,
    *,
    where: chex.Array | None = None,
) -> jax.Array:
  r"""Soft target labels ``y_t = p_t^2 + v_t - mean_batch(p_t^2)`` (constants).

  ``p_t = softmax(z_s)_t``, ``v_t`` the label mass of class ``t`` (1 for integer labels).
  The batch mean runs over all valid examples (all leading dimensions, ``where``
  respected). Squaring sharpens the contrast between easy and hard examples; the shift
  keeps the batch mean of ``y_t`` at ``v_t``. Integer labels give ``[...]``; soft / mixed
  labels give ``[..., 2]`` for their two largest classes (0 where that class has no mass),
  as cls_KD (mmcls/models/dis_losses/uskd.py:44-51).
  """
  ok, valid = _check(student_logits, labels, where)
  soft, _ = _target_soft_labels(student_logits, labels, valid)
  soft = numerics.nan_unless(soft, ok[..., None])
  return soft if _common.is_soft(labels) else soft[..., 0]


def _zipf_labels(student_logits, aux_logits, labels, student_rank_scores) -> tuple:
  """``(zipf [..., C], labelled [..., C] bool)``: Zipf non-target labels and their mask."""
  num_classes = student_logits.shape[-1]
  classes, _ = _label_columns(labels)
  labelled = jnp.any(jnp.arange(num_classes) == classes[..., None], axis=-2)
  aux_probs = jnp.exp(numerics.log_softmax(jax.lax.stop_gradient(aux_logits)))
  student_scores = numerics.log_softmax(jax.lax.stop_gradient(student_logits))
  if student_rank_scores == "probs":
    student_scores = jnp.exp(student_scores)

  def normalized(scores):
    labelled_mass = jnp.sum(_take_columns(scores, classes), axis=-1)
    return scores / (1.0 - labelled_mass[..., None] + 1e-6)

  # top_k needs the whole class axis on a device (an explicit all-gather under Explicit
  # sharding; numerics.gather_axis) and sorts descending with ties to the lower index.
  rank_score = numerics.gather_axis(normalized(aux_probs) + normalized(student_scores))
  _, order = jax.lax.top_k(rank_score, num_classes)
  # rank[i] = position of class i in the descending order (0 = highest score). A second
  # sort inverts the permutation; a scatter (`put_along_axis`) would be ~2x faster on CPU
  # but its output sharding is ambiguous for batch-sharded rows (a sharding type error).
  rank = jnp.argsort(order, axis=-1)
  zipf = jnp.where(labelled, 0.0, 1.0 / (rank + 1).astype(jnp.float32))
  return zipf / jnp.sum(zipf, axis=-1, keepdims=True), labelled


def _check_rank_scores(student_rank_scores):
  if student_rank_scores not in RANK_SCORES:
    raise ValueError(f"`student_rank_scores` must be one of {RANK_SCORES}, got "
                     f"{student_rank_scores!r}.")


def uskd_zipf_labels(
    student_logits: chex.Array,
    aux_logits: chex.Array,
    labels: chex.Array,
    *,
    student_rank_scores: str = "probs",
) -> jax.Array:
  r"""Zipf non-target soft labels ``[..., C]`` (labelled entries 0, rows sum to 1; constants).

  Rank score per class ``r = w / (1 - w_t) + s / (1 - s_t)`` with ``w = softmax(aux)``
  (the auxiliary head) and ``s`` the student's scores (``w_t, s_t`` summed over the two
  labelled classes of soft labels). Classes sorted by ``r`` descending get ``1 / k`` at
  rank ``k = 1, 2, ...`` (ties broken by class index); the labelled classes are dropped and
  the rest renormalized (cls_KD uskd.py:72-87).

  ``student_rank_scores="probs"`` (default) uses ``s = softmax(z_s)`` as the paper writes
  it. The cls_KD code passes ``s = log_softmax(z_s)`` (uskd.py:53 then 73; the two terms then
  have different scales and the student term dominates the ranking); ``"log_probs"``
  reproduces it and is what a config claiming a paper row must use. Both use the
  reference's ``+1e-6`` in the denominators.
  """
  _common.check_logit_pair("student_logits", student_logits, "aux_logits", aux_logits)
  _check_rank_scores(student_rank_scores)
  ok = _common.check_any_labels(labels, "student_logits", student_logits)
  zipf, _ = _zipf_labels(student_logits, aux_logits, labels, student_rank_scores)
  return numerics.nan_unless(zipf, ok[..., None])


def uskd(
    student_logits: chex.Array,
    aux_logits: chex.Array,
    labels: chex.Array,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    mu: float = 0.005,
    student_rank_scores: str = "probs",
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""USKD total loss ``CE + alpha L_t + beta L_non + mu L_weak`` and its parts.

  .. math::
     L_t = -\sum_t y_t \log p_t, \quad
     L_{non} = -\sum_{i \notin t} \mathrm{zipf}_i \log \hat p_i, \quad
     L_{weak} = \mathrm{CE}(aux, 0.9\,q + 0.1 / C)

  with ``y_t`` from :func:`uskd_target_soft_labels`, ``zipf`` from
  :func:`uskd_zipf_labels`, ``q`` the one-hot or soft label and ``\hat p`` the student
  softmax over the unlabelled classes (cls_KD mmcls/models/dis_losses/uskd.py:31-93; the CE
  term is the trainer's there and is included here). Defaults are the ImageNet setting
  (``alpha=1, beta=0.1, mu=0.005``); CIFAR-100 uses ``0.1, 0.1, 0.1``.

  Args:
    student_logits: ``[..., C]`` final-head logits (bf16 accepted; math in float32).
    aux_logits: ``[..., C]`` logits of the auxiliary linear head on a middle feature (it plays
      the teacher's role: the ranking source).
    labels: ``[...]`` integer target classes or ``[..., C]`` soft / mixed (mixup, CutMix)
      labels. Out of range: ValueError when concrete, NaN for that example under jit.
    alpha, beta, mu: weights of ``L_t``, ``L_non``, ``L_weak``.
    student_rank_scores: see :func:`uskd_zipf_labels`.
    where: optional bool mask broadcastable to ``[...]``; False drops an example (also
      from the batch mean inside ``y_t``).
    weights: optional per-example weights broadcastable to ``[...]``.
    reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, applied to every part.

  Returns:
    ``(total, parts)``: float32 scalars (``[...]`` for ``reduction="none"``); ``parts`` has
    keys ``ce``, ``target``, ``non_target``, ``weak`` (unweighted).
  """
  _common.check_logit_pair("student_logits", student_logits, "aux_logits", aux_logits)
  _check_rank_scores(student_rank_scores)
  ok, valid = _check(student_logits, labels, where)
  soft_target, log_target = _target_soft_labels(student_logits, labels, valid)
  zipf, labelled = _zipf_labels(student_logits, aux_logits, labels, student_rank_scores)
  non_target_logits = jnp.where(labelled, -jnp.inf, numerics.upcast(student_logits))
  per_example = {
      "ce": cross_entropy(student_logits, labels, where=where, reduction="none"),
      "target": -jnp.sum(soft_target * log_target, axis=-1),
      "non_target": soft_cross_entropy(non_target_logits, zipf, reduction="none"),
      "weak": cross_entropy(aux_logits, labels, label_smoothing=0.1, where=where,
                            reduction="none"),
  }
  parts = {name: _common.reduce_loss(_common.poison(value, ok), where=where, weights=weights,
                                     reduction=reduction)
           for name, value in per_example.items()}
  total = (parts["ce"] + alpha * parts["target"] + beta * parts["non_target"]
           + mu * parts["weak"])
  return total, parts
