"""Normalized step of one update over many batches: micro-batches and whole datasets.

``Delta_a(x; p)`` (:mod:`logitlab.ghosts`) is linear in the step ``p`` and computed per
example, so the normalized step of an update over any set of examples is the maximum of the
per-batch values:

    r(p; B_1 u ... u B_n) = max_i r(p; B_i) = max_{i, x in B_i} Delta_a(x; p) / (pi T).

Two uses (issue 12, point 5):

* **Gradient accumulation** with the guard. ``optax.MultiSteps(radius_guard(adam), k)`` sees
  only the last micro-batch at the guarded step, so its cap covers that micro-batch alone
  (r over all three was 1.125 against a cap of 1). :func:`microbatch_spread_fn` gives the
  guard (``update(..., logits_spread=...)``) the spreads of *every* micro-batch along the
  accumulated update, so ``r = max`` over all of them is capped. Cost: one JVP per
  micro-batch, i.e. the same as one JVP over the whole accumulated batch, run one
  micro-batch at a time (``lax.map``: memory of one micro-batch).
* **Whole-dataset radius** (the paper's Fig. 6: how far a minibatch cap is from the full-data
  cap). :func:`dataset_ratio` computes ``r`` of a step over a whole dataset in fixed-size
  batches, jitted, the last batch padded and masked.

``logits_fn(params, batch) -> logits [b, ..., K]`` is evaluated in eval mode, as everywhere
in the guard; ``batch`` is any pytree of arrays with a leading example axis.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from logitlab import ghosts, numerics

PyTree = Any
BatchLogitsFn = Callable[[PyTree, PyTree], chex.Array]


def _leading_size(name: str, tree: PyTree, axis: int = 0) -> int:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError(f"`{name}` must hold at least one array, got {tree!r}.")
  sizes = {jnp.shape(x)[axis] if jnp.ndim(x) > axis else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"Every array in `{name}` must share leading axis {axis}; got shapes "
                     f"{[jnp.shape(x) for x in leaves]}.")
  return sizes.pop()


def _check_where(where: chex.Array | None, n: int, of: str) -> None:
  if where is not None and jnp.shape(where)[:1] != (n,):
    raise ValueError(f"`where` must have the leading batch-count axis n = {n} of `{of}`, "
                     f"got shape {jnp.shape(where)}.")


def batch_spreads(
    logits_fn: BatchLogitsFn,
    params: PyTree,
    step: PyTree,
    batches: PyTree,
    *,
    where: chex.Array | None = None,
) -> jax.Array:
  """Per-example ``Delta_a(x; step)`` of every batch, ``[n, b, ...]`` float32.

  Args:
    logits_fn: ``(params, batch) -> logits [b, ..., K]``.
    params: the point of expansion.
    step: the update (a pytree like ``params``).
    batches: pytree of arrays ``[n, b, ...]``: ``n`` batches of ``b`` examples.
    where: optional mask of valid examples ``[n, b, ...]`` (masked spreads are 0).

  Returns:
    ``[n, b, ...]``: one JVP per batch, run sequentially (``lax.map``).
  """
  _check_where(where, _leading_size("batches", batches), "batches")

  def one(args):
    batch, mask = args
    _, tangent = ghosts.directional_logits(lambda p: logits_fn(p, batch), params, step)
    return ghosts.logit_spread(tangent, where=mask)

  return jax.lax.map(one, (batches, where))


def microbatch_spread_fn(
    logits_fn: BatchLogitsFn,
    params: PyTree,
    micro_batches: PyTree,
    *,
    where: chex.Array | None = None,
) -> Callable[[PyTree], jax.Array]:
  """``update -> spreads [k, b, ...]`` over every micro-batch, for the guard's ``logits_spread=``.

  With gradients accumulated over ``k`` micro-batches (``micro_batches``: arrays
  ``[k, b, ...]``), ``radius_guard(...).update(mean_grads, state, params,
  logits_spread=microbatch_spread_fn(logits_fn, params, micro_batches))`` caps the
  accumulated update at ``r <= max_ratio`` on every micro-batch (docs/radius_guard.md).
  """
  _check_where(where, _leading_size("micro_batches", micro_batches), "micro_batches")
  return lambda update: batch_spreads(logits_fn, params, update, micro_batches, where=where)


def dataset_ratio(
    logits_fn: BatchLogitsFn,
    params: PyTree,
    step: PyTree,
    data: PyTree,
    *,
    batch_size: int,
    temperature: float | jax.Array = 1.0,
    where: chex.Array | None = None,
) -> ghosts.NormalizedStep:
  """``r`` of ``step`` over a whole dataset (paper Fig. 6), jitted, in batches.

  Args:
    logits_fn: ``(params, batch) -> logits [b, ..., K]`` (static: a stable function object
      avoids recompiles).
    params, step: the point and the update.
    data: pytree of arrays ``[N, ...]`` (the whole training set, on device).
    batch_size: examples per JVP; ``N`` is padded to a multiple (padding is masked).
    temperature: softmax temperature of the loss (finite, > 0; traced: NaN result).
    where: optional validity mask ``[N, ...]``.

  Returns:
    :class:`logitlab.ghosts.NormalizedStep` over all ``N`` examples: ``ratio``, per-example
    ``spread [N, ...]`` and ``binding_index`` (flat index into ``[N, ...]``).
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
  numerics.check_positive("temperature", temperature)
  size = _leading_size("data", data)
  if where is not None and jnp.shape(where)[:1] != (size,):
    raise ValueError(f"`where` must have the leading example axis N = {size} of `data`, got "
                     f"shape {jnp.shape(where)}.")
  return _dataset_ratio(logits_fn, params, step, data, batch_size=batch_size,
                        temperature=temperature, where=where)


@functools.partial(jax.jit, static_argnames=("logits_fn", "batch_size"))
def _dataset_ratio(logits_fn, params, step, data, *, batch_size, temperature, where):
  size = _leading_size("data", data)
  num_batches = -(-size // batch_size)
  pad = num_batches * batch_size - size
  where = jnp.ones((size,), bool) if where is None else jnp.asarray(where, bool)
  # Padding repeats the first example (a valid input for any model) and is masked out.
  pad_to_batches = lambda x, fill: jnp.concatenate(
      [x, jnp.broadcast_to(fill, (pad,) + x.shape[1:]).astype(x.dtype)]).reshape(
          (num_batches, batch_size) + x.shape[1:])
  batches = jax.tree.map(lambda x: pad_to_batches(x, x[:1]), data)
  spreads = batch_spreads(logits_fn, params, step, batches,
                          where=pad_to_batches(where, jnp.zeros((), bool)))
  spread = spreads.reshape((num_batches * batch_size,) + spreads.shape[2:])[:size]
  temp = jnp.asarray(temperature, jnp.float32)
  result = ghosts.normalized_step_from_spread(spread, temperature=temp)
  # Under an outer jit a traced temperature <= 0 cannot raise: NaN (jit-value policy).
  return result._replace(ratio=numerics.nan_unless(result.ratio, temp > 0))
