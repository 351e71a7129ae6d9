"""Test problems of arXiv 2506.13710 with their curvature options.

Each constructor returns a ``Problem``: ``value_fn(params, *data)``, a dict of curvature
functions (see ``curvature``) and the ``data`` tuple to pass to both. Inputs may be bf16;
math is float32 or wider (``numerics.upcast``).

* ``logistic_regression``: ``f(w) = mean_i log(1 + exp(-b_i a_i^T w)) + (l2/2)||w||^2``.
* ``softmax_regression``: ``f(W) = mean_i -log softmax(a_i^T W)_{y_i} + (l2/2)||W||^2``.
* ``logsumexp``: ``f(x) = mu log sum_i exp((a_i^T x - b_i) / mu)``.
* ``nonlinear_equations``: ``f(x) = (1/p) ||A x - b||^p`` (the paper's equations with a
  linear operator; p = 4 in its experiments).
* ``rosenbrock``: ``f(x) = sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 = ||u(x)||^2``.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from logitlab import numerics
from logitlab.second_order import curvature
from logitlab.second_order.solver import _check_int_at_least_1


class Problem(NamedTuple):
  value_fn: Callable[..., chex.Array]
  curvatures: dict[str, curvature.CurvatureFn]
  data: tuple


def _example_weights(where: chex.Array | None, num_examples: int) -> jax.Array:
  """Weights ``w_i`` with ``sum_i w_i l_i = masked_mean(l, where)``."""
  if where is None:
    return jnp.full((num_examples,), 1.0 / num_examples, jnp.float32)
  where = jnp.asarray(where).astype(jnp.float32)
  return where / jnp.maximum(jnp.sum(where), 1.0)


def _check_design(features: chex.Array, where: chex.Array | None) -> None:
  numerics.check_logits("features", features, min_rank=2)
  if features.ndim != 2:
    raise ValueError(f"`features` must have shape [n, d], got {features.shape}.")
  numerics.check_mask("where", where, features.shape[:1])


def _check_system(matrix: chex.Array, offsets: chex.Array) -> None:
  """``matrix [m, d]`` floating and ``offsets [m]`` (the rows of ``A x - b``)."""
  numerics.check_logits("matrix", matrix, min_rank=2)
  if matrix.ndim != 2:
    raise ValueError(f"`matrix` must have shape [m, d], got {matrix.shape}.")
  if jnp.shape(offsets) != matrix.shape[:1]:
    raise ValueError(f"`offsets` must have shape [m] = {matrix.shape[:1]}, got "
                     f"{jnp.shape(offsets)}.")


def _ridge(params) -> jax.Array:
  return 0.5 * sum(jnp.vdot(p, p) for p in jax.tree.leaves(params))


def _glm(per_example_fn, model_fn, loss_fn, l2) -> tuple[Callable, dict]:
  """Objective and curvatures of ``sum_i w_i l_i + (l2/2)||params||^2``."""

  def value_fn(params, *data):
    losses, weights = per_example_fn(params, *data)
    return jnp.sum(weights * losses) + l2 * _ridge(params)

  curvatures = {
      "hessian": curvature.hessian(value_fn),
      "gauss_newton": curvature.add_ridge(curvature.gauss_newton(model_fn, loss_fn), l2),
      "fisher": curvature.add_ridge(curvature.fisher(per_example_fn), l2),
      "normalized_fisher": curvature.add_ridge(
          curvature.fisher(per_example_fn, normalized=True), l2),
  }
  return value_fn, curvatures


def logistic_regression(features: chex.Array, labels: chex.Array,
                        where: chex.Array | None = None, l2: float = 0.0) -> Problem:
  """Binary logistic regression; params ``w [d]``.

  Args:
    features: ``[n, d]`` design matrix (append a ones column for a bias).
    labels: ``[n]`` in {0, 1} or {-1, +1}.
    where: optional ``[n]`` mask of valid examples.
    l2: ridge coefficient.
  """
  _check_design(features, where)
  if labels.shape != features.shape[:1]:
    raise ValueError(f"`labels` must have shape [n] = {features.shape[:1]}, got {labels.shape}.")
  signs = jnp.where(jnp.asarray(labels) > 0, 1.0, -1.0)
  weights = _example_weights(where, features.shape[0])

  def margins(w, features, signs, weights):
    return signs * (numerics.upcast(features) @ w)

  def per_example_fn(w, features, signs, weights):
    return jax.nn.softplus(-margins(w, features, signs, weights)), weights

  def margin_loss(t, features, signs, weights):
    return jnp.sum(weights * jax.nn.softplus(-t))

  value_fn, curvatures = _glm(per_example_fn, margins, margin_loss, l2)
  return Problem(value_fn, curvatures, (jnp.asarray(features), signs, weights))


def softmax_regression(features: chex.Array, labels: chex.Array, num_classes: int,
                       where: chex.Array | None = None, l2: float = 0.0) -> Problem:
  """Multinomial logistic regression; params ``W [d, C]``.

  Args:
    features: ``[n, d]``; labels: ``[n]`` ints in ``[0, num_classes)``.
    where: optional ``[n]`` mask of valid examples. l2: ridge coefficient.
  """
  _check_design(features, where)
  if labels.shape != features.shape[:1]:
    raise ValueError(f"`labels` must have shape [n] = {features.shape[:1]}, got {labels.shape}.")
  _check_int_at_least_1("num_classes", num_classes)
  numerics.check_values("labels", (labels >= 0) & (labels < num_classes),
                        f"class indices in [0, {num_classes})")
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  weights = _example_weights(where, features.shape[0])

  def logits(w, features, one_hot, weights):
    return numerics.upcast(features) @ w

  def cross_entropy(z, features, one_hot, weights):
    return -jnp.sum(one_hot * numerics.log_softmax(z), axis=-1)

  def per_example_fn(w, features, one_hot, weights):
    return cross_entropy(logits(w, features, one_hot, weights), features, one_hot,
                         weights), weights

  def logits_loss(z, features, one_hot, weights):
    return jnp.sum(weights * cross_entropy(z, features, one_hot, weights))

  value_fn, curvatures = _glm(per_example_fn, logits, logits_loss, l2)
  return Problem(value_fn, curvatures, (jnp.asarray(features), one_hot, weights))


def logsumexp(matrix: chex.Array, offsets: chex.Array, mu: float = 1.0) -> Problem:
  """``f(x) = mu log sum_i exp((a_i^T x - b_i)/mu)``; params ``x [d]``.

  Curvatures: ``hessian`` (= Gauss-Newton, the inner map is linear) and
  ``weighted_gauss_newton`` ``(1/mu) A^T diag(softmax) A`` (= Hessian + g g^T / mu).
  """
  _check_system(matrix, offsets)
  numerics.check_positive("mu", mu)

  def scores(x, matrix, offsets):
    return numerics.upcast(matrix) @ x - offsets

  def value_fn(x, matrix, offsets):
    return mu * jax.nn.logsumexp(scores(x, matrix, offsets) / mu)

  curvatures = {
      "hessian": curvature.hessian(value_fn),
      "weighted_gauss_newton": curvature.weighted_gauss_newton(scores, mu),
  }
  return Problem(value_fn, curvatures, (jnp.asarray(matrix), numerics.upcast(offsets)))


def _power_norm(u, p):
  # (1/p)(sum u^2)^(p/2): a polynomial for even p, so autodiff is exact at u = 0.
  return jnp.sum(u * u) ** (p / 2) / p


def _fisher_term_factors(residuals, p, x, *data):
  """``((p-2)||u||^{p-4}, J^T u)``: the rank-one Fisher term of ``(1/p)||u(x)||^p`` (``0`` at
  ``u = 0``, where the term vanishes for ``p > 2``; the reference divides by 0 there)."""
  u, vjp_fn = jax.vjp(lambda z: residuals(z, *data), x)
  norm = jnp.linalg.norm(u)
  safe = jnp.where(norm > 0, norm, 1.0)
  scale = jnp.where(norm > 0, (p - 2) * safe ** (p - 4), 0.0)
  return scale, vjp_fn(u)[0]


def nonlinear_equations(matrix: chex.Array, offsets: chex.Array, p: float = 4.0) -> Problem:
  """``f(x) = (1/p)||A x - b||^p``; params ``x [d]``.

  Curvatures: ``hessian``; ``gauss_newton`` (the paper's inexact Hessian, exact here since
  ``u`` is linear); ``fisher_term`` ``(p-2)||u||^{p-4}(A^T u)(A^T u)^T``, a
  ``curvature.rank_one`` (``linear_solver="woodbury"`` solves with it by Sherman-Morrison;
  pair it with ``B = A^T A``).
  """
  _check_system(matrix, offsets)
  if not p >= 2:
    raise ValueError(f"`p` must be >= 2, got {p}.")

  def residuals(x, matrix, offsets):
    return numerics.upcast(matrix) @ x - offsets

  def value_fn(x, matrix, offsets):
    return _power_norm(residuals(x, matrix, offsets), p)

  curvatures = {
      "hessian": curvature.hessian(value_fn),
      "gauss_newton": curvature.gauss_newton(residuals, lambda u, *_: _power_norm(u, p)),
      "fisher_term": curvature.rank_one(functools.partial(_fisher_term_factors, residuals, p)),
  }
  return Problem(value_fn, curvatures, (jnp.asarray(matrix), numerics.upcast(offsets)))


def chebyshev_residuals(x: chex.Array) -> jax.Array:
  """``u_1 = (1 - x_1)/2``, ``u_i = x_i - (2 x_{i-1}^2 - 1)`` (Chebyshev polynomial ``p_2``);
  ``x [n >= 1]``, zero only at ``x = 1``."""
  if jnp.ndim(x) != 1 or jnp.shape(x)[0] < 1:
    raise ValueError(f"`x` must be a vector [n >= 1], got shape {jnp.shape(x)}.")
  x = numerics.upcast(x)
  return jnp.concatenate([0.5 * (1.0 - x[:1]), x[1:] - (2.0 * x[:-1] ** 2 - 1.0)])


def chebyshev(p: float = 4.0) -> Problem:
  """Chebyshev-polynomial equations ``f(x) = (1/p)||u(x)||^p`` (``chebyshev_residuals``),
  the reference's ``ChebyshevOracle`` (epfml/grad-norm-smooth ``src/oracles.py``); minimum 0
  at ``x = 1``; params ``x [n]``, no data.

  Curvatures: ``hessian`` (indefinite away from the solution); ``gauss_newton``, the paper's
  inexact Hessian ``||u||^{p-2} J^T J + (p-2)||u||^{p-4}(J^T u)(J^T u)^T``
  (``approx_hess_fn_chebyshev``); ``fisher_term`` (rank one, as for ``nonlinear_equations``).
  """
  if not (isinstance(p, (int, float)) and p >= 2):
    raise ValueError(f"`p` must be >= 2, got {p!r}.")
  residuals = lambda x: chebyshev_residuals(x)

  def value_fn(x):
    return _power_norm(residuals(x), p)

  return Problem(value_fn, {
      "hessian": curvature.hessian(value_fn),
      "gauss_newton": curvature.gauss_newton(residuals, lambda u: _power_norm(u, p)),
      "fisher_term": curvature.rank_one(functools.partial(_fisher_term_factors, residuals, p)),
  }, ())


def rosenbrock_residuals(x: chex.Array) -> jax.Array:
  """``u(x) = [10 (x_{i+1} - x_i^2), 1 - x_i]`` so that Rosenbrock ``= ||u||^2``; ``x [d >= 2]``."""
  if jnp.ndim(x) != 1 or jnp.shape(x)[0] < 2:
    raise ValueError(f"`x` must be a vector [d >= 2], got shape {jnp.shape(x)}.")
  return jnp.concatenate([10.0 * (x[1:] - x[:-1] ** 2), 1.0 - x[:-1]])


def rosenbrock() -> Problem:
  """Chained Rosenbrock ``||u(x)||^2``; params ``x [d]``, minimum 0 at ``x = 1``.

  Curvatures: ``hessian`` (indefinite away from the valley) and ``gauss_newton``
  ``2 J^T J`` (PSD).
  """

  def value_fn(x):
    return jnp.sum(rosenbrock_residuals(x) ** 2)

  curvatures = {
      "hessian": curvature.hessian(value_fn),
      "gauss_newton": curvature.gauss_newton(rosenbrock_residuals, lambda u: jnp.sum(u * u)),
  }
  return Problem(value_fn, curvatures, ())
