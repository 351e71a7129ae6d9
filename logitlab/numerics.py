"""Shared numerics for everything in logit space.

Every loss, probe and metric in logitlab reduces through these helpers so that the
numerical policy lives in one place:

* Inputs may be any float dtype (bf16 included); math is done in float32
  (``upcast``), results are float32.
* Softmax-type quantities are computed with ``jax.nn.log_softmax``, which subtracts
  the row max, so logits of magnitude 1e4 (or more) are exact to float32 precision.
* Masks (``where``) are boolean or 0/1 arrays broadcastable to the values. A fully
  masked reduction returns 0 (not NaN): dividing by ``max(count, 1)`` is deliberate,
  because an all-padding micro-batch must contribute nothing to a training step.
* ``-inf`` logits (hard-masked vocabulary entries) are allowed: probabilities are 0
  there and ``p * log p`` terms are defined as 0 via ``jnp.where``, never ``0 * -inf``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def upcast(x: chex.Array) -> Array:
  """Returns ``x`` as float32 if it is a lower-precision float (bf16/f16), else as is."""
  try:
    x = jnp.asarray(x)
  except TypeError as e:
    raise TypeError(f"`x` must be a numeric array, got {type(x).__name__}: {e}") from None
  if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
    return x.astype(jnp.float32)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x


def check_logits(name: str, logits: chex.Array, *, min_rank: int = 1) -> None:
  """Raises a ValueError naming ``name`` unless ``logits`` is a float array of rank >= min_rank."""
  if not hasattr(logits, "shape") or not hasattr(logits, "dtype"):
    raise TypeError(f"`{name}` must be an array, got {type(logits).__name__}.")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"`{name}` must be a floating array [..., C], got dtype {logits.dtype}.")
  if logits.ndim < min_rank:
    raise ValueError(
        f"`{name}` must have rank >= {min_rank} (shape [..., C]), got shape {logits.shape}.")
  if logits.ndim and logits.shape[-1] == 0:
    raise ValueError(f"`{name}` must have at least one entry on its last axis (C >= 1), got "
                     f"shape {logits.shape}.")


def check_same_shape(names: tuple[str, str], a: chex.Array, b: chex.Array) -> None:
  """Raises a ValueError naming both arguments when shapes differ."""
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(
        f"`{names[0]}` and `{names[1]}` must have the same shape, got {tuple(a.shape)} and "
        f"{tuple(b.shape)}.")


def check_mask(name: str, where: chex.Array | None, batch_shape: tuple[int, ...]) -> None:
  """Raises unless ``where`` is None or broadcasts to exactly ``batch_shape``.

  A mask that broadcasts *against* the batch but widens it (``[B, 1]`` against ``[B]``
  gives ``[B, B]``) is rejected: it would silently count every example B times.
  """
  if where is None:
    return
  try:
    out = jnp.broadcast_shapes(jnp.shape(where), tuple(batch_shape))
  except ValueError:
    out = None
  if out != tuple(batch_shape):
    raise ValueError(
        f"`{name}` must be broadcastable to the batch shape {tuple(batch_shape)} without "
        f"changing it, got shape {jnp.shape(where)}.")


def is_traced(x) -> bool:
  """True when ``x`` is a tracer, i.e. its value only exists under ``jit``/``grad``/``vmap``."""
  return isinstance(x, jax.core.Tracer)


def check_positive(name: str, value) -> None:
  """Raises a ValueError naming ``name`` unless a concrete ``value`` is finite and > 0.

  Traced values pass here; callers poison their result with ``nan_unless`` (jit-value
  policy, docs/architecture.md).
  """
  if value is None or is_traced(value):
    return
  # NumPy, not jnp: under an outer jit a jnp op on a Python number is staged (a tracer).
  v = np.asarray(value, dtype=np.float64)
  if v.size and not bool(np.all(np.isfinite(v) & (v > 0))):
    raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def check_values(name: str, ok, expected: str, got=None) -> Array:
  """The jit-value policy for conditions on array *values* (labels in range, probs >= 0).

  Eager (concrete ``ok``): raises ``ValueError("`name` must be <expected>, got <got>")``
  when any entry is false. Traced: cannot raise, so returns ``ok`` as a bool array for the
  caller to poison the affected outputs with ``nan_unless``; never a clamped finite value.
  """
  if is_traced(ok):
    return jnp.asarray(ok).astype(bool)
  ok = np.asarray(ok).astype(bool)  # NumPy: under a jit trace, jnp ops give tracers
  if not bool(np.all(ok)):
    detail = "" if got is None else f", got {got}"
    raise ValueError(f"`{name}` must be {expected}{detail}.")
  return ok


def nan_unless(value: chex.Array, ok: chex.Array) -> Array:
  """``value`` where ``ok`` holds, NaN elsewhere (the traced half of the jit-value policy).

  ``ok`` must broadcast to ``value``'s shape without widening it.
  """
  value = upcast(value)
  check_mask("ok", ok, jnp.shape(value))
  return jnp.where(ok, value, jnp.nan)


def nan_unless_positive(value: chex.Array, x) -> Array:
  """``value``, or NaN when a *traced* ``x`` is not finite and > 0.

  The traced half of ``check_positive``: call ``check_positive(name, x)`` first (it raises for
  a concrete bad ``x``), then pass the result through here. Concrete ``x`` is returned as is.
  """
  if not is_traced(x):
    return value
  ok = jnp.all(jnp.isfinite(x) & (x > 0))
  return jnp.where(ok, upcast(value), jnp.nan)


def take_class(values: chex.Array, index: chex.Array) -> Array:
  """``values[..., index]`` per row: ``[..., C]`` and integer ``[...]`` -> ``[...]``.

  A one-hot select and a sum over the class axis, not a gather: the result is exact (one
  selected entry plus zeros, ``-inf`` kept) and it is sharding-agnostic, so rows split over
  the batch axes and classes split over ``tensor`` need no all-gather and no
  ``out_sharding`` under Explicit axes (a ``take_along_axis`` there is a sharding type
  error; docs/scaling.md). An ``index`` outside ``[0, C)`` gives NaN (jit-value policy), never
  a wrapped-around class.
  """
  index = jnp.asarray(index)
  if index.shape != jnp.shape(values)[:-1]:
    raise ValueError(f"`index` must have the batch shape of `values` {jnp.shape(values)[:-1]}, "
                     f"got {index.shape}.")
  num_classes = values.shape[-1]
  hit = jnp.arange(num_classes) == index[..., None]
  picked = jnp.sum(jnp.where(hit, values, jnp.zeros((), values.dtype)), axis=-1)
  return jnp.where((index >= 0) & (index < num_classes), picked, jnp.nan)


def gather_axis(x: chex.Array, axis: int = -1) -> Array:
  """``x`` with ``axis`` unsplit: a no-op unless it is sharded over an Explicit mesh axis.

  Sorting ops (``lax.top_k``, ``argsort``) need the whole axis on one device. Under Auto
  axes the partitioner inserts the all-gather itself; under Explicit axes the type system
  requires it to be written, which this does with ``jax.sharding.reshard``.
  """
  x = jnp.asarray(x)
  sharding = jax.typeof(x).sharding
  spec = tuple(getattr(sharding, "spec", ())) + (None,) * x.ndim
  if not -x.ndim <= axis < x.ndim:
    raise ValueError(f"`axis` must be in [-{x.ndim}, {x.ndim}) for shape {x.shape}, got {axis}.")
  axis = axis % x.ndim
  if spec[axis] is None:
    return x
  spec = spec[:axis] + (None,) + spec[axis + 1:x.ndim]
  return jax.sharding.reshard(
      x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec)))


def tree_vdot(a, b) -> Array:
  """float32 ``sum_leaves sum(a * b)`` over two pytrees of the same structure.

  Elementwise products and sums, not ``jnp.vdot``: ``vdot`` ravels each leaf, a reshape that
  Explicit sharding rejects for a sharded leaf (``optax.tree_utils.tree_vdot`` does that).
  """
  a_leaves, a_def = jax.tree.flatten(a)
  b_leaves, b_def = jax.tree.flatten(b)
  if a_def != b_def:
    raise ValueError(f"`a` and `b` must have the same tree structure, got {a_def} and {b_def}.")
  for x, y in zip(a_leaves, b_leaves):
    check_same_shape(("a", "b"), jnp.asarray(x), jnp.asarray(y))
  return sum((jnp.sum(upcast(x) * upcast(y)) for x, y in zip(a_leaves, b_leaves)),
             jnp.float32(0.0))


def masked_mean(values: chex.Array, where: chex.Array | None = None, axis=None) -> Array:
  """Mean of ``values`` over ``axis`` counting only entries where ``where`` is true.

  A reduction with no valid entries returns 0 (see module docstring).
  """
  values = upcast(values)
  if where is None:
    total = jnp.sum(values, axis=axis)
    count = values.size // total.size if total.size else 0
    return total / max(count, 1)  # an empty reduction is 0, like a fully masked one
  check_mask("where", where, values.shape)
  where = jnp.broadcast_to(jnp.asarray(where).astype(bool), values.shape)
  total = jnp.sum(jnp.where(where, values, 0.0), axis=axis)
  count = jnp.sum(where, axis=axis).astype(jnp.float32)
  return total / jnp.maximum(count, 1.0)


def soft_cap(logits: chex.Array, cap: float) -> Array:
  """Soft-capping ``cap * tanh(logits / cap)`` in float32 (Gemma 2, arXiv:2408.00118).

  Smoothly bounds logits to ``(-cap, cap)``; near 0 it is the identity (slope 1). Gemma 2
  applies it to attention scores (cap 50) and to the final logits (cap 30).
  """
  if not (isinstance(cap, (int, float)) and cap > 0 and cap != float("inf")):
    raise ValueError(f"`cap` must be a finite number > 0, got {cap!r}.")
  return cap * jnp.tanh(upcast(logits) / cap)


def log_softmax(logits: chex.Array, temperature: float | Array = 1.0, axis: int = -1) -> Array:
  """float32 ``log softmax(logits / temperature)``; stable at any finite magnitude.

  ``temperature`` must be finite and > 0; under jit a bad traced temperature gives NaN.
  """
  check_positive("temperature", temperature)
  out = jax.nn.log_softmax(upcast(logits) / temperature, axis=axis)
  return nan_unless_positive(out, temperature)


def xlogy_probs(p: Array, log_q: Array) -> Array:
  """``p * log_q`` with the convention ``0 * log 0 = 0`` (also for ``log_q = -inf``)."""
  check_mask("log_q", log_q, jnp.shape(p))
  return jnp.where(p > 0, p * jnp.where(p > 0, log_q, 0.0), 0.0)


def kl_divergence_from_logits(
    target_logits: chex.Array,
    logits: chex.Array,
    temperature: float | Array = 1.0,
    axis: int = -1,
) -> Array:
  """Per-row ``KL(softmax(target/T) || softmax(logits/T))`` over ``axis`` in float32."""
  check_same_shape(("target_logits", "logits"), jnp.asarray(target_logits), jnp.asarray(logits))
  log_p = log_softmax(target_logits, temperature, axis)
  log_q = log_softmax(logits, temperature, axis)
  p = jnp.exp(log_p)
  kl = jnp.sum(xlogy_probs(p, log_p) - xlogy_probs(p, log_q), axis=axis)
  return nan_unless_positive(kl, temperature)  # xlogy would hide the NaN of a bad traced T


def entropy_from_logits(logits: chex.Array, temperature: float | Array = 1.0,
                        axis: int = -1) -> Array:
  """Per-row Shannon entropy (nats) of ``softmax(logits/T)``."""
  log_p = log_softmax(logits, temperature, axis)
  entropy = -jnp.sum(xlogy_probs(jnp.exp(log_p), log_p), axis=axis)
  return nan_unless_positive(entropy, temperature)


def js_divergence(p: chex.Array, q: chex.Array, axis: int = -1) -> Array:
  """Jensen-Shannon divergence (nats, in [0, log 2]) between probability vectors."""
  p, q = upcast(p), upcast(q)
  check_same_shape(("p", "q"), p, q)
  m = 0.5 * (p + q)
  log_m = jnp.log(jnp.where(m > 0, m, 1.0))
  kl_pm = jnp.sum(xlogy_probs(p, jnp.log(jnp.where(p > 0, p, 1.0))) - xlogy_probs(p, log_m),
                  axis=axis)
  kl_qm = jnp.sum(xlogy_probs(q, jnp.log(jnp.where(q > 0, q, 1.0))) - xlogy_probs(q, log_m),
                  axis=axis)
  return 0.5 * (kl_pm + kl_qm)
