"""The GNS paper's set-ups (arXiv 2506.13710; the authors' notebooks/examples.ipynb).

logsumexp: A uniform(-1, 1) n x m with n = m = 1000, b uniform(-1, 1), mu = 1, shifted so that
x* = 0 (``create_log_sum_exp_zero_oracle``), x0 = 1, metric B = A A^T. Nonlinear equations:
(1/p)||Ax - b||^p with 100 equations and 200 unknowns, p = 4, x0 = 1,
B = A^T A + 1e-8 I. Chebyshev polynomials: n = 1000, p = 4, x0 uniform(0, 1), identity metric.
The paper runs 1000 / 100 / 100 second-order iterations; ``max_iters`` caps ours (CPU budget),
and the run stops at f - f* < tol as the reference does.

Run:  python -m experiments.gns_paper_setups
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.setups = "logsumexp,nonlinear_equations,chebyshev"
  c.seed = 3124  # the notebook's np.random.seed
  c.tol = 1e-8
  c.logsumexp_dim = 1000
  c.equations_rows, c.equations_cols, c.equations_p = 100, 200, 4.0
  c.chebyshev_dim, c.chebyshev_p = 1000, 4.0
  c.max_iters_second_order = 100
  c.max_iters_first_order = 1000
  c.out_dir = "experiments/results/gns_paper_setups"
  return c
