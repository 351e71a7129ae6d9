"""Peak memory and time: chunked distillation loss vs the naive full-logits loss.

Value and gradient (w.r.t. student hidden states and output projection) of the forward-KL
distillation loss at the Qwen2.5 vocabulary V = 151936, hidden D = 896 (Qwen2.5-0.5B), for
B x T tokens. Memory is XLA's compiled ``memory_analysis()`` temporaries, taken from
lowering on abstract shapes (nothing runs, so large B*T is cheap to analyse); time is the
median of repeated calls at ``--time-tokens`` in one process (ratios are what to compare).

Run:  python -m benchmarks.chunked_distill [--memory-tokens 1024 4096 16384]
        [--time-tokens 256] [--chunk 128] [--repeats 2]
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


def inputs(tokens: int, abstract: bool):
  """(hs, ws, ht, wt, mask) for B = 2 rows of tokens / 2 (the second row 3/4 valid)."""
  b, t = 2, tokens // 2
  shapes = [(b, t, D), (D, V), (b, t, D), (D, V)]
  if abstract:
    return tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes) + (
        jax.ShapeDtypeStruct((b, t), jnp.bool_),)
  keys = jax.random.split(jax.random.key(0), 4)
  scales = [1.0, 0.05, 1.0, 0.05]
  arrays = tuple(jax.random.normal(k, s) * c for k, s, c in zip(keys, shapes, scales))
  return arrays + (jnp.arange(t)[None] < jnp.array([[t], [t * 3 // 4]]),)


def compiled_value_and_grad(fn, args):
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()


def temp_bytes(fn, tokens):
  """XLA's temporary-buffer size for value + grad (arguments and outputs excluded: they are
  the same for both losses)."""
  return compiled_value_and_grad(fn, inputs(tokens, abstract=True)).memory_analysis(
      ).temp_size_in_bytes


def seconds(fn, tokens, repeats):
  """Median wall time of value + grad; also returns the outputs."""
  args = inputs(tokens, abstract=False)
  compiled = compiled_value_and_grad(fn, args)
  out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--memory-tokens", type=int, nargs="+", default=[1024, 4096, 16384],
                      help="B * T values for the compiled memory analysis (nothing runs)")
  parser.add_argument("--time-tokens", type=int, default=256, help="B * T for timing")
  parser.add_argument("--chunk", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  chunked = lambda *a: chunked_loss(*a, args.chunk)
  gib = 2.0**30
  rows = []
  for tokens in args.memory_tokens:
    naive_mem, chunked_mem = temp_bytes(naive_loss, tokens), temp_bytes(chunked, tokens)
    rows.append([tokens, "memory", naive_mem / gib, chunked_mem / gib, naive_mem / chunked_mem])
  naive_s, naive_out = seconds(naive_loss, args.time_tokens, args.repeats)
  chunked_s, chunked_out = seconds(chunked, args.time_tokens, args.repeats)
  np.testing.assert_allclose(chunked_out[0], naive_out[0], rtol=1e-4)
  for g_c, g_n in zip(chunked_out[1], naive_out[1]):
    np.testing.assert_allclose(g_c, g_n, rtol=2e-3, atol=1e-6)
  rows.append([args.time_tokens, "time s", naive_s, chunked_s, naive_s / chunked_s])
  report(f"Chunked distillation loss vs naive full logits, V={V}, D={D} (value + grad)",
         __spec__.name if __spec__ else "benchmarks.chunked_distill",
         ["B*T", "metric", "naive", f"chunked (C={args.chunk}, fused)", "naive / chunked"], rows,
         notes="Memory: XLA temporaries (GiB) of the compiled value+grad (arguments and outputs "
               "- hidden states, both D x V projections, gradients - are identical for both). "
               "Forward KL; student and teacher projected from hidden states; gradients w.r.t. "
               "student hidden states and projection checked equal (rtol 2e-3).",
         append=not args.no_append)


if __name__ == "__main__":
  main()
