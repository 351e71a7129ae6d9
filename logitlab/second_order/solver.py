"""Gradient-regularized Newton method with approximate Hessians (arXiv 2506.13710, Alg. 1).

One iteration, with ``g = grad f(x)``, ``||g||_* = sqrt(g^T B^{-1} g)`` and a PSD
curvature ``H(x)`` (exact Hessian, Gauss-Newton, Fisher, ...)::

    lambda = ||g||_* / gamma                      (gradient-normalized regularization)
    dx     = -(H(x) + lambda B)^{-1} g            ==>  ||dx||_B <= ||g||_* / lambda = gamma
    accept if f(x) - f(x + dx) >= ||grad f(x + dx)||_*^2 / (8 lambda)
    else gamma <- gamma / 2 and re-solve (at most ``max_search`` solves)
    after acceptance: x <- x + dx, gamma <- max(2 gamma, gamma_min)

This is the adaptive search of the authors' code (epfml/grad-norm-smooth), with four
deliberate differences, documented in docs/second_order.md: a failed solve (e.g. a
non-PD ``H + lambda B`` for an indefinite exact Hessian makes Cholesky return NaN) counts
as a rejected trial and halves gamma instead of aborting; when all ``max_search``
trials fail the point is not moved (the reference moves anyway), so ``f`` never increases;
such a stalled iteration leaves gamma where it started, with ``gamma >= gamma_min``
always (the reference only floors after an acceptance, so in float32 gamma reached 0.0);
and a trial rejected at round-off (``|<g, dx>| <= eps |f(x)|``: the test compares rounding
noise) ends the search as such a stall instead of halving gamma.
``adaptive_search=False`` is the reference's fixed-gamma mode.

With a known Hessian-Lipschitz constant ``L`` (``hessian_lipschitz=L``) the search is
replaced by ``lambda = sqrt(L ||g||_* / 2)`` (gradient regularization of Newton's
method), i.e. ``gamma = sqrt(2 ||g||_* / L)``, and every step is taken.

Linear solves: ``linear_solver="cholesky"`` materializes ``H`` once per iteration
(``curvature.dense_matrix``) and factors ``H + lambda B`` per trial;
``linear_solver="cg"`` is matrix-free (conjugate gradients on pytrees, one curvature
product per CG iteration); ``linear_solver="woodbury"`` solves a rank-one curvature
(``curvature.rank_one``) by Sherman-Morrison, the reference's ``grad_norm_smooth_for_rank_one``
"wsm" backend: one ``B`` solve per iteration, ``O(d)`` per trial. The solver is functional:
``init`` and ``update`` are pure and jit-able, the gamma search is a
``jax.lax.while_loop``, and data are passed as arguments (``update(state, *data)``) so new batches of the same shape do not recompile.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from logitlab import numerics
from logitlab.second_order import curvature as curvature_lib

Params = Any


# A step whose first-order change of f is below this many spacings of f (eps |f|) is at
# round-off: the acceptance test then compares rounding noise.
_ROUNDOFF_ULPS = 1

class GNSState(NamedTuple):
  """State of the gradient-normalized smoothness solver.

  Attributes:
    params: current point ``x``.
    value: ``f(x)``.
    grad: ``grad f(x)`` (pytree like ``params``).
    grad_norm: dual norm ``||grad f(x)||_*``.
    gamma: the step radius the next iteration tries first.
    step_gamma: the radius of the last solve (``||dx||_B <= step_gamma``).
    step_norm: ``||dx||_B`` of the last accepted step (0 if none).
    accepted: whether the last iteration moved the point.
    num_solves: linear solves made by the last iteration's search.
    count: iterations done.
    cg_iterations: CG iterations of the last solve (0 for Cholesky).
    cg_residual: relative residual ``||(H + lambda B) dx + g|| / ||g||`` of the last solve
      (both linear solvers); a value far above ``cg_tol`` means CG hit ``cg_maxiter``.
  """
  params: Params
  value: chex.Array
  grad: Params
  grad_norm: chex.Array
  gamma: chex.Array
  step_gamma: chex.Array
  step_norm: chex.Array
  accepted: chex.Array
  num_solves: chex.Array
  count: chex.Array
  cg_iterations: chex.Array
  cg_residual: chex.Array


class GNSSolver(NamedTuple):
  """``init(params, *data) -> GNSState`` and ``update(state, *data) -> GNSState``."""
  init: Callable[..., GNSState]
  update: Callable[..., GNSState]


def _check_int_at_least_1(name: str, value) -> None:
  """Raises a ValueError naming ``name`` unless ``value`` is a Python int >= 1 (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def _check_metric_shape(metric: chex.Array | None, size: int) -> None:
  """Raises unless ``metric`` is None or ``[size, size]`` (size of ``ravel_pytree(params)``)."""
  if metric is not None and jnp.shape(metric) != (size, size):
    raise ValueError(f"`metric` must have shape [d, d] with d = {size} (the size of "
                     f"ravel_pytree(params)), got {jnp.shape(metric)}.")


def _backtracking_search(trial: Callable, constant: chex.Array, candidate, *, factor: float,
                         floor: float, max_search: int):
  """The reference codes' adaptive search for cubic Newton, super-universal Newton and
  GM/FGM: ``trial(c) -> (ok, candidate)`` from ``c = constant`` until one accepts or
  ``max_search`` have run; after an acceptance the next constant is ``max(c / factor,
  floor)``, after a rejection ``factor * c``.

  Returns ``(num_trials, accepted, next_constant, candidate)``, ``candidate`` being the last
  trial's (the given one if none ran); what a stalled search keeps is the caller's rule.
  """
  def cond(carry):
    return (~carry[1]) & (carry[0] < max_search)

  def body(carry):
    num_trials, _, c, _ = carry
    ok, new_candidate = trial(c)
    next_c = jnp.where(ok, jnp.maximum(c / factor, floor), factor * c)
    return num_trials + 1, ok, next_c, new_candidate

  return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), jnp.asarray(False),
                                         constant, candidate))


