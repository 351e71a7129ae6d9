"""Cubic Newton with an adaptive regularization constant (Nesterov & Polyak), the GNS baseline.

Reference: epfml/grad-norm-smooth, ``src/methods.py``, ``cubic_newton`` and
``cubic_newton_step`` (arXiv 2506.13710, experiments). One iteration, with ``g = grad f(x)``,
``A = H(x)`` (the curvature, exact Hessian in the reference) and ``||h||_B^2 = h^T B h``::

    T = argmin_h <g, h> + (1/2) h^T A h + (M/3) ||h||_B^3,   M = H_k / 2
    accept if f(x + T) <= f(x) + model(T):  H_k <- max(H_k / 2, H_min)
    else H_k <- 2 H_k and re-solve (at most ``max_search`` solves);  x <- x + T

The subproblem is solved as in ``cubic_newton_step``: ``T(r) = -(A + M r B)^{-1} g`` and the
root of ``phi(r) = r - ||T(r)||_B`` is bracketed by doubling ``r`` from 1 while
``phi(r) < -tol``, then found by Newton's method on ``phi`` (``phi'(r) = 1 + (M / ||T||_B)
(B T)^T (A + M r B)^{-1} (B T)``), at most ``subproblem_maxiter`` steps each, stopping at
``|phi(r)| <= tol``. Dense Cholesky (the reference's solver), so meant for small ``d``.

Deliberate differences: a subproblem that fails (non-PD ``A + M r B`` or no convergence) is a
rejected trial (the reference returns the zero step with model value 0, which its test then
accepts); when all ``max_search`` trials fail the point and ``H_k`` stay as they were (the
reference moves with the last trial). ``adaptive_search=False`` is the reference's fixed-``H``
mode.
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
                                          _check_metric_shape, _metric_ops)

Params = Any


class CubicNewtonState(NamedTuple):
  """``params``, ``value``, ``grad``, ``grad_norm`` (dual norm), ``h`` (the ``H_k`` the next
  iteration tries first), ``accepted``, ``num_solves`` (subproblems solved by the last
  search), ``count``."""
  params: Params
  value: chex.Array
  grad: Params
  grad_norm: chex.Array
  h: chex.Array
  accepted: chex.Array
  num_solves: chex.Array
  count: chex.Array


class CubicNewtonSolver(NamedTuple):
  init: Callable[..., CubicNewtonState]
  update: Callable[..., CubicNewtonState]


def _cubic_step(g, a, m, b, tol, maxiter):
  """``(T, model(T), converged)`` for ``min <g,h> + h^T A h / 2 + (m/3)||h||_B^3`` (flat)."""

  def at(r):
    chol = jax.scipy.linalg.cho_factor(a + m * r * b, lower=True)
    t = jax.scipy.linalg.cho_solve(chol, -g)
    t_norm = jnp.sqrt(jnp.vdot(t, b @ t))
    return chol, t, t_norm, r - t_norm

  def grow_cond(carry):
    r, k = carry
    return (at(r)[3] < -tol) & (k < maxiter)

  r, _ = jax.lax.while_loop(grow_cond, lambda c: (2 * c[0], c[1] + 1),
                            (jnp.ones((), g.dtype), jnp.zeros((), jnp.int32)))

  def newton_cond(carry):
    r, k = carry
    return ~(jnp.abs(at(r)[3]) <= tol) & (k < maxiter)

  def newton_body(carry):
    r, k = carry
    chol, t, t_norm, phi = at(r)
    bt = b @ t
    phi_prime = 1 + m / t_norm * jnp.vdot(jax.scipy.linalg.cho_solve(chol, bt), bt)
    return r - phi / phi_prime, k + 1

  r, _ = jax.lax.while_loop(newton_cond, newton_body, (r, jnp.zeros((), jnp.int32)))
  _, t, t_norm, phi = at(r)
  model = jnp.vdot(g, t) + 0.5 * jnp.vdot(t, a @ t) + m * t_norm**3 / 3
  return t, model, (jnp.abs(phi) <= tol) & jnp.isfinite(model)


def cubic_newton(value_fn: Callable[..., chex.Array], curvature_fn: curvature_lib.CurvatureFn,
                 *, metric: chex.Array | None = None, h_init: float = 1.0,
                 h_min: float = 1e-5, max_search: int = 40, adaptive_search: bool = True,
                 subproblem_tol: float = 1e-8, subproblem_maxiter: int = 50
                 ) -> CubicNewtonSolver:
  """Builds ``init(params, *data)`` / ``update(state, *data)`` (module docstring).

  Args:
    value_fn: ``(params, *data) -> scalar``.
    curvature_fn: ``(params, *data) -> (v -> H v)``; the reference uses the exact Hessian.
    metric: SPD ``B [d, d]`` over ``ravel_pytree(params)`` (identity if None).
    h_init, h_min: ``H_0`` and the floor of ``H_k`` (reference defaults 1, 1e-5).
    max_search: subproblems per iteration (the reference's 40).
    adaptive_search: ``False`` keeps ``H_k = h_init`` and takes every step.
    subproblem_tol, subproblem_maxiter: ``|phi(r)|`` tolerance and the cap of each of the two
      root-finding phases (reference: 1e-8, 50).
  """
  if not callable(value_fn):
    raise TypeError(f"`value_fn` must be a callable, got {type(value_fn).__name__}.")
  if not callable(curvature_fn):
    raise TypeError(f"`curvature_fn` must be a callable, got {type(curvature_fn).__name__}.")
  for name, value in (("h_init", h_init), ("h_min", h_min), ("subproblem_tol", subproblem_tol)):
    numerics.check_positive(name, value)
  for name, value in (("max_search", max_search), ("subproblem_maxiter", subproblem_maxiter)):
    _check_int_at_least_1(name, value)
  apply_b, _, dual_norm_sq = _metric_ops(metric)
  value_and_grad = jax.value_and_grad(value_fn)

  def init(params, *data):
    params = jax.tree.map(numerics.upcast, params)
    size = ravel_pytree(params)[0].size
    _check_metric_shape(metric, size)
    value, grad = value_and_grad(params, *data)
    dtype = jnp.result_type(value)
    return CubicNewtonState(params, value, grad,
                            jnp.sqrt(dual_norm_sq(ravel_pytree(grad)[0])),
                            jnp.asarray(h_init, dtype), jnp.asarray(False),
                            jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def update(state, *data):
    flat_x, unravel = ravel_pytree(state.params)
    flat_g = ravel_pytree(state.grad)[0]
    hess = curvature_lib.dense_matrix(curvature_fn(state.params, *data), state.params)
    b = apply_b(jnp.eye(flat_x.size, dtype=flat_x.dtype))

    def trial(h):
      t, model, solved = _cubic_step(flat_g, hess, 0.5 * h, b, subproblem_tol,
                                     subproblem_maxiter)
      new_value = value_fn(unravel(flat_x + t), *data)
      ok = solved & (new_value <= state.value + model) & jnp.isfinite(new_value)
      return ok, flat_x + t

    if adaptive_search:
      num_solves, accepted, h, flat_new = _backtracking_search(
          trial, state.h, flat_x, factor=2, floor=h_min, max_search=max_search)
      h = jnp.where(accepted, h, state.h)
      flat_new = jnp.where(accepted, flat_new, flat_x)
    else:
      _, flat_new = trial(state.h)
      num_solves, accepted, h = jnp.ones((), jnp.int32), jnp.asarray(True), state.h
    params = unravel(flat_new)
    value, grad = value_and_grad(params, *data)
    return CubicNewtonState(params, value, grad, jnp.sqrt(dual_norm_sq(ravel_pytree(grad)[0])),
                            h, accepted, num_solves, state.count + 1)

  return CubicNewtonSolver(init=init, update=update)
