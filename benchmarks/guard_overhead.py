"""Guarded vs plain train step: CNN on a 32x32x3 batch of 128 and a small Transformer.

Both steps are jitted in one process and timed alternately (median of repeats); the
reported number is the ratio guarded / plain. The guard adds one jax.jvp of the logits
along Adam's proposal.

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


def make_steps(model, x, y):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  logits_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()

  def build(tx, guarded):
    @jax.jit
    def step(params, state, x, y):
      grads = jax.grad(loss)(params, x, y)
      extra = {"logits_fn": lambda p: logits_fn(p, x)} if guarded else {}
      updates, state = tx.update(grads, state, params, **extra)
      return optax.apply_updates(params, updates), state
    return step, tx.init(params)

  plain = build(optax.adam(1e-3), False)
  guarded = build(logitlab.radius_guard(optax.adam(1e-3)), True)
  return params, plain, guarded


def median_ratio(params, plain, guarded, x, y, repeats):
  times = {"plain": [], "guarded": []}
  for name, (step, state) in (("plain", plain), ("guarded", guarded)):
    jax.block_until_ready(step(params, state, x, y))  # compile
  for _ in range(repeats):
    for name, (step, state) in (("plain", plain), ("guarded", guarded)):
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, state, x, y))
      times[name].append(time.perf_counter() - t0)
  p, g = np.median(times["plain"]), np.median(times["guarded"])
  return p, g, g / p


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
    params, plain, guarded = make_steps(model, x, y)
    p, g, ratio = median_ratio(params, plain, guarded, x, y, args.repeats)
    rows.append([name, f"{1e3 * p:.2f}", f"{1e3 * g:.2f}", f"{ratio:.2f}x"])
  report("Radius guard overhead (guarded / plain train step, jit, median)",
         "benchmarks.guard_overhead", ["model", "plain ms", "guarded ms", "ratio"], rows,
         notes="Acceptance target: <= 1.6x for the CNN on CPU.")


if __name__ == "__main__":
  main()