def _metric_ops(metric: chex.Array | None):
  """Returns ``(apply_b, solve_b, dual_norm_sq)`` on flat vectors for the metric ``B``
  (``B v``, ``B^{-1} v`` by one Cholesky factorization, ``g^T B^{-1} g``)."""
  if metric is None:
    return (lambda v: v), (lambda v: v), (lambda g: jnp.vdot(g, g))
  metric = numerics.upcast(metric)
  if metric.ndim != 2 or metric.shape[0] != metric.shape[1]:
    raise ValueError(f"`metric` must be a square SPD matrix [d, d], got shape {metric.shape}.")
  chol = jax.scipy.linalg.cho_factor(metric, lower=True)
  solve_b = lambda v: jax.scipy.linalg.cho_solve(chol, v).astype(v.dtype)
  return (lambda v: metric.astype(v.dtype) @ v), solve_b, (lambda g: jnp.vdot(g, solve_b(g)))


def _cg(matvec, b, *, tol: float, maxiter: int):
  """Conjugate gradients on pytrees for SPD ``matvec``; returns ``(x, iterations, ||r||/||b||)``.

  The same recurrence as ``jax.scipy.sparse.linalg.cg`` (x0 = 0, stop at ``||r|| <= tol ||b||``)
  but it reports its iteration count and final residual (solver diagnostics).
  """
  vdot = lambda u, v: sum(jnp.vdot(a, c) for a, c in zip(jax.tree.leaves(u), jax.tree.leaves(v)))
  axpy = lambda alpha, u, v: jax.tree.map(lambda a, c: alpha * a + c, u, v)
  b_norm_sq = vdot(b, b)
  threshold = tol**2 * b_norm_sq

  def cond(carry):
    _, r, _, rs, k = carry
    return (rs > threshold) & (k < maxiter)

  def body(carry):
    x, r, p, rs, k = carry
    ap = matvec(p)
    alpha = rs / vdot(p, ap)
    x = axpy(alpha, p, x)
    r = axpy(-alpha, ap, r)
    rs_new = vdot(r, r)
    p = axpy(rs_new / rs, p, r)
    return x, r, p, rs_new, k + 1

  x0 = jax.tree.map(jnp.zeros_like, b)
  x, _, _, rs, k = jax.lax.while_loop(cond, body, (x0, b, b, b_norm_sq, jnp.zeros((), jnp.int32)))
  return x, k, jnp.sqrt(rs / jnp.where(b_norm_sq > 0, b_norm_sq, 1.0))


