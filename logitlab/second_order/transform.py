"""optax interface to the gradient-normalized Newton step (arXiv 2506.13710).

``scale_by_gradient_normalized_newton`` is a ``GradientTransformationExtraArgs`` whose
``update`` runs one iteration of ``solver.gradient_normalized_newton`` (solve, adaptive
gamma search, acceptance test) and returns ``x_+ - x`` as the update; only gamma lives in
the optimizer state. It needs the objective as the keyword-only extra ``value_fn``
(``params -> scalar``), like ``optax.lbfgs`` linesearches and optax/contrib Sophia's
``obj_fn``; other extras are ignored. The incoming ``updates`` are not used: the method
recomputes the gradient at ``params`` with ``value_fn`` (the step needs ``f`` and
``grad f`` at the same point, and at the trial points).

Usage::

  tx = scale_by_gradient_normalized_newton()
  updates, opt_state = tx.update(grads, opt_state, params, value_fn=loss_of_params)
  params = optax.apply_updates(params, updates)
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from logitlab import numerics
from logitlab.second_order import curvature as curvature_lib
from logitlab.second_order import solver as solver_lib


class ScaleByGNSState(NamedTuple):
  gamma: chex.Array  # step radius the next update tries first
  accepted: chex.Array  # whether the last update moved the params


def scale_by_gradient_normalized_newton(
    curvature: Callable[[Callable], curvature_lib.CurvatureFn] = curvature_lib.hessian,
    *,
    gamma_init: float = 1.0,
    linear_solver: str = "cg",
    **solver_kwargs,
) -> optax.GradientTransformationExtraArgs:
  """Gradient-normalized Newton step as an optax transformation.

  Args:
    curvature: maps ``value_fn`` to a curvature function ``params -> (v -> H v)``;
      the exact Hessian by default. Gauss-Newton / Fisher need more structure than
      ``value_fn`` (a model and a loss, or per-example losses): pass e.g.
      ``lambda _: curvature.gauss_newton(model_fn, loss_fn)`` with batch-free closures.
    gamma_init: initial step radius.
    linear_solver: ``"cg"`` (matrix-free, default for models) or ``"cholesky"``.
    **solver_kwargs: forwarded to ``gradient_normalized_newton`` (metric, max_search, ...).
  """

  numerics.check_positive("gamma_init", gamma_init)

  def init_fn(params):
    del params
    return ScaleByGNSState(gamma=jnp.asarray(gamma_init, jnp.float32),
                           accepted=jnp.asarray(False))

  def update_fn(updates, state, params=None, *, value_fn, **extra_args):
    del updates, extra_args
    if params is None:
      raise ValueError("scale_by_gradient_normalized_newton needs `params`.")
    solver = solver_lib.gradient_normalized_newton(
        value_fn, curvature(value_fn), gamma_init=gamma_init, linear_solver=linear_solver,
        **solver_kwargs)
    start = solver.init(params)
    start = start._replace(gamma=state.gamma.astype(start.gamma.dtype))
    new = solver.update(start)
    step = jax.tree.map(lambda new_p, p: (new_p - p).astype(p.dtype), new.params, params)
    return step, ScaleByGNSState(gamma=new.gamma.astype(jnp.float32), accepted=new.accepted)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
