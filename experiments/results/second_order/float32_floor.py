"""Float32 vs float64 gradient floor of GNS + normalized Fisher (issue 16).

Run: python experiments/results/second_order/float32_floor.py 32   (or 64)
Output committed in float32_floor.txt.
"""
import sys, numpy as np, jax
x64 = sys.argv[1] == "64"
jax.config.update("jax_enable_x64", x64)
import jax.numpy as jnp
from sklearn import datasets
from logitlab import second_order as so
f, y = datasets.load_digits(return_X_y=True); f = f / 16.0; y = (y == 8).astype(float)
f = np.c_[f, np.ones(len(f))]
dt = jnp.float64 if x64 else jnp.float32
pr = so.problems.logistic_regression(jnp.asarray(f, dt), jnp.asarray(y, dt))
s = so.gradient_normalized_newton(pr.value_fn, pr.curvatures["normalized_fisher"])
st = s.init(jnp.zeros(f.shape[1], dt), *pr.data); up = jax.jit(s.update)
best = 1e9
for i in range(1500):
  st = up(st, *pr.data); best = min(best, float(st.grad_norm))
w = np.asarray(st.params, np.float64); t = f @ w * (2 * y - 1)
per = (1 / (1 + np.exp(t)))[:, None] * np.abs(f)  # |grad l_i| entries
print("x64", x64, "f", float(st.value), "final gnorm %.2e best %.2e" % (float(st.grad_norm), best),
      "sum_i |grad l_i| %.2e" % np.linalg.norm(per.sum(0)), "eps*sum %.2e" % (np.finfo(np.float32 if not x64 else np.float64).eps * np.linalg.norm(per.sum(0))), "accepted", bool(st.accepted))
