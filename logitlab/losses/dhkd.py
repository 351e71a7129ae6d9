"""Dual-head knowledge distillation, DHKD (Yang et al., arXiv 2411.08937).

A logit-level loss and the probability-level CE conflict in a shared linear classifier
(they collapse the head) but not in the backbone. DHKD therefore gives the backbone two
heads: head 1 is trained with CE and is the one used at test time; the auxiliary head 2
is trained with the bounded logit-level loss :func:`binary_kl_norm` against the teacher.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from logitlab import numerics
from logitlab.losses import _common
from logitlab.losses.cross_entropy import cross_entropy


def _log_cosh(x: jax.Array) -> jax.Array:
  """``log cosh x = |x| + log1p(exp(-2|x|)) - log 2``: no overflow for any finite x."""
  abs_x = jnp.abs(x)
  return abs_x + jnp.log1p(jnp.exp(-2.0 * abs_x)) - jnp.log(2.0)


def binary_kl_norm(
    aux_logits: chex.Array,
    teacher_logits: chex.Array,
    *,
    temperature: float = 2.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
  r"""Per-class binary KL between a fair coin and the sigmoid of the logit gap.

  .. math::
     \ell = T^2 \sum_k \mathrm{KL}\big(\mathrm{Bern}(1/2) \,\|\,
            \mathrm{Bern}(\sigma((z_{s,k} - z_{t,k}) / T))\big)
          = T^2 \sum_k \log\cosh\frac{z_{s,k} - z_{t,k}}{2T}

  minimized at ``z_s = z_t`` (a logit-level match, unlike KL on softmax which ignores a
  per-sample shift), with gradient ``(T / 2) tanh((z_s - z_t) / (2T))`` bounded by
  ``T / 2`` per logit. The teacher is a constant.

  Args:
    aux_logits: ``[..., C]`` logits of the auxiliary head (bf16 accepted; float32 math).
    teacher_logits: ``[..., C]``, same shape.
    temperature: ``T > 0`` (reference CIFAR quick start: 2).
    where, weights, reduction: as in :func:`logitlab.losses.kd`.
  """
  _common.check_logit_pair("aux_logits", aux_logits, "teacher_logits", teacher_logits)
  _common.check_positive("temperature", temperature)
  gap = (numerics.upcast(aux_logits)
         - numerics.upcast(jax.lax.stop_gradient(teacher_logits))) / temperature
  per_example = temperature**2 * jnp.sum(_log_cosh(0.5 * gap), axis=-1)
  return _common.reduce_loss(per_example, where=where, weights=weights, reduction=reduction)


def dhkd(
    head1_logits: chex.Array,
    head2_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    gamma: float = 1.0,
    alpha: float = 1.0,
    temperature: float = 2.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""DHKD total ``gamma CE(head1, y) + alpha BinaryKLNorm(head2, z_t)`` and its parts.

  Args:
    head1_logits: ``[..., C]`` logits of the main head (evaluated at test time).
    head2_logits: ``[..., C]`` logits of the auxiliary head on the same backbone feature.
    teacher_logits: ``[..., C]`` teacher logits (a constant).
    labels: ``[...]`` integer target classes.
    gamma: CE weight (reference flag ``-r``).
    alpha: logit-level loss weight (reference flag ``-a``).
    temperature: ``T`` of :func:`binary_kl_norm`.
    where, weights: as in :func:`logitlab.losses.kd`; every term is a mean over valid
      examples.

  Returns:
    ``(total, parts)``: float32 scalars; ``parts`` has keys ``ce`` and ``binary_kl``
    (unweighted).
  """
  _common.check_logit_pair("head1_logits", head1_logits, "head2_logits", head2_logits)
  _common.check_labels("labels", labels, "head1_logits", head1_logits)
  reduce = dict(where=where, weights=weights, reduction="mean")
  parts = {
      "ce": cross_entropy(head1_logits, labels, **reduce),
      "binary_kl": binary_kl_norm(head2_logits, teacher_logits, temperature=temperature,
                                  **reduce),
  }
  return gamma * parts["ce"] + alpha * parts["binary_kl"], parts


def project_conflicting(kd_grads: chex.ArrayTree, ce_grads: chex.ArrayTree) -> chex.ArrayTree:
  r"""PCGrad-style alignment: removes the part of ``kd_grads`` that opposes ``ce_grads``.

  .. math:: g_{kd} \leftarrow g_{kd} - \frac{\min(g_{kd} \cdot g_{ce}, 0)}{\|g_{ce}\|^2} g_{ce}

  The dot product and norm run over the whole pytree. Non-conflicting gradients (and a
  zero ``ce_grads``) are returned unchanged. Leaves keep their dtypes.
  """
  if (jax.tree.structure(kd_grads) != jax.tree.structure(ce_grads)
      or [jnp.shape(x) for x in jax.tree.leaves(kd_grads)]
      != [jnp.shape(x) for x in jax.tree.leaves(ce_grads)]):
    raise ValueError("`ce_grads` must have the pytree structure and leaf shapes of `kd_grads`, "
                     f"got {jax.tree.structure(ce_grads)} vs {jax.tree.structure(kd_grads)}.")
  dot = optax.tree_utils.tree_vdot(kd_grads, ce_grads)
  ce_norm_sq = optax.tree_utils.tree_vdot(ce_grads, ce_grads)
  coefficient = jnp.where(ce_norm_sq > 0, jnp.minimum(dot, 0.0) / jnp.where(
      ce_norm_sq > 0, ce_norm_sq, 1.0), 0.0)
  return jax.tree.map(lambda g_kd, g_ce: (g_kd - coefficient * g_ce).astype(g_kd.dtype),
                      kd_grads, ce_grads)
