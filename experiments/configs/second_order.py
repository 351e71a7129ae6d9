"""Gradient-normalized smoothness (arXiv 2506.13710): GNS vs Newton, GD, Adam, L-BFGS.

Problems (bundled or generated data only): logistic regression on scikit-learn
breast_cancer and digits (one digit vs rest) with the (normalized) Fisher, softmax
regression on digits (dense and matrix-free CG), the logsumexp problem (A random n x n,
mu = 1; the paper uses n = 1000, 200 keeps the CPU run short), nonlinear equations
(1/p)||Ax - b||^p with p = 4, and the chained Rosenbrock function. Each method runs until
f - f* <= tol, max_iters or time_limit_s (compile time excluded).

Run:  python -m experiments.second_order
      python -m experiments.second_order --config.problems=logsumexp --config.logsumexp_dim=1000
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.problems = ("logistic_breast_cancer,logistic_digits,softmax_digits,logsumexp,"
                "nonlinear_equations,rosenbrock")
  c.seed = 0
  c.x64 = True  # tol = 1e-8 on f - f* needs float64, as in the reference NumPy code
  c.tol = 1e-8
  c.max_iters_second_order = 1000
  c.max_iters_first_order = 5000
  c.time_limit_s = 20.0  # per method and problem
  c.gamma_init = 1.0
  c.cg_tol = 1e-10
  c.digit = 8  # logistic_digits: this digit vs the rest
  c.softmax_l2 = 1e-4  # digits are linearly separable: a ridge keeps f* finite
  c.logsumexp_dim = 200
  c.logsumexp_mu = 1.0
  c.equations_dim = 100
  c.equations_p = 4.0
  c.rosenbrock_dim = 20
  c.adam_learning_rates = "0.001,0.01,0.1"  # the best one is reported
  c.out_dir = "experiments/out/second_order"
  return c
