"""Peak memory and time of the radius-guarded LM train step: chunked LM-head spread vs naive.

A 1-layer ``DecoderLM`` with the Qwen2.5 vocabulary V = 151936 and a small hidden size (so the
timing runs on CPU in about a minute); the step is cross-entropy (computed in token chunks
with ``distill_chunked.sum_token_chunks_fused``, as an LLM trainer does) + Adam + the guard:

  * plain:   no guard;
  * naive:   ``radius_guard`` with ``logits_fn = x W`` (one JVP holding ``[B, T, V]`` logits
             and tangent);
  * chunked: ``radius_guard`` with ``logits_spread = lm_head_spread_fn(...)`` (token chunks x
             vocabulary chunks, never a ``[B, T, V]`` tangent).

Memory is XLA's compiled ``memory_analysis()`` temporaries of the jitted step, lowered on
abstract shapes (deterministic; nothing runs, so large B*T costs nothing); arguments and
outputs (parameters, Adam state) are the same for all three. Time is the median of repeated
steps at ``--time-tokens``, measured alternately in one process (ratios are what to compare).

Run:  python -m benchmarks.lm_guard_memory [--memory-tokens 512 2048] [--time-tokens 128]
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
from logitlab import distill_chunked, lm_head_radius
from logitlab.models.decoder_lm import DecoderLM, LMConfig

V, D = 151936, 64
LOSS_CHUNK = 32


def make_model(abstract: bool) -> DecoderLM:
  config = LMConfig(vocab_size=V, hidden_size=D, intermediate_size=2 * D, num_layers=1,
                    num_heads=2, num_kv_heads=1)
  build = lambda: DecoderLM(config, rngs=nnx.Rngs(0))
  return nnx.eval_shape(build) if abstract else build()


def make_step(model: DecoderLM, guard: str, token_chunk: int, vocab_chunk: int):
  tx = optax.adam(1e-3) if guard == "plain" else logitlab.radius_guard(optax.adam(1e-3))

  def step(params, opt_state, tokens, labels, mask):
    head_inputs = lm_head_radius.decoder_lm_head_inputs(model, tokens)
    weights = mask / jnp.maximum(jnp.sum(mask), 1)

    def loss(p):
      x, kernel = head_inputs(p)
      ce = lambda w, h, y: optax.softmax_cross_entropy_with_integer_labels(
          jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32), y)
      return distill_chunked.sum_token_chunks_fused(ce, kernel, x, (labels,), weights,
                                                    LOSS_CHUNK)

    grads = jax.grad(loss)(params)
    if guard == "plain":
      extra = {}
    elif guard == "naive":
      def logits_fn(p):
        x, kernel = head_inputs(p)
        return jnp.einsum("btd,dv->btv", x, kernel, preferred_element_type=jnp.float32)
      extra = {"logits_fn": logits_fn, "logits_mask": mask}
    else:
      extra = {"logits_spread": lm_head_radius.lm_head_spread_fn(
          head_inputs, params, where=mask, token_chunk_size=token_chunk,
          vocab_chunk_size=vocab_chunk)}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step), tx


def batch(tokens: int, abstract: bool):
  b, t = 2, tokens // 2
  if abstract:
    ints = jax.ShapeDtypeStruct((b, t), jnp.int32)
    return ints, ints, jax.ShapeDtypeStruct((b, t), jnp.bool_)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, V, (b, t + 1)), jnp.int32)
  return ids[:, :-1], ids[:, 1:], jnp.arange(t)[None] < jnp.array([[t], [t * 3 // 4]])


def temp_bytes(guard: str, tokens: int, token_chunk: int, vocab_chunk: int) -> int:
  model = make_model(abstract=True)
  step, tx = make_step(model, guard, token_chunk, vocab_chunk)
  params = nnx.state(model, nnx.Param)
  opt_state = jax.eval_shape(tx.init, params)
  lowered = step.lower(params, opt_state, *batch(tokens, abstract=True))
  return lowered.compile().memory_analysis().temp_size_in_bytes


def seconds(tokens: int, repeats: int, token_chunk: int, vocab_chunk: int):
  model = make_model(abstract=False)
  params = nnx.state(model, nnx.Param)
  args = batch(tokens, abstract=False)
  runs = {}
  for guard in ("plain", "naive", "chunked"):
    step, tx = make_step(model, guard, token_chunk, vocab_chunk)
    opt_state = tx.init(params)
    out = jax.block_until_ready(step(params, opt_state, *args))  # compile
    runs[guard] = (step, opt_state, out)
  times = {g: [] for g in runs}
  for _ in range(repeats):
    for guard, (step, opt_state, _) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(step(params, opt_state, *args))
      times[guard].append(time.perf_counter() - start)
  # The two guards apply the same update (same r, same scale).
  for a, b in zip(jax.tree.leaves(runs["naive"][2][0]), jax.tree.leaves(runs["chunked"][2][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  ratios = [float(logitlab.guard_metrics(runs[g][2][1])["guard/ratio_proposed"]) for g in ("naive",
                                                                                   "chunked")]
  np.testing.assert_allclose(ratios[1], ratios[0], rtol=1e-4)
  return {g: float(np.median(t)) for g, t in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--memory-tokens", type=int, nargs="+", default=[512, 2048])
  parser.add_argument("--time-tokens", type=int, default=128)
  parser.add_argument("--token-chunk", type=int, default=32)
  parser.add_argument("--vocab-chunk", type=int, default=8192)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  chunks = (args.token_chunk, args.vocab_chunk)
  mib = 2.0**20
  rows = []
  for tokens in args.memory_tokens:
    mem = {g: temp_bytes(g, tokens, *chunks) for g in ("plain", "naive", "chunked")}
    rows.append([tokens, "temp MiB", mem["plain"] / mib, mem["naive"] / mib,
                 mem["chunked"] / mib, f"{mem['naive'] / mem['chunked']:.2f}x"])
  sec = seconds(args.time_tokens, args.repeats, *chunks)
  rows.append([args.time_tokens, "step ms", 1e3 * sec["plain"], 1e3 * sec["naive"],
               1e3 * sec["chunked"], f"{sec['naive'] / sec['chunked']:.2f}x"])
  report(f"Radius-guarded LM step: chunked LM-head spread vs naive JVP, V={V}, D={D}",
         __spec__.name if __spec__ else "benchmarks.lm_guard_memory",
         ["B*T", "metric", "plain (no guard)", "naive guard",
          f"chunked guard (C={args.token_chunk}, Cv={args.vocab_chunk})", "naive / chunked"],
         rows,
         notes=f"1-layer DecoderLM, token-chunked cross-entropy ({LOSS_CHUNK} tokens) + Adam. "
               "Memory: XLA temporaries of the compiled step (parameters, Adam state and the "
               "batch are arguments, identical for all). Goal: naive / chunked >= 4x. Time: "
               "median step on this machine's CPU threads (all runs share them); the naive and "
               "chunked guards were checked to apply the same update (rtol 1e-4).",
         append=not args.no_append)


if __name__ == "__main__":
  main()
