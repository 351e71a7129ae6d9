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
    labels: chex.Array | None = None,
    *,
    temperature: float = 2.0,
    sigmoid_eps: float | None = None,
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

  ``sigmoid_eps=None`` (default) evaluates the log-cosh form: exact and finite for every
  finite gap. The official code (penghui-yang/DHKD distiller_zoo/BinaryKLNorm.py:15-19)
  clamps ``sigma`` to ``[eps, 1 - eps]`` with ``eps = 1e-8`` and takes ``log``; the clamp
  zeroes the gradient once ``gap / T < -18.4``, and in float32 ``1 - 1e-8`` rounds to 1, so
  a gap above about ``+17.3 T`` gives ``log 0`` and an infinite loss.
  ``sigmoid_eps=1e-8`` reproduces that float32 computation exactly (for reproduction only).

  Args:
    aux_logits: ``[..., C]`` logits of the auxiliary head (bf16 accepted; float32 math).
    teacher_logits: ``[..., C]``, same shape.
    labels: optional labels, checked by the common label policy and not used.
    temperature: ``T > 0`` (official CIFAR and ImageNet commands: 2).
    sigmoid_eps: ``None`` (exact) or the official clamp ``eps``.
    where, weights, reduction: as in :func:`logitlab.losses.kd`.
  """
  _common.check_logit_pair("aux_logits", aux_logits, "teacher_logits", teacher_logits)
  _common.check_positive("temperature", temperature)
  if sigmoid_eps is not None and not 0.0 < sigmoid_eps < 0.5:
    raise ValueError(f"`sigmoid_eps` must be None or in (0, 0.5), got {sigmoid_eps}.")
  ok = _common.check_any_labels(labels, "aux_logits", aux_logits, where)
  gap = (numerics.upcast(aux_logits)
         - numerics.upcast(jax.lax.stop_gradient(teacher_logits))) / temperature
  if sigmoid_eps is None:
    per_class = _log_cosh(0.5 * gap)
  else:
    prob = jnp.clip(jax.nn.sigmoid(gap), jnp.float32(sigmoid_eps), jnp.float32(1 - sigmoid_eps))
    half = jnp.log(jnp.float32(0.5))
    per_class = 0.5 * (half - jnp.log(prob)) + 0.5 * (half - jnp.log(1.0 - prob))
  per_example = temperature**2 * jnp.sum(per_class, axis=-1)
  return _common.reduce_loss(_common.poison(per_example, ok), where=where, weights=weights,
                             reduction=reduction)


def dhkd(
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    *,
    aux_logits: chex.Array,
    gamma: float = 1.0,
    alpha: float = 1.0,
    temperature: float = 2.0,
    sigmoid_eps: float | None = None,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    reduction: str = "mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  r"""DHKD total ``gamma CE(head1, y) + alpha BinaryKLNorm(head2, z_t)`` and its parts.

  The official objective (penghui-yang/DHKD helper/loops.py:105-114): head 1 (the one
  evaluated) gets only CE, head 2 only the logit-level loss; no KD term on head 1.
  Gradient alignment (``--ga``) combines the two terms' gradients, so it lives in the
  recipe (``logitlab.kd_recipes``), which needs the parts separately.

  Args:
    student_logits: ``[..., C]`` logits of the main head (head 1, evaluated at test time).
    teacher_logits: ``[..., C]`` teacher logits (a constant).
    labels: ``[...]`` integer target classes (out of range: ValueError when concrete, NaN
      for that example under jit).
    aux_logits: ``[..., C]`` logits of the auxiliary head (head 2) on the same feature.
    gamma: CE weight (reference flag ``-r``).
    alpha: logit-level loss weight (reference flag ``-a``).
    temperature, sigmoid_eps: of :func:`binary_kl_norm`.
    where, weights, reduction: as in :func:`logitlab.losses.kd`, applied to both parts.

  Returns:
    ``(total, parts)``: float32 scalars (``[...]`` for ``reduction="none"``); ``parts`` has
    keys ``ce`` and ``binary_kl`` (unweighted).
  """
  _common.check_logit_pair("student_logits", student_logits, "aux_logits", aux_logits)
  reduce = dict(where=where, weights=weights, reduction=reduction)
  parts = {
      "ce": cross_entropy(student_logits, labels, **reduce),
      "binary_kl": binary_kl_norm(aux_logits, teacher_logits, labels, temperature=temperature,
                                  sigmoid_eps=sigmoid_eps, **reduce),
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
  dot = numerics.tree_vdot(kd_grads, ce_grads)
  ce_norm_sq = numerics.tree_vdot(ce_grads, ce_grads)
  coefficient = jnp.where(ce_norm_sq > 0, jnp.minimum(dot, 0.0) / jnp.where(
      ce_norm_sq > 0, ce_norm_sq, 1.0), 0.0)
  return jax.tree.map(lambda g_kd, g_ce: (g_kd - coefficient * g_ce).astype(g_kd.dtype),
                      kd_grads, ce_grads)
