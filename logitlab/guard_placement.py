"""Did the update a transform returned reach the parameters? (radius guard placement check)

optax gives a stage no way to know its position in a chain, so a guard placed before a
rescaling stage (``optax.chain(radius_guard(), optax.adam(lr))``, or any stage after it such as
``add_decayed_weights``, ``scale(-lr)``, a schedule) would cap a step that is not the one
applied, and its logs would say the step was capped. The guard therefore checks, at the next
step, that ``params_t - params_{t-1}`` equals the update it returned at ``t - 1``.

Storing ``params_{t-1}`` would cost a copy of the model; a random projection costs two
scalars. With a fixed pseudo-random weight tensor ``v`` (per leaf an outer product of one
vector per axis, entries uniform in (-1, 1), hashed from positions at trace time: compile-time
constants of ``sum(shape)`` entries, a few multiplies per parameter, and every shard computes
its own part) the guard keeps

    f_params = <v, params_{t-1}>,      f_update = <v, u_{t-1}>,

and at step ``t`` compares ``D = <v, params_t> - f_params`` with ``G = f_update``. A mismatch is
``|D - G| > rtol |G| + bound`` while the parameters moved (``|D| > bound``: an update
that was not applied at all is a step of r = 0), where ``bound`` covers the rounding of ``params + u`` in the
parameters' dtype and of the float32 sums (16 standard deviations of their random-walk sum,
``8 eps ||params||_2``), so a correctly placed guard is not flagged, in bf16 too. ``D / G`` is reported as ``applied_factor``: the factor of a later
rescaling stage (e.g. ``-lr``), and otherwise only a sign that something else was applied
(Adam after the guard changes the direction, not only the scale).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# Relative mismatch tolerated beyond rounding: stages after the guard that change the
# update by less than this are not reported.
RTOL = 1e-3


class Fingerprint(NamedTuple):
  """``value = <v, tree>`` in float32 and ``bound``, the rounding it may carry."""
  value: jax.Array
  bound: jax.Array


class StepFingerprints(NamedTuple):
  """One pass of :func:`step_fingerprints` over the parameters and the step."""
  params: Fingerprint       # <v, params_t> and its rounding bound
  update: jax.Array         # <v, proposal>
  proposal_finite: jax.Array  # every entry of the proposal is finite


def _hash_uniform(size: int, salt: int) -> np.ndarray:
  """``size`` pseudo-random numbers uniform in (-1, 1): murmur3's finalizer of ``salt`` and
  the position. Continuous, not +-1: Adam's early steps are nearly sign vectors, whose +-1
  projections vanish exactly with a few percent probability. Computed in NumPy at trace time
  (shapes are static): the weights are compile-time constants, not a per-step computation."""
  h = np.arange(size, dtype=np.uint32) + np.uint32(salt * 0x9E3779B9 % 2**32)
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  h = h ^ (h >> np.uint32(16))
  return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)


def _weighted(x: jax.Array, leaf_index: int) -> jax.Array:
  """``x * v`` with ``v = w_0 (x) w_1 (x) ...`` a product of one random vector per axis: the
  hash covers ``sum(shape)`` positions, not ``prod(shape)``, and the products broadcast
  elementwise (no gather, no contraction of a sharded axis: valid on any mesh)."""
  for axis, size in enumerate(x.shape):
    w = _hash_uniform(size, 1 + 1000003 * leaf_index + axis)
    x = x * w.reshape((size,) + (1,) * (x.ndim - axis - 1))
  return x * _hash_uniform(1, leaf_index)[0] if x.ndim == 0 else x


def _rounding_eps(dtype) -> float:
  # Rounding of `params + u` in the leaf's dtype (|e_i| <= eps/2 |p_i|) and of the float32
  # sums: errors of independent sign under the pseudo-random weights add like a random
  # walk, std <= eps ||p||_2 / 2; `bound` is 16 of those, `8 eps ||p||_2` (a worst-case
  # eps * ||p||_1 would hide real mismatches of small updates on large models).
  return 8 * (float(jnp.finfo(dtype).eps) + 4 * float(jnp.finfo(jnp.float32).eps))


def _sums(operands: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """Full sums of same-shaped float32 arrays in ONE variadic reduction: on small models the
  guard's cost is the number of kernels, not the bytes."""
  zeros = tuple(np.float32(0) for _ in operands)
  return jax.lax.reduce(operands, zeros, lambda a, b: tuple(s + t for s, t in zip(a, b)),
                        tuple(range(operands[0].ndim)))


