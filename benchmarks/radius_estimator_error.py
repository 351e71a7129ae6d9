"""Error of the reference code's cheaper radius estimators against the exact JVP.

Digits (1437 training images), three architectures, Adam lr 0.01 on minibatches of 256
for ``--steps`` steps. Every ``--every`` steps the guard's quantity is measured along the
actual Adam proposal ``p`` on that minibatch (eval mode): the exact ``r = max_x Delta_a / pi``
from one JVP, and each estimator's ``r``:

* finite difference (displacement norm 1e-4, ``radius_estimators`` ``method=
  "finite_difference"``): |r_fd / r - 1|;
* 99 % quantile over the batch: r_q / r (<= 1, no longer a bound);
* windowed minimum over the last 5 measured steps: r_w / r (>= 1, more conservative);
* subsampled JVP on 1/8 of the batch: r_sub / r (<= 1; what the subsampled guard misses);
* JVP-free logit-spread controller (``logit_spread_controller``): its radius
  ``pi / mean(max z - min z)`` against the exact radius per unit step ``||p|| / r``.

Run:  python -m benchmarks.radius_estimator_error [--steps 200 --every 10]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.report import report
from logitlab import datasets, ghosts, radius_estimators
from logitlab.models import small

ARCHS = ("mlp", "cnn_bn", "transformer")


def measure(arch: str, steps: int, every: int, seed: int = 0) -> dict[str, np.ndarray]:
  x_all, y_all, _, _ = (jnp.asarray(a) for a in datasets.digits())
  graphdef, params, rest = nnx.split(small.build(arch, rngs=nnx.Rngs(seed)), nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)

  def forward(p, rest, x, train):
    module = nnx.merge(graphdef, p, rest)
    module.train() if train else module.eval()
    z = module(x)
    return z, nnx.as_pure(nnx.split(module, nnx.Param, ...)[2])

  tx = optax.adam(1e-2)
  fd = radius_estimators.step_ratio_estimator(method="finite_difference")
  quantile = radius_estimators.step_ratio_estimator(aggregate="quantile", quantile=0.99)

  @jax.jit
  def train_step(params, rest, state, x, y):
    def loss(p):
      z, new_rest = forward(p, rest, x, True)
      return optax.softmax_cross_entropy_with_integer_labels(z, y).mean(), new_rest
    grads, rest = jax.grad(loss, has_aux=True)(params)
    updates, state = tx.update(grads, state, params)
    return params, rest, state, updates

  @jax.jit
  def estimates(params, rest, proposal, x):
    logits_fn = lambda p: forward(p, rest, x, False)[0]
    z, tangent = ghosts.directional_logits(logits_fn, params, proposal)
    exact = ghosts.normalized_step(tangent).ratio
    r_fd, _ = fd.ratio(proposal, fd.init(), params, logits_fn=logits_fn)
    r_q, _ = quantile.ratio(proposal, quantile.init(), params, logits_fn=logits_fn)
    x_sub = radius_estimators.subsample_rows(1 / 8, x)
    _, t_sub = ghosts.directional_logits(lambda p: forward(p, rest, x_sub, False)[0], params,
                                         proposal)
    r_sub = ghosts.normalized_step(t_sub).ratio
    rho_ctrl = jnp.pi / (jnp.mean(jnp.max(z, -1) - jnp.min(z, -1)) + 1e-6)
    norm = radius_estimators.global_norm(proposal)
    return exact, r_fd, r_q, r_sub, rho_ctrl, norm

  state = tx.init(params)
  rng = np.random.default_rng(seed)
  rows = []
  for step in range(steps):
    idx = rng.choice(len(x_all), 256, replace=False)
    x, y = x_all[idx], y_all[idx]
    old = params
    params, rest, state, updates = train_step(params, rest, state, x, y)
    if step % every == 0:
      rows.append([float(v) for v in estimates(old, rest, updates, x)])
    params = optax.apply_updates(params, updates)
  exact, r_fd, r_q, r_sub, rho_ctrl, norm = np.asarray(rows).T
  rho_unit = norm / exact  # the exact radius along the proposal's direction
  window = np.array([norm[i] / np.min(rho_unit[max(0, i - 4):i + 1]) for i in range(len(norm))])
  return {"fd": np.abs(r_fd / exact - 1), "quantile": r_q / exact, "window": window / exact,
          "subsample": r_sub / exact, "controller": rho_ctrl / rho_unit}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  rows = []
  fmt = lambda v: f"{np.median(v):.3g} [{np.min(v):.3g}, {np.max(v):.3g}]"
  for arch in ARCHS:
    m = measure(arch, args.steps, args.every)
    rows.append([arch, len(m["fd"]), fmt(m["fd"]), fmt(m["quantile"]), fmt(m["window"]),
                 fmt(m["subsample"]), fmt(m["controller"])])
  report("Radius estimators vs the exact JVP (digits, along Adam's proposals)",
         __spec__.name if __spec__ else "benchmarks.radius_estimator_error",
         ["arch", "steps measured", "finite diff. |r_fd/r - 1|", "q99 r_q/r",
          "window-5 min r_w/r", "subsampled 1/8 r_sub/r", "logit-spread ctrl rho_c/rho"],
         rows,
         notes="median [min, max] over the measured steps. r = exact max_x Delta_a / pi of "
               "Adam's proposal on the minibatch of 256 (eval mode). The controller column "
               "compares pi / mean(max z - min z) with the exact radius per unit step "
               "||p|| / r: different quantities, in no fixed relation (no bound either way).",
         append=not args.no_append)


if __name__ == "__main__":
  main()
