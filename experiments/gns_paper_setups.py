"""The GNS paper's set-ups (config docstring) with the reference code's methods, in float64.

Methods: GNS with the exact Hessian and with the paper's inexact Hessian (weighted
Gauss-Newton for logsumexp; the rank-one Fisher term solved by Sherman-Morrison for the
equations, the reference's ``grad_norm_smooth_for_rank_one`` "wsm"; the Gauss-Newton form for
Chebyshev), super-universal Newton (Chebyshev, as in the notebook), and the gradient / fast
gradient methods with the same metric. Records f(x_k) - f* per iteration until
f - f* < tol or ``max_iters``; writes ``results.json`` and ``<setup>.png`` to ``out_dir``.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app
from ml_collections import config_flags

from logitlab import second_order as so

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)


def setup(name, config):
  """Returns (problem, x0, f_star, {method: (builder, max_iters)})."""
  rng = np.random.RandomState(config.seed)  # the notebook's legacy np.random stream
  second, first = config.max_iters_second_order, config.max_iters_first_order
  if name == "logsumexp":
    n = config.logsumexp_dim
    a = rng.rand(n, n) * 2 - 1
    b = rng.rand(n) * 2 - 1
    design = a.T  # create_log_sum_exp_zero_oracle(A.T, b, mu): rows a_i = columns of A
    weights = np.exp(-(b - b.min()))
    design = design - (weights / weights.sum()) @ design  # A_new = A - grad f(0): x* = 0
    problem = so.problems.logsumexp(jnp.asarray(design), jnp.asarray(b), 1.0)
    metric = jnp.asarray(a @ a.T)
    f_star = float(problem.value_fn(jnp.zeros(n), *problem.data))
    x0 = jnp.ones(n)
    gns = lambda c: lambda: so.gradient_normalized_newton(
        problem.value_fn, problem.curvatures[c], metric=metric, linear_solver="cg",
        cg_tol=1e-10)
    methods = {"gns_exact_hessian": (gns("hessian"), second),
               "gns_weighted_gauss_newton": (gns("weighted_gauss_newton"), second)}
  elif name == "nonlinear_equations":
    rows, cols = config.equations_rows, config.equations_cols
    a = rng.rand(rows, cols) * 2 - 1
    b = rng.rand(rows) * 2 - 1
    problem = so.problems.nonlinear_equations(jnp.asarray(a), jnp.asarray(b),
                                              config.equations_p)
    metric = jnp.asarray(a.T @ a + 1e-8 * np.eye(cols))
    f_star, x0 = 0.0, jnp.ones(cols)  # underdetermined and consistent: f* = 0
    methods = {
        "gns_exact_hessian": (lambda: so.gradient_normalized_newton(
            problem.value_fn, problem.curvatures["hessian"], metric=metric), second),
        "gns_rank_one_woodbury": (lambda: so.gradient_normalized_newton(
            problem.value_fn, problem.curvatures["fisher_term"], metric=metric,
            linear_solver="woodbury"), second)}
  elif name == "chebyshev":
    n = config.chebyshev_dim
    problem = so.problems.chebyshev(config.chebyshev_p)
    f_star, x0 = 0.0, jnp.asarray(rng.rand(n))
    metric = None
    methods = {
        "super_universal_newton": (lambda: so.super_universal_newton(
            problem.value_fn, problem.curvatures["hessian"]), second),
        "gns_gauss_newton": (lambda: so.gradient_normalized_newton(
            problem.value_fn, problem.curvatures["gauss_newton"]), second)}
  else:
    raise ValueError(f"unknown set-up {name!r}")
  methods["gradient_method"] = (lambda: so.gradient_method(problem.value_fn, metric=metric),
                                first)
  methods["fast_gradient_method"] = (
      lambda: so.fast_gradient_method(problem.value_fn, metric=metric), first)
  return problem, x0, f_star, methods


def run_method(solver, x0, data, f_star, tol, max_iters):
  update = jax.jit(solver.update)
  state = solver.init(x0, *data)
  jax.block_until_ready(update(state, *data))  # compile outside the timing
  gaps, start = [float(state.value) - f_star], time.perf_counter()
  for _ in range(max_iters):
    if gaps[-1] < tol:
      break
    state = update(state, *data)
    gaps.append(float(state.value) - f_star)
  seconds = time.perf_counter() - start
  hit = [k for k, g in enumerate(gaps) if g < tol]
  return {"gaps": gaps, "iters_to_tol": hit[0] if hit else None, "final_gap": gaps[-1],
          "iterations": len(gaps) - 1, "seconds": seconds}


def run(config):
  with jax.enable_x64():
    results = {}
    for name in config.setups.split(","):
      problem, x0, f_star, methods = setup(name, config)
      results[name] = {m: run_method(build(), x0, problem.data, f_star, config.tol, cap)
                       for m, (build, cap) in methods.items()}
  return results


def main(_):
  config = _CONFIG.value
  results = run(config)
  os.makedirs(config.out_dir, exist_ok=True)
  lines = [f"jax {jax.__version__}, float64, tol {config.tol}, caps "
           f"{config.max_iters_second_order} / {config.max_iters_first_order} iterations",
           "setup | method | iterations to f - f* < tol | final f - f* | iterations | seconds"]
  for name, by_method in results.items():
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in by_method.items():
      ax.semilogy(np.maximum(r["gaps"], 1e-17), label=method)
      lines.append(f"{name} | {method} | {r['iters_to_tol']} | {r['final_gap']:.3e} | "
                   f"{r['iterations']} | {r['seconds']:.1f}")
    ax.set(xlabel="iteration", ylabel="f(x_k) - f*", title=name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(config.out_dir, f"{name}.png"), dpi=80)
    plt.close(fig)
  print("\n".join(lines))
  with open(os.path.join(config.out_dir, "results.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(config.out_dir, "results.json"), "w") as f:
    json.dump({"config": config.to_dict(), "results": results}, f)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "gns_paper_setups.py"),
      "Experiment config file.")
  app.run(main)