def gradient_normalized_newton(
    value_fn: Callable[..., chex.Array],
    curvature_fn: curvature_lib.CurvatureFn,
    *,
    linear_solver: str = "cholesky",
    metric: chex.Array | None = None,
    gamma_init: float = 1.0,
    gamma_min: float = 1e-9,
    max_search: int = 40,
    hessian_lipschitz: float | None = None,
    eps: float = 1e-8,
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
    adaptive_search: bool = True,
) -> GNSSolver:
  """Builds the solver for ``min_x value_fn(x, *data)`` (arXiv 2506.13710, Algorithm 1).

  Args:
    value_fn: ``(params, *data) -> scalar`` objective.
    curvature_fn: ``(params, *data) -> (v -> H v)``, e.g. from
      ``logitlab.second_order.curvature`` (``hessian``, ``gauss_newton``, ``fisher``,
      ``weighted_gauss_newton``). Must be PSD for the step bound to hold.
    linear_solver: ``"cholesky"`` (dense, small ``d``), ``"cg"`` (matrix-free) or
      ``"woodbury"`` (Sherman-Morrison; ``curvature_fn`` must be a ``curvature.rank_one``).
    metric: SPD matrix ``B [d, d]`` over ``ravel_pytree(params)``; identity if None.
    gamma_init: initial step radius ``gamma_0``.
    gamma_min: lower clip applied after each acceptance (``max(2 gamma, gamma_min)``).
    max_search: maximum solves per iteration in the adaptive search (the paper's 40).
      A search in which all of them fail (at round-off the acceptance test cannot pass)
      leaves the point *and gamma* as they were, and gamma never drops below
      ``gamma_min``: a stalled iteration carries no information about the curvature, so the
      next data (a new batch through the optax transform) starts from the last useful radius.
    hessian_lipschitz: if given, ``lambda = sqrt(L ||g||_* / 2)`` and no search.
    eps: ``lambda = ||g||_* / (gamma + eps)`` as in the reference code.
    cg_tol, cg_maxiter: relative tolerance and iteration cap (default ``10 d``) of the CG
      solve; the state reports the iterations and the residual of the last solve.
    adaptive_search: ``False`` is the reference code's ``adaptive_search=False`` (fixed gamma):
      one solve per iteration at ``gamma = gamma_init``, always taken, gamma never changes.
  """
  if linear_solver not in ("cholesky", "cg", "woodbury"):
    raise ValueError(f"`linear_solver` must be 'cholesky', 'cg' or 'woodbury', got "
                     f"{linear_solver!r}.")
  for name, value in (("gamma_init", gamma_init), ("gamma_min", gamma_min), ("eps", eps),
                      ("cg_tol", cg_tol)):
    numerics.check_positive(name, value)
  if max_search < 1:
    raise ValueError(f"`max_search` must be >= 1, got {max_search}.")
  if hessian_lipschitz is not None and hessian_lipschitz <= 0:
    raise ValueError(f"`hessian_lipschitz` must be > 0, got {hessian_lipschitz}.")
  apply_b, solve_b, dual_norm_sq = _metric_ops(metric)
  value_and_grad = jax.value_and_grad(value_fn)

  def dual_norm(grad):
    return jnp.sqrt(dual_norm_sq(ravel_pytree(grad)[0]))

  def make_solve(params, data):
    """Returns ``lam -> solution of (H + lam B) dx = -g`` for the current point."""
    matvec = curvature_fn(params, *data)
    flat_params, unravel = ravel_pytree(params)
    if linear_solver == "cholesky":
      hess = curvature_lib.dense_matrix(matvec, params)
      eye_b = apply_b(jnp.eye(flat_params.size, dtype=flat_params.dtype))

      def solve(lam, neg_grad):
        system = hess + lam * eye_b
        flat_b = ravel_pytree(neg_grad)[0]
        flat_dx = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(system, lower=True),
                                             flat_b)
        residual = jnp.linalg.norm(system @ flat_dx - flat_b) / jnp.where(
            jnp.any(flat_b != 0), jnp.linalg.norm(flat_b), 1.0)
        return unravel(flat_dx), jnp.zeros((), jnp.int32), residual
    elif linear_solver == "woodbury":
      if not isinstance(matvec, curvature_lib.RankOneOperator):
        raise TypeError("`curvature_fn` must build a curvature.rank_one operator for "
                        f"linear_solver='woodbury', got {type(matvec).__name__}.")
      flat_u = ravel_pytree(matvec.vector)[0].astype(flat_params.dtype)
      binv_u = solve_b(flat_u)
      scale = matvec.scale.astype(flat_params.dtype)

      def solve(lam, neg_grad):
        # Sherman-Morrison for (s u u^T + lam B)^{-1} b, the reference's "wsm" backend
        # (grad_norm_smooth_for_rank_one): one B-solve per iteration, none per trial.
        flat_b = ravel_pytree(neg_grad)[0]
        p_b, p_u = solve_b(flat_b) / lam, binv_u / lam
        flat_dx = p_b - scale / (1 + scale * jnp.vdot(flat_u, p_u)) * p_u * jnp.vdot(flat_u, p_b)
        system_dx = scale * flat_u * jnp.vdot(flat_u, flat_dx) + lam * apply_b(flat_dx)
        residual = jnp.linalg.norm(system_dx - flat_b) / jnp.where(
            jnp.any(flat_b != 0), jnp.linalg.norm(flat_b), 1.0)
        return unravel(flat_dx), jnp.zeros((), jnp.int32), residual
    else:

      def solve(lam, neg_grad):
        def regularized(v):
          bv = unravel(apply_b(ravel_pytree(v)[0]))
          return jax.tree.map(lambda hv, b: hv + lam * b, matvec(v), bv)

        return _cg(regularized, neg_grad, tol=cg_tol,
                   maxiter=10 * flat_params.size if cg_maxiter is None else cg_maxiter)

    return solve

  def init(params, *data):
    params = jax.tree.map(numerics.upcast, params)
    size = ravel_pytree(params)[0].size
    _check_metric_shape(metric, size)
    value, grad = value_and_grad(params, *data)
    dtype = jnp.result_type(value)
    return GNSState(
        params=params, value=value, grad=grad, grad_norm=dual_norm(grad),
        gamma=jnp.asarray(gamma_init, dtype), step_gamma=jnp.asarray(gamma_init, dtype),
        step_norm=jnp.zeros((), dtype), accepted=jnp.asarray(False),
        num_solves=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32),
        cg_iterations=jnp.zeros((), jnp.int32), cg_residual=jnp.zeros((), dtype))

  def trial(state, solve, gamma, data):
    """One regularized Newton solve at radius ``gamma``."""
    if hessian_lipschitz is None:
      lam = state.grad_norm / (gamma + eps)
    else:
      lam = jnp.sqrt(hessian_lipschitz * state.grad_norm / 2)
    neg_grad = jax.tree.map(jnp.negative, state.grad)
    dx, cg_iterations, cg_residual = solve(lam, neg_grad)
    new_params = jax.tree.map(jnp.add, state.params, dx)
    new_value, new_grad = value_and_grad(new_params, *data)
    new_grad_norm = dual_norm(new_grad)
    # NaN (failed Cholesky / overflow) compares False: the trial is rejected.
    sufficient = state.value - new_value >= new_grad_norm**2 / (8 * lam)
    flat_dx = ravel_pytree(dx)[0]
    step_norm = jnp.sqrt(jnp.vdot(flat_dx, apply_b(flat_dx)))
    # The step's first-order change of f below the dtype's resolution of f: the acceptance
    # test compares rounding noise, so the trial says nothing about gamma.
    # (NaN from a failed solve is not round-off: such a trial halves gamma as before.)
    predicted = jnp.abs(jnp.vdot(ravel_pytree(state.grad)[0], flat_dx))
    resolvable = ~(predicted <= _ROUNDOFF_ULPS * jnp.finfo(state.value.dtype).eps * jnp.abs(
        state.value))
    return sufficient & jnp.isfinite(new_value), resolvable, (
        new_params, new_value, new_grad, new_grad_norm, step_norm), (
            cg_iterations, cg_residual.astype(state.value.dtype))

  def update(state, *data):
    solve = make_solve(state.params, data)
    zero_candidate = (state.params, state.value, state.grad, state.grad_norm,
                      jnp.zeros_like(state.step_norm))

    if hessian_lipschitz is not None or not adaptive_search:
      gamma = (state.gamma if hessian_lipschitz is None
               else jnp.sqrt(2 * state.grad_norm / hessian_lipschitz))
      _, _, candidate, (cg_iterations, cg_residual) = trial(state, solve, gamma, data)
      params, value, grad, grad_norm, step_norm = candidate
      return GNSState(params, value, grad, grad_norm, gamma, gamma, step_norm,
                      jnp.asarray(True), jnp.ones((), jnp.int32), state.count + 1,
                      cg_iterations, cg_residual)

    def search_cond(carry):
      num_solves, accepted, at_roundoff = carry[0], carry[1], carry[2]
      return (~accepted) & (~at_roundoff) & (num_solves < max_search)

    def search_body(carry):
      num_solves, _, _, gamma, _, _, _ = carry
      accepted, resolvable, candidate, diagnostics = trial(state, solve, gamma, data)
      # A trial rejected at round-off ends the search as a stall instead of halving gamma:
      # halving on rounding noise walked gamma down to ~4e-6 over a float32 plateau, and the
      # optax transform then needed ~18 doublings to move on the next batch. (An acceptance
      # at round-off is kept: in float32 such steps still lower the gradient norm.)
      # The floor applies to halving too: in float32, 40 halvings per stalled iteration
      # reached gamma = 0.0 exactly, from which doubling never recovers.
      next_gamma = jnp.maximum(jnp.where(accepted, 2 * gamma, gamma / 2), gamma_min)
      return (num_solves + 1, accepted, ~accepted & ~resolvable, next_gamma, gamma, candidate,
              diagnostics)

    zero_diagnostics = (jnp.zeros((), jnp.int32), jnp.zeros((), state.value.dtype))
    num_solves, accepted, _, gamma, step_gamma, candidate, diagnostics = jax.lax.while_loop(
        search_cond, search_body,
        (jnp.zeros((), jnp.int32), jnp.asarray(False), jnp.asarray(False), state.gamma,
         state.gamma, zero_candidate, zero_diagnostics))
    # If every trial failed, `candidate` is the last rejected one: stay at x, and keep the
    # gamma this iteration started from (recovery: the stall says nothing about curvature).
    params, value, grad, grad_norm, step_norm = jax.tree.map(
        lambda new, old: jnp.where(accepted, new, old), candidate, zero_candidate)
    gamma = jnp.where(accepted, gamma, jnp.maximum(state.gamma, gamma_min))
    return GNSState(params, value, grad, grad_norm, gamma, step_gamma, step_norm, accepted,
                    num_solves, state.count + 1, *diagnostics)

  return GNSSolver(init=init, update=update)
