"""Guarded vs plain train step: CNN on a 32x32x3 batch of 128 and a small Transformer.

All steps are jitted in one process and timed alternately (median of repeats); the
reported numbers are the ratios guarded / plain. The guard adds one jax.jvp of the logits
along Adam's proposal (exact), the tangent pass only (shared primal), or a JVP on 1/8 of the
batch (subsampled); the 'bare' columns time the JVP alone (Adam + JVP + a scalar cap).

Run:  python -m benchmarks.guard_overhead [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import logitlab
from benchmarks.report import report
from logitlab import radius_estimators


class CNN(nnx.Module):
  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 32, (3, 3), rngs=rngs)
    self.c2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
    self.c3 = nnx.Conv(64, 64, (3, 3), strides=2, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.c3(jax.nn.relu(self.c2(jax.nn.relu(self.c1(x))))))
    return self.out(h.mean((1, 2)))


class Transformer(nnx.Module):
  def __init__(self, rngs, vocab=512, dim=128, layers=2):
    self.embed = nnx.Embed(vocab, dim, rngs=rngs)
    self.attn = nnx.List([nnx.MultiHeadAttention(4, dim, decode=False, rngs=rngs)
                          for _ in range(layers)])
    self.norm = nnx.List([nnx.LayerNorm(dim, rngs=rngs) for _ in range(layers)])
    self.out = nnx.Linear(dim, vocab, rngs=rngs)

  def __call__(self, tokens):
    h = self.embed(tokens)
    mask = nnx.make_causal_mask(tokens)
    for attn, norm in zip(self.attn, self.norm):
      h = h + attn(norm(h), mask=mask)
    return self.out(h)


GUARDS = ("exact JVP", "exact, shared primal", "subsampled 1/8")
# Floors: Adam + the same JVP and a scalar cap, without the guard's bookkeeping (finiteness,
# skip, placement check, metrics). guarded / floor is what the guard itself adds.
FLOORS = ("bare exact JVP", "bare subsampled JVP")


def make_steps(model, x, y):
  """Jitted train steps: plain Adam and the guard in three set-ups (see ``GUARDS``).

  * exact JVP: ``logits_fn`` on the batch (the guard's JVP recomputes the forward);
  * exact, shared primal: one ``jax.linearize`` of the forward gives the gradient (by
    ``linear_transpose``) and the guard's ``logits_jvp``, so the JVP is a tangent pass only;
  * subsampled 1/8: ``logits_fn`` on ``radius_estimators.subsample_rows(1/8, x)``.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  logits_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)
  ce = lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
  loss = lambda p, x, y: ce(logits_fn(p, x), y)

  def build(tx, guard):
    @jax.jit
    def step(params, state, x, y):
      if guard == "exact, shared primal":
        logits, linear = jax.linearize(lambda p: logits_fn(p, x), params)
        (grads,) = jax.linear_transpose(linear, params)(jax.grad(ce)(logits, y))
        extra = {"logits_jvp": linear}
      else:
        grads = jax.grad(loss)(params, x, y)
        if guard == "exact JVP":
          extra = {"logits_fn": lambda p: logits_fn(p, x)}
        elif guard == "subsampled 1/8":
          x_sub = radius_estimators.subsample_rows(1 / 8, x)
          extra = {"logits_fn": lambda p: logits_fn(p, x_sub)}
        else:
          extra = {}
      updates, state = tx.update(grads, state, params, **extra)
      if guard in FLOORS:
        x_jvp = x if guard == "bare exact JVP" else radius_estimators.subsample_rows(1 / 8, x)
        _, tangent = jax.jvp(lambda p: logits_fn(p, x_jvp), (params,), (updates,))
        ratio = jnp.max(jnp.max(tangent, -1) - jnp.min(tangent, -1)) / jnp.pi
        updates = jax.tree.map(lambda u: u * jnp.minimum(1.0, 1.0 / ratio), updates)
      return optax.apply_updates(params, updates), state
    return step, tx.init(params)

  steps = {"plain": build(optax.adam(1e-3), None)}
  for guard in GUARDS:
    steps[guard] = build(logitlab.radius_guard(optax.adam(1e-3)), guard)
  for floor in FLOORS:
    steps[floor] = build(optax.adam(1e-3), floor)
  return params, steps


def median_times(params, steps, x, y, repeats):
  """Median seconds per step, the steps timed alternately (same load for all)."""
  times = {name: [] for name in steps}
  for step, state in steps.values():
    jax.block_until_ready(step(params, state, x, y))  # compile
  for _ in range(repeats):
    for name, (step, state) in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, state, x, y))
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  cases = {
      "CNN, 128x32x32x3": (CNN(nnx.Rngs(0)), jnp.asarray(rng.normal(size=(128, 32, 32, 3)),
                                                         jnp.float32),
                           jnp.asarray(rng.integers(0, 10, 128))),
      "Transformer, 2 layers d=128, 16x64 tokens": (
          Transformer(nnx.Rngs(0)), jnp.asarray(rng.integers(0, 512, (16, 64))),
          jnp.asarray(rng.integers(0, 512, (16, 64)))),
  }
  rows = []
  for name, (model, x, y) in cases.items():
    params, steps = make_steps(model, x, y)
    t = median_times(params, steps, x, y, args.repeats)
    rows.append([name, f"{1e3 * t['plain']:.2f}"] +
                [f"{t[g] / t['plain']:.2f}x" for g in GUARDS + FLOORS])
  report("Radius guard overhead (guarded / plain train step, jit, median)",
         "benchmarks.guard_overhead", ["model", "plain ms"] +
         [f"{g} / plain" for g in GUARDS + FLOORS], rows,
         notes="Targets: exact guard <= 1.5x, subsampled <= 1.1x of the plain step. All steps "
               "timed alternately in one process on the same threads. 'shared primal' "
               "computes the gradient by transposing the forward's linearization and passes "
               "it as `logits_jvp`; XLA already merges the exact guard's primal pass with the "
               "gradient's forward (same compiled FLOPs), so the two exact columns differ by "
               "noise only. 'bare' columns: Adam + the same JVP and a scalar cap, no guard "
               "bookkeeping: the floor the JVP itself sets.")


if __name__ == "__main__":
  main()
