"""Gradient method (GM) and fast gradient method (FGM), the GNS paper's first-order baselines.

Reference: epfml/grad-norm-smooth, ``src/methods.py``, ``gradient_method`` and
``fast_gradient_method`` (arXiv 2506.13710, experiments). With ``g = grad f``, the metric
``B`` (``||h||_B^2 = h^T B h``) and the adaptive smoothness estimate ``L``:

GM, one iteration::

    T = x - B^{-1} g(x) / L
    accept if f(T) <= f(x) + <g(x), T - x> + (L/2)||T - x||_B^2:  L <- max(L/2, L_min)
    else L <- 2 L and retry (at most ``max_search`` trials);  x <- T

FGM (Nesterov's accelerated method with the same line search), with ``A_0 = 0``, ``v_0 = x_0``::

    a = (1 + sqrt(1 + 4 A L)) / (2 L),  y = (a v + A x) / (a + A)
    T = y - B^{-1} g(y) / L, accepted by the same test at ``y``
    v <- T + (A / a)(T - x),  A <- A + a,  x <- T

``line_search=False`` is the reference's fixed-``L`` mode (one trial, always taken). Deliberate
difference, as in ``gradient_normalized_newton``: when all ``max_search`` trials fail (at
round-off) the iteration leaves the point and ``L`` as they were (the reference moves with the
last trial and keeps the doubled ``L``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from logitlab import numerics
from logitlab.second_order.solver import (_backtracking_search, _check_int_at_least_1,
                                          _check_metric_shape, _metric_ops)

Params = Any


class GradientState(NamedTuple):
  """``params`` (``x``), ``value``, ``grad``, ``grad_norm`` (dual norm at ``x``), ``lipschitz``
  (the ``L`` the next iteration tries first), ``accepted``, ``num_trials``, ``count``; FGM also
  carries ``v`` (its second sequence; ``params`` for GM) and ``a_sum`` (``A_k``; 0 for GM)."""
  params: Params
  value: chex.Array
  grad: Params
  grad_norm: chex.Array
  lipschitz: chex.Array
  accepted: chex.Array
  num_trials: chex.Array
  count: chex.Array
  v: Params
  a_sum: chex.Array


class GradientSolver(NamedTuple):
  init: Callable[..., GradientState]
  update: Callable[..., GradientState]


def _build(value_fn, metric, l_init, l_min, line_search, max_search, accelerated):
  if not callable(value_fn):
    raise TypeError(f"`value_fn` must be a callable, got {type(value_fn).__name__}.")
  numerics.check_positive("l_init", l_init)
  numerics.check_positive("l_min", l_min)
  if not isinstance(line_search, bool):
    raise TypeError(f"`line_search` must be a bool, got {line_search!r}.")
  _check_int_at_least_1("max_search", max_search)
  apply_b, solve_b, dual_norm_sq = _metric_ops(metric)
  value_and_grad = jax.value_and_grad(value_fn)

  def init(params, *data):
    params = jax.tree.map(numerics.upcast, params)
    flat = ravel_pytree(params)[0]
    _check_metric_shape(metric, flat.size)
    value, grad = value_and_grad(params, *data)
    dtype = jnp.result_type(value)
    return GradientState(params, value, grad, jnp.sqrt(dual_norm_sq(ravel_pytree(grad)[0])),
                         jnp.asarray(l_init, dtype), jnp.asarray(False),
                         jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), params,
                         jnp.zeros((), dtype))

  def update(state, *data):
    flat_x, unravel = ravel_pytree(state.params)
    flat_v = ravel_pytree(state.v)[0]

    def trial(lip):
      """One gradient step at ``y`` with ``L = lip``; returns (ok, (T, f(T), a))."""
      if accelerated:
        a = (1 + jnp.sqrt(1 + 4 * state.a_sum * lip)) / (2 * lip)
        flat_y = (a * flat_v + state.a_sum * flat_x) / (a + state.a_sum)
        value_y, grad_y = value_and_grad(unravel(flat_y), *data)
        flat_g = ravel_pytree(grad_y)[0]
      else:
        a, flat_y, value_y = jnp.zeros_like(lip), flat_x, state.value
        flat_g = ravel_pytree(state.grad)[0]
      flat_t = flat_y - solve_b(flat_g) / lip
      value_t = value_fn(unravel(flat_t), *data)
      h = flat_t - flat_y
      ok = value_t <= value_y + jnp.vdot(flat_g, h) + 0.5 * lip * jnp.vdot(h, apply_b(h))
      return ok & jnp.isfinite(value_t), (flat_t, value_t, a)

    if not line_search:
      _, (flat_t, _, a) = trial(state.lipschitz)
      accepted, lip, num_trials = jnp.asarray(True), state.lipschitz, jnp.ones((), jnp.int32)
    else:
      start = (flat_x, state.value, jnp.zeros_like(state.a_sum))
      num_trials, accepted, lip, (flat_t, _, a) = _backtracking_search(
          trial, state.lipschitz, start, factor=2, floor=l_min, max_search=max_search)
      lip = jnp.where(accepted, lip, state.lipschitz)
    value, grad = value_and_grad(unravel(flat_t), *data)
    if accelerated:
      flat_v_new = flat_t + state.a_sum / a * (flat_t - flat_x)
      a_sum = state.a_sum + a
    else:
      flat_v_new, a_sum = flat_t, state.a_sum
    new = (unravel(flat_t), value, grad, unravel(flat_v_new), a_sum)
    old = (state.params, state.value, state.grad, state.v, state.a_sum)
    params, value, grad, v, a_sum = jax.tree.map(lambda n, o: jnp.where(accepted, n, o), new, old)
    grad_norm = jnp.sqrt(dual_norm_sq(ravel_pytree(grad)[0]))
    return GradientState(params, value, grad, grad_norm, lip, accepted, num_trials,
                         state.count + 1, v, a_sum)

  return GradientSolver(init=init, update=update)


def gradient_method(value_fn: Callable[..., chex.Array], *, metric: chex.Array | None = None,
                    l_init: float = 1.0, l_min: float = 1e-5, line_search: bool = True,
                    max_search: int = 30) -> GradientSolver:
  """Builds ``init(params, *data)`` / ``update(state, *data)`` for GM (module docstring).

  Args:
    value_fn: ``(params, *data) -> scalar``.
    metric: SPD ``B [d, d]`` over ``ravel_pytree(params)`` (identity if None).
    l_init, l_min: ``L_0`` and the floor of ``L`` (reference defaults 1, 1e-5).
    line_search: ``False`` keeps ``L = l_init`` and takes every step.
    max_search: trials per iteration (the reference's 30).
  """
  return _build(value_fn, metric, l_init, l_min, line_search, max_search, accelerated=False)


def fast_gradient_method(value_fn: Callable[..., chex.Array], *,
                         metric: chex.Array | None = None, l_init: float = 1.0,
                         l_min: float = 1e-5, line_search: bool = True,
                         max_search: int = 30) -> GradientSolver:
  """Builds ``init`` / ``update`` for FGM (module docstring); arguments as ``gradient_method``."""
  return _build(value_fn, metric, l_init, l_min, line_search, max_search, accelerated=True)
