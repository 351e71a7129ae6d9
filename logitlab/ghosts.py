"""Step-radius bounds for softmax cross-entropy ("Ghosts of Softmax").

Cross-entropy along a parameter direction ``v`` is ``L(t) = -z_y(t) + log sum_j exp(z_j(t))``
with logits ``z(t) = z(theta + t v)``. To first order ``z_j(t) ~ z_j + t a_j`` where
``a = J_z(theta) v`` is the directional logit derivative (one ``jax.jvp``). The
partition function ``F(t) = sum_j exp(z_j + t a_j)`` has complex zeros ("ghosts"): the
Taylor series of ``log F`` around ``t = 0`` converges only within the distance to the
nearest one. Writing ``t = s + i u``, every term has phase ``u a_j``; if the spread
``Delta_a = max_k a_k - min_k a_k`` satisfies ``Delta_a |u| < pi`` all terms lie in an open
half-plane and cannot cancel, so

    rho_a = pi / Delta_a                               (multiclass lower bound)

is a lower bound on the radius of convergence. For two classes the zeros are exact:
``Delta_a t = delta + i pi (2k + 1)`` with logit gap ``delta = z_1 - z_2``, hence

    rho* = sqrt(delta^2 + pi^2) / |a_1 - a_2|           (binary exact radius).

A step of length ``tau`` along unit ``v`` is safe when the normalized step
``r = tau / rho_a = Delta_a(tau v) / pi`` is below 1 (``Delta`` is linear in the step, so
``r`` is simply the logit spread of the actual update over pi). With a softmax
temperature ``T`` the logits entering the softmax are ``z / T`` and ``rho_a = pi T / Delta_a``.
Over a batch the binding radius is the smallest: ``rho_a = pi T / max_x Delta_a(x)``.

Reference: "Ghosts of Softmax: complex singularities bound the safe step of
cross-entropy training", arXiv 2603.13552 (reference code: piyush314/ghosts-of-softmax).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from logitlab import numerics

Array = jax.Array
PyTree = Any


def directional_logits(
    logits_fn: Callable[[PyTree], chex.Array],
    params: PyTree,
    direction: PyTree,
) -> tuple[Array, Array]:
  """Logits and their directional derivative ``a = J_z(params) direction`` (one ``jax.jvp``).

  Args:
    logits_fn: ``params -> logits [..., K]``. Run it in evaluation mode (BatchNorm
      running statistics, no dropout): the radius concerns the deterministic map.
    params: the point of expansion.
    direction: a pytree with the structure of ``params``; leaves are cast to the
      parameters' dtypes (``jax.jvp`` requires matching tangent dtypes).

  Returns:
    ``(logits, tangent)``, both ``[..., K]``.
  """
  if jax.tree.structure(params) != jax.tree.structure(direction):
    raise ValueError(
        "`direction` must have the same pytree structure as `params`; got "
        f"{jax.tree.structure(direction)} vs {jax.tree.structure(params)}.")
  for d, p in zip(jax.tree.leaves(direction), jax.tree.leaves(params)):
    if jnp.shape(d) != jnp.shape(p):
      raise ValueError(f"`direction` leaves must have the shapes of `params`, got {jnp.shape(d)} "
                       f"for a parameter of shape {jnp.shape(p)}.")
  direction = jax.tree.map(lambda d, p: jnp.asarray(d).astype(jnp.result_type(p)), direction,
                           params)
  return jax.jvp(logits_fn, (params,), (direction,))


def logit_spread(tangent: chex.Array, *, where: chex.Array | None = None) -> Array:
  """Per-example ``Delta_a = max_k a_k - min_k a_k`` over the last axis, in float32.

  Args:
    tangent: directional logit derivatives ``[..., K]`` (e.g. ``[B, K]`` or ``[B, T, V]``).
    where: optional mask of valid examples/tokens, broadcastable to ``tangent.shape[:-1]``.
      Masked entries get spread 0 (they never bind).
  """
  numerics.check_logits("tangent", tangent)
  numerics.check_mask("where", where, tangent.shape[:-1])
  a = numerics.upcast(tangent)
  spread = jnp.max(a, axis=-1) - jnp.min(a, axis=-1)
  if where is not None:
    spread = jnp.where(jnp.asarray(where, bool), spread, 0.0)
  return spread


def radius(
    tangent: chex.Array,
    *,
    temperature: float | Array = 1.0,
    where: chex.Array | None = None,
) -> Array:
  """Per-example multiclass radius lower bound ``rho_a = pi T / Delta_a``.

  Args:
    tangent: directional logit derivatives ``[..., K]`` along a (unit or not) direction.
    temperature: softmax temperature ``T > 0`` of the loss (``softmax(z / T)``); under jit a
      traced ``T <= 0`` gives NaN radii.
    where: optional mask of valid examples/tokens; masked entries get ``+inf``.

  Returns:
    float32 ``[...]``; ``+inf`` where the direction leaves the softmax unchanged
    (``Delta_a = 0``, e.g. a shift common to all classes) or the entry is masked.
  """
  numerics.check_positive("temperature", temperature)
  spread = logit_spread(tangent, where=where)
  rho = jnp.pi * jnp.asarray(temperature, jnp.float32) / spread  # x / 0 = +inf, deliberately.
  return numerics.nan_unless_positive(rho, temperature)


def binary_radius(margin: chex.Array, delta_a: chex.Array) -> Array:
  """Exact radius of two-class cross-entropy: ``sqrt(delta^2 + pi^2) / |Delta_a|``.

  Args:
    margin: logit gap ``delta = z_1 - z_2`` (any shape).
    delta_a: directional derivative of the gap, ``a_1 - a_2`` (same shape).
  """
  margin, delta_a = numerics.upcast(margin), numerics.upcast(delta_a)
  numerics.check_same_shape(("margin", "delta_a"), margin, delta_a)
  return jnp.sqrt(margin**2 + jnp.pi**2) / jnp.abs(delta_a)


def top2_radius(
    logits: chex.Array,
    tangent: chex.Array,
    labels: chex.Array,
    *,
    temperature: float | Array = 1.0,
) -> Array:
  """Per-sample two-class estimate ``sqrt(delta^2 + pi^2) / |a_y - a_c|``.

  ``c`` is the runner-up class (largest logit other than the label ``y``) and
  ``delta = (z_y - z_c) / T``. Confident samples (large ``delta``) exceed the
  multiclass bound by about ``sqrt(1 + (delta/pi)^2)``; this is an estimate, not a bound.

  Args:
    logits: ``[..., K]``. tangent: ``[..., K]``. labels: integer ``[...]`` in ``[0, K)``
      (under jit an out-of-range label gives NaN for that sample).
    temperature: ``T > 0`` (under jit a traced ``T <= 0`` gives NaN).
  """
  numerics.check_logits("logits", logits)
  numerics.check_positive("temperature", temperature)
  numerics.check_same_shape(("logits", "tangent"), logits, tangent)
  if jnp.shape(labels) != logits.shape[:-1]:
    raise ValueError(f"`labels` must have shape {logits.shape[:-1]} (logits without the class "
                     f"axis), got {jnp.shape(labels)}.")
  num_classes = logits.shape[-1]
  labels = jnp.asarray(labels)
  ok = numerics.check_values("labels", (labels >= 0) & (labels < num_classes),
                             f"class indices in [0, {num_classes})")
  z = numerics.upcast(logits) / temperature
  a = numerics.upcast(tangent) / temperature
  is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
  runner_up = jnp.argmax(jnp.where(is_label, -jnp.inf, z), axis=-1)
  take = numerics.take_class  # one-hot select: no gather on a sharded class axis
  rho = binary_radius(take(z, labels) - take(z, runner_up), take(a, labels) - take(a, runner_up))
  return numerics.nan_unless_positive(numerics.nan_unless(rho, ok), temperature)


class NormalizedStep(NamedTuple):
  """Normalized step of an update over a batch.

  Attributes:
    ratio: scalar ``r = max_x Delta_a(x; p) / (pi T) = tau / rho_a``.
    spread: per-example ``Delta_a(x; p)`` ``[...]`` (0 where masked).
    binding_index: flat index (over the batch dims) of the example that sets ``ratio``:
      the sample that makes the step fragile.
  """
  ratio: Array
  spread: Array
  binding_index: Array


def normalized_step(
    step_tangent: chex.Array,
    *,
    temperature: float | Array = 1.0,
    where: chex.Array | None = None,
) -> NormalizedStep:
  """``r = tau / rho_a`` of an actual update ``p`` from its logit tangent ``J_z p``.

  Because ``Delta_a`` is linear in the step, ``r = Delta_a(p) / (pi T)`` needs no norm.
  ``r < 1`` keeps the step inside the convergence disc of every example in the batch.

  Args:
    step_tangent: ``J_z(theta) p``, shape ``[..., K]`` (e.g. ``[B, K]``, ``[B, T, V]``) with
      at least one example.
    temperature: softmax temperature ``T > 0`` of the loss (traced ``T <= 0``: NaN ratio).
    where: optional mask of valid examples/tokens.
  """
  numerics.check_positive("temperature", temperature)
  spread = logit_spread(step_tangent, where=where)
  if spread.size == 0:
    raise ValueError(f"`step_tangent` must hold at least one example [..., K], got shape "
                     f"{jnp.shape(step_tangent)}.")
  return normalized_step_from_spread(spread, temperature=temperature)


def normalized_step_from_spread(
    spread: chex.Array,
    *,
    temperature: float | Array = 1.0,
) -> NormalizedStep:
  """:func:`normalized_step` from per-example spreads ``Delta_a(x; p) [...]`` (0 where masked).

  For estimators that never build the full tangent (e.g. :mod:`logitlab.lm_head_radius`).
  ``temperature > 0`` (traced ``T <= 0``: NaN ratio).
  """
  numerics.check_logits("spread", spread, min_rank=0)
  numerics.check_positive("temperature", temperature)
  spread = numerics.upcast(spread)
  # Reductions only: indexing the spreads with the traced argmax (`flat[i]`) is a dynamic
  # slice of a batch-sharded array, a sharding type error under Explicit axes.
  ratio = jnp.max(spread) / (jnp.pi * jnp.asarray(temperature, jnp.float32))
  return NormalizedStep(ratio=numerics.nan_unless_positive(ratio, temperature), spread=spread,
                        binding_index=_flat_argmax(spread))


def _flat_argmax(x: Array) -> Array:
  """``argmax(x.reshape(-1))`` from elementwise ops and reductions (no reshape of a sharded
  array): the smallest row-major index holding the maximum, or the first NaN's."""
  if x.ndim == 0:
    return jnp.zeros([], jnp.int32)
  flat_index = sum(jax.lax.broadcasted_iota(jnp.int32, x.shape, d) * int(np.prod(x.shape[d + 1:]))
                   for d in range(x.ndim))
  is_nan = jnp.isnan(x)
  hit = jnp.where(jnp.any(is_nan), is_nan, x == jnp.max(x))
  return jnp.min(jnp.where(hit, flat_index, x.size))
