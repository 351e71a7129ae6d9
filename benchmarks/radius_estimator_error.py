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

A second table checks the network-wide radius minimum (``components=("output",
"attention", "ffn")``) on the Transformer's internals (:func:`measure_internals`).

Run:  python -m benchmarks.radius_estimator_error [--steps 200 --every 10]
"""
from __future__ import annotations

import argparse
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.report import report
from logitlab import datasets, ghosts, radius_estimators
from logitlab.models import small

ARCHS = ("mlp", "cnn_bn", "transformer")


def along_adam(arch: str, steps: int, every: int, estimates: Callable,
               seed: int = 0) -> np.ndarray:
  """Rows of ``estimates(module, params, rest, proposal, x)`` along Adam's trajectory.

  Adam lr 0.01 on digits minibatches of 256 for ``steps`` steps; every ``every`` steps
  ``estimates`` (jitted) sees the parameters before the step, Adam's proposal on the
  minibatch ``x``, and ``module(params, rest)``, the model rebuilt in eval mode.
  """
  x_all, y_all, _, _ = (jnp.asarray(a) for a in datasets.digits())
  graphdef, params, rest = nnx.split(small.build(arch, rngs=nnx.Rngs(seed)), nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)

  def module(p, rest, train=False):
    m = nnx.merge(graphdef, p, rest)
    m.train() if train else m.eval()
    return m

  tx = optax.adam(1e-2)

  @jax.jit
  def train_step(params, rest, state, x, y):
    def loss(p):
      m = module(p, rest, train=True)
      z = m(x)
      return (optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
              nnx.as_pure(nnx.split(m, nnx.Param, ...)[2]))
    grads, rest = jax.grad(loss, has_aux=True)(params)
    updates, state = tx.update(grads, state, params)
    return params, rest, state, updates

  measured = jax.jit(functools.partial(estimates, module))
  state = tx.init(params)
  rng = np.random.default_rng(seed)
  rows = []
  for step in range(steps):
    idx = rng.choice(len(x_all), 256, replace=False)
    x, y = x_all[idx], y_all[idx]
    old = params
    params, rest, state, updates = train_step(params, rest, state, x, y)
    if step % every == 0:
      rows.append(np.asarray(measured(old, rest, updates, x)))
    params = optax.apply_updates(params, updates)
  return np.asarray(rows, np.float64)


def measure(arch: str, steps: int, every: int, seed: int = 0) -> dict[str, np.ndarray]:
  fd = radius_estimators.step_ratio_estimator(method="finite_difference")
  quantile = radius_estimators.step_ratio_estimator(aggregate="quantile", quantile=0.99)

  def estimates(module, params, rest, proposal, x):
    logits_fn = lambda p: module(p, rest)(x)
    z, tangent = ghosts.directional_logits(logits_fn, params, proposal)
    exact = ghosts.normalized_step(tangent).ratio
    r_fd, _ = fd.ratio(proposal, fd.init(), params, logits_fn=logits_fn)
    r_q, _ = quantile.ratio(proposal, quantile.init(), params, logits_fn=logits_fn)
    x_sub = radius_estimators.subsample_rows(1 / 8, x)
    _, t_sub = ghosts.directional_logits(lambda p: module(p, rest)(x_sub), params, proposal)
    r_sub = ghosts.normalized_step(t_sub).ratio
    rho_ctrl = jnp.pi / (jnp.mean(jnp.max(z, -1) - jnp.min(z, -1)) + 1e-6)
    norm = radius_estimators.global_norm(proposal)
    return jnp.stack([exact, r_fd, r_q, r_sub, rho_ctrl, norm])

  exact, r_fd, r_q, r_sub, rho_ctrl, norm = along_adam(arch, steps, every, estimates, seed).T
  rho_unit = norm / exact  # the exact radius along the proposal's direction
  window = np.array([norm[i] / np.min(rho_unit[max(0, i - 4):i + 1]) for i in range(len(norm))])
  return {"fd": np.abs(r_fd / exact - 1), "quantile": r_q / exact, "window": window / exact,
          "subsample": r_sub / exact, "controller": rho_ctrl / rho_unit}


def _max_spread(logits) -> jax.Array:
  """``max`` over all leading axes of ``max_k - min_k`` (last axis): output or attention."""
  return jnp.max(jnp.stack([jnp.max(jnp.max(s, -1) - jnp.min(s, -1)) for s in logits]))


def measure_internals(steps: int, every: int, seed: int = 0) -> dict[str, np.ndarray]:
  """The network-wide radius minimum of the digits Transformer against its claims.

  Per measured step: the exact output ``r`` (one JVP of the logits, as the guard does), the
  estimator's ``(r_output, r_attention, r_ffn)`` and combined ``r`` from
  ``TinyTransformer.internals``, and each component's claim checked by moving the
  parameters by ``p / r_c`` (the step scaled to ``r_c = 1``):

  * output / attention: the first-order max spread is then ``pi``; measured is
    ``Delta_actual / pi - 1`` with ``Delta_actual`` the same max spread of the actual change
    ``f(theta + p / r_c) - f(theta)`` (two forwards);
  * FFN: the fraction of pre-activations ``u`` whose sign flips (claim: ``ffn_quantile`` = 1 %
    of them lie within the linearized reach ``|u| < |du|``), and the fraction the linear
    model ``u + du`` flips.
  """
  est = radius_estimators.step_ratio_estimator(components=radius_estimators.COMPONENTS)

  def estimates(module, params, rest, proposal, x):
    internals = lambda p: module(p, rest).internals(x)
    _, tangent = ghosts.directional_logits(lambda p: module(p, rest)(x), params, proposal)
    exact = ghosts.normalized_step(tangent).ratio
    r, parts = est.ratio(proposal, est.init(), params, logits_fn=internals)
    r_out, r_attn, r_ffn = parts.components
    base, linear = ghosts.directional_logits(internals, params, proposal)
    moved = lambda r_c: internals(jax.tree.map(lambda w, d: w + d / r_c, params, proposal))
    out_actual = _max_spread([moved(r_out)["logits"] - base["logits"]])
    attn_actual = _max_spread([a1 - a0 for a1, a0 in zip(moved(r_attn)["attention_logits"],
                                                         base["attention_logits"])])
    u0 = jnp.concatenate([u.ravel() for u in base["ffn_preactivations"]])
    u1 = jnp.concatenate([u.ravel() for u in moved(r_ffn)["ffn_preactivations"]])
    du = jnp.concatenate([u.ravel() for u in linear["ffn_preactivations"]]) / r_ffn
    flips = jnp.mean(jnp.sign(u1) != jnp.sign(u0))
    linear_flips = jnp.mean(jnp.sign(u0 + du) != jnp.sign(u0))
    return jnp.stack([exact, r_out, r_attn, r_ffn, r, out_actual / jnp.pi - 1,
                      attn_actual / jnp.pi - 1, flips, linear_flips])

  columns = along_adam("transformer", steps, every, estimates, seed).T
  names = ("exact", "output", "attention", "ffn", "combined", "output_error",
           "attention_error", "ffn_flips", "ffn_linear_flips")
  return dict(zip(names, columns))


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
         ["arch", "steps measured", "finite diff. abs(r_fd/r - 1)", "q99 r_q/r",
          "window-5 min r_w/r", "subsampled 1/8 r_sub/r", "logit-spread ctrl rho_c/rho"],
         rows,
         notes="median [min, max] over the measured steps. r = exact max_x Delta_a / pi of "
               "Adam's proposal on the minibatch of 256 (eval mode). The controller column "
               "compares pi / mean(max z - min z) with the exact radius per unit step "
               "||p|| / r: different quantities, in no fixed relation (no bound either way).",
         append=not args.no_append)

  m = measure_internals(args.steps, args.every)
  parts = np.stack([m["output"], m["attention"], m["ffn"]])
  binds = lambda i: f"{np.mean(np.argmax(parts, 0) == i):.2f}"
  pct = lambda v: f"{100 * np.median(v):.2g} % [{100 * np.min(v):.2g}, {100 * np.max(v):.2g}]"
  report("Network-wide radius minimum vs the exact JVP (digits Transformer internals)",
         __spec__.name if __spec__ else "benchmarks.radius_estimator_error",
         ["component", "steps measured", "r_c / r_exact", "binds (share of steps)",
          "claim at r_c = 1", "measured at r_c = 1"],
         [["output", len(parts[0]), fmt(m["output"] / m["exact"]), binds(0),
           "max logit spread = pi", f"actual/linear - 1: {fmt(m['output_error'])}"],
          ["attention", len(parts[0]), fmt(m["attention"] / m["exact"]), binds(1),
           "max attention-logit spread = pi",
           f"actual/linear - 1: {fmt(m['attention_error'])}"],
          ["ffn", len(parts[0]), fmt(m["ffn"] / m["exact"]), binds(2),
           "1 % of GELU inputs u within reach: abs(u) < abs(du)",
           f"u flips sign: {pct(m['ffn_flips'])}; linear u + du: "
           f"{pct(m['ffn_linear_flips'])}"],
          ["combined (max)", len(parts[0]), fmt(m["combined"] / m["exact"]), "-", "-", "-"]],
         notes="median [min, max] over the measured steps of the same Adam run as the "
               "transformer row above (TinyTransformer: 1 layer, 2 heads, GELU MLP). "
               "r_exact = max_x Delta_a / pi from one JVP of the logits (the guard's "
               "default); r_c from step_ratio_estimator(components=('output', 'attention', "
               "'ffn')) on TinyTransformer.internals; combined = max of the three. "
               "'measured' moves the parameters by p / r_c and compares two forwards with "
               "the first order: the max spread of the actual change over pi, and the share "
               "of GELU pre-activations whose sign flips (the linear model flips only those "
               "within reach that move toward 0).",
         append=not args.no_append)


if __name__ == "__main__":
  main()
