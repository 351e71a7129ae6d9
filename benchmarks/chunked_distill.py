"""Peak memory and time: chunked distillation loss vs the naive full-logits loss.

Value and gradient (w.r.t. student hidden states and output projection) of the forward-KL
distillation loss at the Qwen2.5 vocabulary V = 151936, hidden D = 896 (Qwen2.5-0.5B), for
B x T tokens. Memory is XLA's compiled ``memory_analysis()`` (temporaries + outputs +
arguments, i.e. the buffer peak the executable allocates); time is the median of repeated
calls in one process (ratios are what to compare).

Run:  python -m benchmarks.chunked_distill [--tokens 1024] [--chunk 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import report
from logitlab import distill_chunked

V, D = 151936, 896


def naive_loss(hs, ws, ht, wt, mask):
  d = distill_chunked.divergence_from_logits(
      jax.lax.stop_gradient(ht @ wt), hs @ ws, divergence="forward_kl")
  return jnp.sum(jnp.where(mask, d, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def chunked_loss(hs, ws, ht, wt, mask, chunk):
  return distill_chunked.chunked_distill_loss(
      hs, lambda w, h: h @ w, mask, teacher_hidden=ht, teacher_logits_fn=lambda h: h @ wt,
      chunk_size=chunk, student_params=ws)


def measure(fn, args, repeats):
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = (mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes
          - mem.alias_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  out = compiled(*args)
  return peak, mem.temp_size_in_bytes, float(np.median(times)), out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--tokens", type=int, default=1024, help="B * T (B = 2)")
  parser.add_argument("--chunk", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  b, t = 2, args.tokens // 2
  keys = jax.random.split(jax.random.key(0), 4)
  hs = jax.random.normal(keys[0], (b, t, D))
  ht = jax.random.normal(keys[1], (b, t, D))
  ws = jax.random.normal(keys[2], (D, V)) * 0.05
  wt = jax.random.normal(keys[3], (D, V)) * 0.05
  mask = jnp.arange(t)[None] < jnp.array([[t], [t * 3 // 4]])
  inputs = (hs, ws, ht, wt, mask)
  naive = measure(naive_loss, inputs, args.repeats)
  chunked = measure(lambda *a: chunked_loss(*a, args.chunk), inputs, args.repeats)
  np.testing.assert_allclose(chunked[3][0], naive[3][0], rtol=1e-4)
  for g_c, g_n in zip(chunked[3][1], naive[3][1]):
    np.testing.assert_allclose(g_c, g_n, rtol=2e-3, atol=1e-6)
  gib = 2.0**30
  rows = [["naive full logits", naive[0] / gib, naive[1] / gib, naive[2], 1.0, 1.0],
          [f"chunked (C={args.chunk})", chunked[0] / gib, chunked[1] / gib, chunked[2],
           naive[0] / chunked[0], naive[2] / chunked[2]]]
  report(f"Chunked distillation loss, V={V}, D={D}, B*T={b * t} (value + grad)",
         __spec__.name if __spec__ else "benchmarks.chunked_distill",
         ["loss", "peak GiB", "temp GiB", "time s", "memory reduction x", "speedup x"], rows,
         notes="Forward KL, student and teacher projections from hidden states; gradients "
               "w.r.t. student hidden states and output projection checked equal (rtol 2e-3).",
         append=not args.no_append)


if __name__ == "__main__":
  main()
