"""Gradient-normalized smoothness second-order methods (arXiv 2506.13710).

``gradient_normalized_newton`` is the gradient-regularized Newton method with an
approximate Hessian and the authors' adaptive step-radius search; ``curvature`` builds
exact-Hessian, Gauss-Newton, Fisher and weighted Gauss-Newton operators (matrix-free,
jvp/vjp based); ``problems`` holds the paper's test problems;
``super_universal_newton`` is the reference code's super-universal Newton baseline;
``gradient_method`` / ``fast_gradient_method`` are its first-order baselines (GM / FGM)
and ``cubic_newton`` its cubic-regularized Newton baseline;
``scale_by_gradient_normalized_newton`` wraps one solver iteration as an optax
transformation (extra arg ``value_fn``).

Example::

  from logitlab import second_order as so
  problem = so.problems.logistic_regression(features, labels)
  solver = so.gradient_normalized_newton(
      problem.value_fn, problem.curvatures["normalized_fisher"])
  state = solver.init(w0, *problem.data)
  update = jax.jit(solver.update)
  for _ in range(50):
    state = update(state, *problem.data)
"""
from logitlab.second_order import curvature
from logitlab.second_order import problems
from logitlab.second_order.cubic_newton import CubicNewtonSolver
from logitlab.second_order.cubic_newton import CubicNewtonState
from logitlab.second_order.cubic_newton import cubic_newton
from logitlab.second_order.gradient_methods import GradientSolver
from logitlab.second_order.gradient_methods import GradientState
from logitlab.second_order.gradient_methods import fast_gradient_method
from logitlab.second_order.gradient_methods import gradient_method
from logitlab.second_order.solver import GNSSolver
from logitlab.second_order.solver import GNSState
from logitlab.second_order.solver import gradient_normalized_newton
from logitlab.second_order.super_universal import SuperUniversalSolver
from logitlab.second_order.super_universal import SuperUniversalState
from logitlab.second_order.super_universal import super_universal_newton
from logitlab.second_order.transform import ScaleByGNSState
from logitlab.second_order.transform import scale_by_gradient_normalized_newton

__all__ = ["curvature", "problems", "GNSSolver", "GNSState", "gradient_normalized_newton",
           "ScaleByGNSState", "scale_by_gradient_normalized_newton", "SuperUniversalSolver",
           "SuperUniversalState", "super_universal_newton", "GradientSolver", "GradientState",
           "gradient_method", "fast_gradient_method", "CubicNewtonSolver", "CubicNewtonState",
           "cubic_newton"]
