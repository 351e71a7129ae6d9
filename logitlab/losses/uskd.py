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


def uskd_target_soft_labels(
    student_logits: chex.Array,
    labels: chex.Array,
    *,
    where: chex.Array | None = None,
) -> jax.Array:
  r"""Soft target labels ``y_t = p_t^2 + 1 - mean_batch(p_t^2)`` (constants), shape ``[...]``.

  ``p_t = softmax(z_s)_t``; the batch mean runs over all valid examples (all leading
  dimensions, ``where`` respected). Squaring sharpens the contrast between easy and hard
  examples; the shift keeps the batch mean of ``y_t`` at 1.
  """
  numerics.check_logits("student_logits", student_logits)
  _common.check_labels("labels", labels, "student_logits", student_logits)
  target_prob_sq = jnp.exp(2.0 * _common.take_class(
      numerics.log_softmax(jax.lax.stop_gradient(student_logits)), labels))
  return target_prob_sq + 1.0 - numerics.masked_mean(target_prob_sq, where)


def uskd_zipf_labels(
    student_logits: chex.Array,
    aux_logits: chex.Array,
    labels: chex.Array,
    *,
    student_rank_scores: str = "probs",
) -> jax.Array:
  r"""Zipf non-target soft labels ``[..., C]`` (target entry 0, rows sum to 1; constants).

  Rank score per class ``r = w / (1 - w_t) + s / (1 - s_t)`` with ``w = softmax(aux)``
  (the auxiliary head) and ``s`` the student's scores. Classes sorted by ``r`` descending
  get ``1 / k`` at rank ``k = 1, 2, ...`` (ties broken by class index); the target is
  dropped and the rest renormalized.

  ``student_rank_scores="probs"`` (default) uses ``s = softmax(z_s)`` as the paper writes
  it. The cls_KD reference code passes ``s = log_softmax(z_s)`` (a quirk: the two terms
  then have different scales and the student term dominates the ranking);
  ``"log_probs"`` reproduces it. Both use the reference's ``+1e-6`` in the denominators.
  """
  _common.check_logit_pair("student_logits", student_logits, "aux_logits", aux_logits)
  _common.check_labels("labels", labels, "student_logits", student_logits)
  if student_rank_scores not in RANK_SCORES:
    raise ValueError(f"`student_rank_scores` must be one of {RANK_SCORES}, got "
                     f"{student_rank_scores!r}.")
  num_classes = student_logits.shape[-1]
  aux_probs = jnp.exp(numerics.log_softmax(jax.lax.stop_gradient(aux_logits)))
  student_scores = numerics.log_softmax(jax.lax.stop_gradient(student_logits))
  if student_rank_scores == "probs":
    student_scores = jnp.exp(student_scores)

  def normalized(scores):
    return scores / (1.0 - _common.take_class(scores, labels)[..., None] + 1e-6)

  # top_k needs the whole class axis on a device (an explicit all-gather under Explicit
  # sharding; numerics.gather_axis) and sorts descending with ties to the lower index.
  rank_score = numerics.gather_axis(normalized(aux_probs) + normalized(student_scores))
  _, order = jax.lax.top_k(rank_score, num_classes)
  # rank[i] = position of class i in the descending order (0 = highest score). A second
  # sort inverts the permutation; a scatter (`put_along_axis`) would be ~2x faster on CPU
  # but its output sharding is ambiguous for batch-sharded rows (a sharding type error).
  rank = jnp.argsort(order, axis=-1)
  zipf = jnp.where(_common.target_mask(labels, num_classes), 0.0,
                   1.0 / (rank + 1).astype(jnp.float32))
  return zipf / jnp.sum(zipf, axis=-1, keepdims=True)


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
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""USKD total loss ``CE + alpha L_t + beta L_non + mu L_weak`` and its parts.

  .. math::
     L_t = -y_t \log p_t, \quad
     L_{non} = -\sum_{i \ne t} \mathrm{zipf}_i \log \hat p_i, \quad
     L_{weak} = \mathrm{CE}(aux, 0.9\,\mathrm{onehot} + 0.1 / C)

  with ``y_t`` from :func:`uskd_target_soft_labels`, ``zipf`` from
  :func:`uskd_zipf_labels` and ``\hat p`` the student softmax over non-target classes.
  Every term is a mean over valid examples. Defaults are the ImageNet setting
  (``alpha=1, beta=0.1, mu=0.005``); CIFAR-100 uses ``0.1, 0.1, 0.1``.

  Args:
    student_logits: ``[..., C]`` final-head logits (bf16 accepted; math in float32).
    aux_logits: ``[..., C]`` logits of the auxiliary linear head on a middle feature.
    labels: ``[...]`` integer target classes.
    alpha, beta, mu: weights of ``L_t``, ``L_non``, ``L_weak``.
    student_rank_scores: see :func:`uskd_zipf_labels`.
    where: optional bool mask broadcastable to ``[...]``; False drops an example (also
      from the batch mean inside ``y_t``).
    weights: optional per-example weights broadcastable to ``[...]``.

  Returns:
    ``(total, parts)``: float32 scalars; ``parts`` has keys ``ce``, ``target``,
    ``non_target``, ``weak`` (unweighted).
  """
  reduce = dict(where=where, weights=weights, reduction="mean")
  soft_target = uskd_target_soft_labels(student_logits, labels, where=where)
  target_term = -soft_target * _common.take_class(numerics.log_softmax(student_logits), labels)
  zipf = uskd_zipf_labels(student_logits, aux_logits, labels,
                          student_rank_scores=student_rank_scores)
  parts = {
      "ce": cross_entropy(student_logits, labels, **reduce),
      "target": _common.reduce_loss(target_term, **reduce),
      "non_target": soft_cross_entropy(_common.drop_target(student_logits, labels), zipf,
                                       **reduce),
      "weak": cross_entropy(aux_logits, labels, label_smoothing=0.1, **reduce),
  }
  total = (parts["ce"] + alpha * parts["target"] + beta * parts["non_target"]
           + mu * parts["weak"])
  return total, parts
