"""Curvature operators for gradient-normalized smoothness methods (arXiv 2506.13710).

A *curvature function* maps ``(params, *data)`` to a linear operator ``v -> H v`` on
pytrees shaped like ``params``, where ``H`` is the exact Hessian or a PSD approximation of
it. Building the operator once per outer iteration (``jax.linearize``) lets the adaptive
gamma search and every conjugate-gradient iteration reuse one linearization. The same
operator feeds the dense (Cholesky) path through ``dense_matrix``, so matrix-free and
dense solves use exactly the same curvature.

Approximations (all PSD):

* ``gauss_newton(model_fn, loss_fn)``: ``f = loss(z(x))``, ``G = J^T (d^2 loss / dz^2) J``
  with ``J = dz/dx``. For the nonlinear equations ``(1/p)||u(x)||^p`` this is the paper's
  "inexact Hessian" ``||u||^{p-2} J^T J + (p-2) ||u||^{p-4} (J^T u)(J^T u)^T``.
* ``weighted_gauss_newton(model_fn, mu)``: for ``f = mu logsumexp(z(x)/mu)``,
  ``W = (1/mu) J^T diag(softmax(z/mu)) J`` = Gauss-Newton + ``g g^T / mu`` (the true
  Hessian of the outer logsumexp without its ``-pi pi^T / mu`` term).
* ``rank_one(factor_fn)``: ``s u u^T`` (e.g. the Fisher term of the nonlinear equations),
  solvable by Sherman-Morrison (``linear_solver="woodbury"``).
* ``fisher(per_example_fn)``: ``f = sum_i w_i l_i(x)``, empirical Fisher
  ``F = sum_i w_i grad l_i grad l_i^T``; with ``normalized=True`` each term is divided
  by ``l_i`` (``sum_i w_i grad l_i grad l_i^T / l_i``). For the logistic loss the
  normalized form upper-bounds the Hessian (``l'^2 / l >= l''``) and is tight as
  ``l -> 0``, the regime of the paper's global linear rate when ``f* ~ 0``; for
  ``(1/p)||u||^p`` with one "example" it is ``p/(p-2)`` times the paper's Fisher term.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from logitlab import numerics

Params = Any
LinearOperator = Callable[[Params], Params]
CurvatureFn = Callable[..., LinearOperator]


def _check_callable(name: str, fn) -> None:
  if not callable(fn):
    raise TypeError(f"`{name}` must be a callable, got {type(fn).__name__}.")


def _check_nonnegative(name: str, value) -> None:
  if not (isinstance(value, (int, float)) and value >= 0 and value < float("inf")):
    raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def hessian(value_fn: Callable[..., chex.Array]) -> CurvatureFn:
  """Exact Hessian-vector products of ``value_fn(params, *data)`` (forward-over-reverse)."""
  _check_callable("value_fn", value_fn)

  def curvature_fn(params, *data):
    _, hvp = jax.linearize(lambda p: jax.grad(value_fn)(p, *data), params)
    return hvp

  return curvature_fn


def zero() -> CurvatureFn:
  """``H = 0``: with it the solver is the reference code's normalized gradient method (NGM,
  ``grad_norm_smooth_gradient_method``): ``dx = -B^{-1} g / lambda``, ``lambda = ||g||_* /
  gamma``, with the same adaptive gamma search."""

  def curvature_fn(params, *data):
    del params, data
    return lambda v: jax.tree.map(jnp.zeros_like, v)

  return curvature_fn


class RankOneOperator(NamedTuple):
  """``H = scale * vector vector^T`` as a linear operator (``v -> H v``) that keeps its factors,
  so that ``gradient_normalized_newton(linear_solver="woodbury")`` can solve
  ``(H + lambda B) dx = -g`` by Sherman-Morrison in ``O(d)`` metric solves."""
  scale: chex.Array
  vector: Params

  def __call__(self, v: Params) -> Params:
    coeff = self.scale * sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(self.vector),
                                                            jax.tree.leaves(v)))
    return jax.tree.map(lambda u: coeff * u, self.vector)


def rank_one(factor_fn: Callable[..., tuple[chex.Array, Params]]) -> CurvatureFn:
  """``H = s u u^T`` from ``factor_fn(params, *data) -> (s, u)`` (``s >= 0`` scalar, ``u`` a
  pytree like ``params``); the operator is a ``RankOneOperator``. Example: the reference's
  Fisher term of ``(1/p)||r(x)||^p``, ``(p-2)||r||^{p-4} (J^T r)(J^T r)^T``
  (``approx_hess_fn_fisher_term``, epfml/grad-norm-smooth ``src/approximations.py``)."""
  _check_callable("factor_fn", factor_fn)

  def curvature_fn(params, *data):
    scale, vector = factor_fn(params, *data)
    if jnp.ndim(scale) != 0:
      raise ValueError(f"`factor_fn` must return a scalar scale, got shape {jnp.shape(scale)}.")
    if jax.tree.structure(vector) != jax.tree.structure(params):
      raise ValueError("`factor_fn` must return a vector with the pytree structure of `params`.")
    return RankOneOperator(jnp.asarray(scale), vector)

  return curvature_fn


def gauss_newton(model_fn: Callable[..., chex.Array],
                 loss_fn: Callable[..., chex.Array]) -> CurvatureFn:
  """Gauss-Newton ``J^T (d^2 loss/dz^2) J`` for ``f = loss_fn(model_fn(params, *data), *data)``.

  ``J`` is the Jacobian of ``z = model_fn(params, *data)`` (any shape); the products use
  one ``jvp`` (``J v``), one Hessian-vector product of ``loss_fn`` in ``z`` space and one
  ``vjp`` (``J^T u``). PSD whenever ``loss_fn`` is convex in ``z``.
  """
  _check_callable("model_fn", model_fn)
  _check_callable("loss_fn", loss_fn)

  def curvature_fn(params, *data):
    z, jvp_fn = jax.linearize(lambda p: model_fn(p, *data), params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    _, loss_hvp = jax.linearize(lambda zz: jax.grad(loss_fn)(zz, *data), z)
    return lambda v: vjp_fn(loss_hvp(jvp_fn(v)))[0]

  return curvature_fn


def weighted_gauss_newton(model_fn: Callable[..., chex.Array], mu: float) -> CurvatureFn:
  """``(1/mu) J^T diag(softmax(z / mu)) J`` for ``f = mu * logsumexp(z / mu)``.

  ``z = model_fn(params, *data)`` must be a vector ``[m]``. This is the paper's weighted
  Gauss-Newton for the logsumexp problem; it equals the true Hessian plus
  ``grad f grad f^T / mu``.
  """
  _check_callable("model_fn", model_fn)
  numerics.check_positive("mu", mu)

  def curvature_fn(params, *data):
    z, jvp_fn = jax.linearize(lambda p: model_fn(p, *data), params)
    numerics.check_logits("model_fn(params)", z)
    if z.ndim != 1:
      raise ValueError(f"`model_fn(params)` must return a vector [m], got shape {z.shape}.")
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    probs = jnp.exp(numerics.log_softmax(z, temperature=mu))
    return lambda v: vjp_fn(probs * jvp_fn(v) / mu)[0]

  return curvature_fn


def fisher(per_example_fn: Callable[..., tuple[chex.Array, chex.Array]], *,
           normalized: bool = False) -> CurvatureFn:
  """Empirical Fisher ``sum_i w_i grad l_i grad l_i^T`` (``/ l_i`` when ``normalized``).

  Args:
    per_example_fn: ``(params, *data) -> (losses [n], weights [n])`` with
      ``f = sum_i weights_i losses_i`` (weights 0 on masked examples).
    normalized: divide each outer product by ``l_i`` (examples with ``l_i = 0`` add 0).
  """
  _check_callable("per_example_fn", per_example_fn)

  def curvature_fn(params, *data):
    losses, jvp_fn, weights = jax.linearize(
        lambda p: per_example_fn(p, *data), params, has_aux=True)
    chex.assert_equal_shape([losses, weights])
    if normalized:
      # l_i = 0 has grad l_i = 0 for a nonnegative loss: the term is 0, not 0/0.
      weights = jnp.where(losses > 0, weights / jnp.where(losses > 0, losses, 1.0), 0.0)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    return lambda v: vjp_fn(weights * jvp_fn(v))[0]

  return curvature_fn


def add_ridge(curvature_fn: CurvatureFn, l2: float) -> CurvatureFn:
  """Curvature of ``f + (l2/2)||params||^2``: ``v -> H v + l2 v``."""
  _check_callable("curvature_fn", curvature_fn)
  _check_nonnegative("l2", l2)
  if l2 == 0:
    return curvature_fn

  def ridge_curvature_fn(params, *data):
    matvec = curvature_fn(params, *data)
    return lambda v: jax.tree.map(lambda hv, vv: hv + l2 * vv, matvec(v), v)

  return ridge_curvature_fn


def scale(curvature_fn: CurvatureFn, factor: float) -> CurvatureFn:
  """``v -> factor * H v`` (``factor >= 0`` keeps a PSD curvature PSD)."""
  _check_callable("curvature_fn", curvature_fn)
  _check_nonnegative("factor", factor)

  def scaled_curvature_fn(params, *data):
    matvec = curvature_fn(params, *data)
    return lambda v: jax.tree.map(lambda hv: factor * hv, matvec(v))

  return scaled_curvature_fn


def dense_matrix(matvec: LinearOperator, params: Params) -> jax.Array:
  """Materializes ``matvec`` as a symmetric ``[d, d]`` matrix over ``ravel_pytree(params)``.

  One operator application per column (vmapped); meant for small ``d`` (Cholesky path).
  """
  _check_callable("matvec", matvec)
  leaves = jax.tree.leaves(params)
  if not leaves or not all(hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
                           for x in leaves):
    raise TypeError(f"`params` must be a non-empty pytree of float arrays, got "
                    f"{type(params).__name__}.")
  flat, unravel = ravel_pytree(params)
  columns = jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0])(
      jnp.eye(flat.size, dtype=flat.dtype))
  # Rows of `columns` are H e_j = column j; symmetrize to remove round-off asymmetry.
  return 0.5 * (columns + columns.T)
