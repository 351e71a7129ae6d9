"""Super-universal Newton method (Doikov, Mishchenko & Nesterov), the GNS paper's baseline.

The reference code (epfml/grad-norm-smooth, ``src/methods.py``, ``super_newton``) runs, with
``g = grad f(x)`` and ``||g||_* = sqrt(g^T B^{-1} g)``::

    lambda = H ||g||_*^alpha
    dx     = -(Hess f(x) + lambda B)^{-1} g                  (Cholesky)
    accept if <grad f(x + dx), -dx> >= ||grad f(x + dx)||_*^2 / (4 lambda):
        H <- max(H / 4, H_min)
    else H <- 4 H and re-solve (at most ``max_search`` solves)
    x <- x + dx

``alpha = 1`` is the reference default (``alpha`` in [0, 1] interpolates between the
regularizations for Lipschitz gradient and Lipschitz Hessian). Deliberate difference, as in
``gradient_normalized_newton``: when all ``max_search`` trials fail the point is not moved
(the reference moves with the last trial). Dense Cholesky only (the reference's solver).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from logitlab import numerics
from logitlab.second_order import curvature as curvature_lib
from logitlab.second_order.solver import (_backtracking_search, _check_int_at_least_1,
                                          _check_metric_shape)

Params = Any


class SuperUniversalState(NamedTuple):
  """``params``, ``value``, ``grad``, ``grad_norm`` (dual norm), ``h`` (the regularization
  constant the next iteration tries first), ``accepted``, ``num_solves``, ``count``."""
  params: Params
  value: chex.Array
  grad: Params
  grad_norm: chex.Array
  h: chex.Array
  accepted: chex.Array
  num_solves: chex.Array
  count: chex.Array


class SuperUniversalSolver(NamedTuple):
  init: Callable[..., SuperUniversalState]
  update: Callable[..., SuperUniversalState]


def super_universal_newton(value_fn: Callable[..., chex.Array],
                           curvature_fn: curvature_lib.CurvatureFn, *,
                           metric: chex.Array | None = None, h_init: float = 1.0,
                           alpha: float = 1.0, h_min: float = 1e-5,
                           max_search: int = 40) -> SuperUniversalSolver:
  """Builds ``init(params, *data)`` / ``update(state, *data)`` (module docstring).

  Args:
    value_fn: ``(params, *data) -> scalar``.
    curvature_fn: ``(params, *data) -> (v -> H v)``; the reference uses the exact Hessian.
    metric: SPD ``B [d, d]`` over ``ravel_pytree(params)`` (identity if None).
    h_init, alpha, h_min: ``H_0``, the power of ``||g||_*`` and the floor of ``H``
      (reference defaults 1, 1, 1e-5).
    max_search: solves per iteration (the reference's 40).
  """
  if not callable(value_fn):
    raise TypeError(f"`value_fn` must be a callable, got {type(value_fn).__name__}.")
  for name, value in (("h_init", h_init), ("h_min", h_min)):
    numerics.check_positive(name, value)
  if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
    raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
  _check_int_at_least_1("max_search", max_search)
  value_and_grad = jax.value_and_grad(value_fn)

  def metric_ops(size, dtype):
    _check_metric_shape(metric, size)
    b = jnp.eye(size, dtype=dtype) if metric is None else numerics.upcast(metric).astype(dtype)
    chol = jax.scipy.linalg.cho_factor(b, lower=True)
    return b, lambda g: jnp.vdot(g, jax.scipy.linalg.cho_solve(chol, g))

  def init(params, *data):
    params = jax.tree.map(numerics.upcast, params)
    value, grad = value_and_grad(params, *data)
    flat = ravel_pytree(grad)[0]
    _, dual_sq = metric_ops(flat.size, flat.dtype)
    dtype = jnp.result_type(value)
    return SuperUniversalState(params, value, grad, jnp.sqrt(dual_sq(flat)),
                               jnp.asarray(h_init, dtype), jnp.asarray(False),
                               jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def update(state, *data):
    flat_x, unravel = ravel_pytree(state.params)
    flat_g = ravel_pytree(state.grad)[0]
    b, dual_sq = metric_ops(flat_x.size, flat_x.dtype)
    hess = curvature_lib.dense_matrix(curvature_fn(state.params, *data), state.params)

    def trial(h):
      lam = h * state.grad_norm**alpha
      dx = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(hess + lam * b, lower=True),
                                      -flat_g)
      new_params = unravel(flat_x + dx)
      new_value, new_grad = value_and_grad(new_params, *data)
      flat_new_g = ravel_pytree(new_grad)[0]
      new_norm_sq = dual_sq(flat_new_g)
      ok = (jnp.vdot(flat_new_g, -dx) >= new_norm_sq / (4 * lam)) & jnp.isfinite(new_value)
      return ok, (new_params, new_value, new_grad, jnp.sqrt(new_norm_sq))

    stay = (state.params, state.value, state.grad, state.grad_norm)
    num_solves, accepted, h, candidate = _backtracking_search(
        trial, state.h, stay, factor=4, floor=h_min, max_search=max_search)
    params, value, grad, grad_norm = jax.tree.map(
        lambda new, old: jnp.where(accepted, new, old), candidate, stay)
    h = jnp.where(accepted, h, state.h)  # a stalled search keeps its start (as in GNS)
    return SuperUniversalState(params, value, grad, grad_norm, h, accepted, num_solves,
                               state.count + 1)

  return SuperUniversalSolver(init=init, update=update)