def fingerprint(tree: PyTree) -> Fingerprint:
  """``<v, tree>`` over all floating leaves, with its rounding bound.

  A tree without floating leaves has no fingerprint (every check would pass): it raises.
  """
  leaves = jax.tree.leaves(tree)
  if not any(hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)
             for leaf in leaves):
    raise ValueError(f"`tree` must hold at least one floating array, got leaves of types "
                     f"{sorted({type(leaf).__name__ for leaf in leaves})}.")
  value = jnp.zeros([], jnp.float32)
  bound_sq = jnp.zeros([], jnp.float32)
  for i, leaf in enumerate(leaves):
    if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    x = leaf.astype(jnp.float32)
    weighted, sum_sq = _sums((_weighted(x, i), x * x))
    value = value + weighted
    bound_sq = bound_sq + _rounding_eps(leaf.dtype)**2 * sum_sq
  return Fingerprint(value, jnp.sqrt(bound_sq))


def step_fingerprints(params: PyTree, proposal: PyTree) -> StepFingerprints:
  """``fingerprint(params)``, ``fingerprint(proposal)`` and the proposal's finiteness, in one
  variadic reduction per leaf (``sum(p * 0)`` is 0, or NaN iff some entry is NaN or +-inf).

  The guard fingerprints the update it returns, ``scale * proposal``, as ``scale *
  update``: the reductions then depend on the proposal only, so XLA runs them while the JVP
  that decides ``scale`` is still running instead of after it (the difference is the
  rounding of ``scale * p``, relative eps per entry, far inside the check's tolerance).
  Falls back to separate passes when the proposal's leaves do not line up with the
  parameters' (e.g. ``optax.masked`` placeholders).
  """
  if not any(jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in jax.tree.leaves(params)):
    raise ValueError("`params` must hold at least one floating array.")
  param_leaves, leaves = jax.tree.leaves(params), jax.tree.leaves(proposal)
  if [jnp.shape(p) for p in leaves] != [jnp.shape(x) for x in param_leaves]:
    finite = [jnp.all(jnp.isfinite(p)) for p in leaves]
    return StepFingerprints(fingerprint(params), fingerprint(proposal).value,
                            jnp.all(jnp.stack(finite)) if finite else jnp.array(True))
  value, bound_sq, update, nonfinite = (jnp.zeros([], jnp.float32),) * 4
  for i, (leaf, p) in enumerate(zip(param_leaves, leaves)):
    p_float = jnp.issubdtype(p.dtype, jnp.inexact)  # integer entries are finite
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      if p_float:
        nonfinite = nonfinite + jnp.sum(p.astype(jnp.float32) * 0)
      continue
    x = leaf.astype(jnp.float32)
    operands = (_weighted(x, i), x * x)
    if p_float:
      operands += (_weighted(p.astype(jnp.float32), i), p.astype(jnp.float32) * 0)
    sums = _sums(operands)
    value = value + sums[0]
    bound_sq = bound_sq + _rounding_eps(leaf.dtype)**2 * sums[1]
    if p_float:
      update, nonfinite = update + sums[2], nonfinite + sums[3]
  return StepFingerprints(Fingerprint(value, jnp.sqrt(bound_sq)), update,
                          jnp.isfinite(nonfinite))


class Check(NamedTuple):
  """Outcome at step t about the update returned at step t - 1."""
  mismatch: jax.Array       # bool: what reached the parameters is not what was returned
  applied_factor: jax.Array  # D / G (1 when the returned update was applied)


def check(params_now: Fingerprint, params_before: jax.Array, update_before: jax.Array,
          has_previous: jax.Array) -> Check:
  """Compares ``<v, params_t> - <v, params_{t-1}>`` with ``<v, u_{t-1}>`` (see module doc)."""
  if not isinstance(params_now, Fingerprint):
    raise TypeError(f"`params_now` must be a Fingerprint (from `fingerprint(params)`), got "
                    f"{type(params_now).__name__}.")
  applied = params_now.value - params_before
  slack = RTOL * jnp.abs(update_before) + params_now.bound
  # Parameters that did not move at all (a dry-run `update` call, a step skipped outside
  # the guard) took a step of r = 0: safe, not a mismatch.
  moved = jnp.abs(applied) > params_now.bound
  mismatch = has_previous & moved & (jnp.abs(applied - update_before) > slack)
  nonzero = update_before != 0
  factor = jnp.where(nonzero, applied / jnp.where(nonzero, update_before, 1.0),
                     jnp.where(mismatch, jnp.inf, 1.0))  # a skipped (zero) step that moved
  return Check(mismatch=mismatch, applied_factor=jnp.where(has_previous, factor, 1.0))
