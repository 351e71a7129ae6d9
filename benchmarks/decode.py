"""Greedy decoding throughput: jitted KV-cache ``sampling.generate`` vs HF ``generate``.

Two models: a random-initialized decoder with Qwen2.5-0.5B's shapes (d=896, 14 query / 2 KV
heads of 64, SwiGLU 4864, vocab 151936, tied embeddings, q/k/v biases; ``--layers`` of its
24 layers, fewer on a small CPU) and the committed tiny reasoner (3 layers, d=96). Each runs
at every ``--batch`` size for exactly ``--new_tokens`` greedy steps (no EOS) from the same
random prompts, in logitlab and in transformers ``generate`` with the same thread count
(``--threads``: ``torch.set_num_threads(n)`` and XLA's CPU client limited to n threads; the
default 1 keeps both immune to OpenMP/Eigen thread thrashing on a busy shared machine). Compilation is timed on its own
(ahead-of-time lower + compile of the decode loop) and both decoders get a warm-up call
before the timed one. Tokens/s counts generated tokens (batch x new).
The greedy-agreement column checks that both decoders computed the same thing.

Run (CPU):  python -m benchmarks.decode
            python -m benchmarks.decode --layers 2 --batch 1,8 --no-append
GPU (same script; HF on CUDA when torch sees one, logitlab on the default JAX backend):
            python -m benchmarks.decode --layers 24 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.report import report
from logitlab import sampling
from logitlab.models import decoder_lm, hf_checkpoint

ASSET = Path(__file__).resolve().parent.parent / "experiments" / "assets" / "tiny_reasoner"


def qwen25_05b_shape(layers: int) -> decoder_lm.LMConfig:
  """Qwen2.5-0.5B's config.json shapes with ``layers`` of its 24 layers."""
  return decoder_lm.LMConfig(
      vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=layers,
      num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6,
      tie_word_embeddings=True, qkv_bias=True, model_type="qwen2",
      max_position_embeddings=32768)


def random_model(config: decoder_lm.LMConfig, seed: int = 0) -> decoder_lm.DecoderLM:
  # eval_shape + NumPy values: eager NNX init of a 150M-entry embedding is slow on CPU.
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: decoder_lm.DecoderLM(config, rngs=nnx.Rngs(0))))
  state = jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.02, s.dtype), state)
  return nnx.merge(graphdef, state)


def compile_generate(model, prompts: np.ndarray, new_tokens: int) -> None:
  """Ahead-of-time lowering + compilation of the decode loop ``generate`` runs for these
  prompts: the compile time, measured apart from (noisy) run times."""
  graphdef, state = nnx.split(model)
  batch, prompt_len = prompts.shape
  pad = ((0, 0), (0, sampling.prompt_bucket(prompt_len) - prompt_len))
  sampling._generate.lower(  # pylint: disable=protected-access
      graphdef, state, jnp.pad(jnp.asarray(prompts), pad),
      jnp.pad(jnp.ones((batch, prompt_len), bool), pad), jax.random.key(0), None,
      max_new_tokens=new_tokens, policy=sampling.GREEDY, stop_tokens=(), pad_id=0,
      repetition_penalty=1.0).compile()


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def profile_steps(config: decoder_lm.LMConfig, batches: list[int], cache_len: int) -> list:
  """Where a decode step's time goes: one cached step vs its LM head alone (ms, GFLOP/s).

  Head FLOPs are ``2 B D V``; the step's are ``2 B (params - embedding + D V)`` plus
  attention over ``cache_len`` slots.
  """
  model = random_model(config)
  d, v = config.hidden_size, config.vocab_size
  layer_params = sum(x.size for x in jax.tree.leaves(nnx.state(model.layers)))
  step = nnx.jit(lambda m, t, c: m(t, cache=c).logits)
  head = nnx.jit(lambda m, h: m.unembed(h))
  rows = []
  for batch in batches:
    cache = decoder_lm.init_cache(config, batch, cache_len)
    cache = cache.replace(index=jnp.int32(cache_len // 2),
                          key_mask=jnp.ones((batch, cache_len), bool))
    tokens = jnp.ones((batch, 1), jnp.int32)
    hidden = jnp.ones((batch, 1, d), jnp.float32)
    times = {}
    for name, fn in (("step", lambda: step(model, tokens, cache)),
                     ("head", lambda: head(model, hidden))):
      jax.block_until_ready(fn())
      reps = 3
      times[name] = min(timed(lambda: jax.block_until_ready(fn())) for _ in range(reps))
    attn = 4 * batch * config.num_layers * config.num_heads * config.head_dim * cache_len
    step_flops = 2 * batch * (layer_params + d * v) + attn
    head_flops = 2 * batch * d * v
    rows.append([batch, f"{1e3 * times['step']:.1f}", f"{1e3 * times['head']:.1f}",
                 f"{times['head'] / times['step']:.0%}",
                 f"{step_flops / times['step'] / 1e9:.1f}",
                 f"{head_flops / times['head'] / 1e9:.1f}"])
    print(rows[-1], flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", default="1,8,32")
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--layers", type=int, default=2,
                      help="layers of the Qwen2.5-0.5B-shaped model (the real one has 24)")
  parser.add_argument("--models", default="qwen2.5-0.5b-shape,tiny_reasoner")
  parser.add_argument("--device", default="cpu", help="torch device for transformers")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads for both XLA and torch (0: all cores, XLA's default)")
  parser.add_argument("--no-hf", dest="hf", action="store_false")
  parser.add_argument("--profile", action="store_true",
                      help="only profile one cached decode step of the 0.5B-shaped model")
  parser.add_argument("--no-append", dest="append", action="store_false",
                      help="print only; do not append to BENCHMARKS.md")
  args = parser.parse_args()
  batches = [int(b) for b in args.batch.split(",")]
  threads = args.threads or os.cpu_count()
  if args.threads and args.device == "cpu":  # before the first JAX computation starts XLA
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               f"=false intra_op_parallelism_threads={args.threads}")

  if args.profile:
    rows = profile_steps(qwen25_05b_shape(args.layers), batches,
                         args.prompt_len + args.new_tokens)
    report("Decode step profile: Qwen2.5-0.5B shape", __spec__.name,
           ["batch", "step ms", "LM head ms", "head share", "step GFLOP/s", "head GFLOP/s"],
           rows, append=args.append,
           notes=f"{args.layers} layers, one greedy step with a {args.prompt_len + args.new_tokens}"
                 f"-slot cache, {threads} XLA thread(s), best of 3; 1-min load average "
                 f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    return
  torch = transformers = None
  if args.hf:
    import torch
    import transformers
    torch.set_num_threads(threads)

  rows = []
  for name in args.models.split(","):
    if name == "tiny_reasoner":
      model = hf_checkpoint.load_hf_checkpoint(ASSET)[0]
    else:
      model = random_model(qwen25_05b_shape(args.layers))
    config = model.config
    reference = None
    if args.hf:
      with tempfile.TemporaryDirectory() as tmp:
        hf_checkpoint.save_hf_checkpoint(model, None, tmp)
        for file in ("config.json", "generation_config.json"):  # no EOS: all steps run
          path = Path(tmp) / file
          path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": None}))
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32).to(args.device).eval()
    for batch in batches:
      prompts = np.random.default_rng(batch).integers(
          0, config.vocab_size, (batch, args.prompt_len)).astype(np.int32)
      tokens = batch * args.new_tokens
      out = {}

      def ours():
        result = sampling.generate(model, jnp.asarray(prompts), max_new_tokens=args.new_tokens,
                                   key=jax.random.key(0), policy=sampling.GREEDY,
                                   stop_tokens=())
        out["ours"] = np.asarray(jax.block_until_ready(result.tokens))

      compile_s = timed(lambda: compile_generate(model, prompts, args.new_tokens))
      ours()  # warm-up (jit dispatch compiles again: AOT executables are not cached)
      ours_s = timed(ours)
      row = [f"{name} ({config.num_layers}L, d={config.hidden_size})", batch,
             f"{tokens / ours_s:.0f}", f"{compile_s:.1f}"]
      if reference is not None:
        input_ids = torch.as_tensor(prompts, dtype=torch.long, device=args.device)

        def theirs(new_tokens=args.new_tokens):
          with torch.no_grad():
            result = reference.generate(
                input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=0)
          out["hf"] = result[:, args.prompt_len:].cpu().numpy()

        theirs(2)  # warm-up
        hf_s = timed(theirs)
        agree = float(np.mean(out["ours"] == out["hf"]))
        row += [f"{tokens / hf_s:.0f}", f"{hf_s / ours_s:.2f}x", f"{agree:.0%}"]
      rows.append(row)
      print(row, flush=True)

  header = ["model", "batch", "logitlab tok/s", "logitlab compile s"]
  notes = (f"{args.new_tokens} greedy tokens from {args.prompt_len}-token random prompts, "
           f"float32, no EOS. Compile s = ahead-of-time lower + compile of the decode loop.")
  if args.hf:
    header += ["HF tok/s", "speed-up", "greedy agree"]
    notes += (f" HF: transformers {transformers.__version__} `generate` (torch "
              f"{torch.__version__}, {torch.get_num_threads()} thread(s); XLA limited to the "
              f"same {threads}; device {args.device}; 1-min load average at the end "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores). Greedy agreement < 100% on random weights "
              f"comes from float32 near-ties: after one flip a row's continuation differs.")
  report("Greedy decode throughput: logitlab vs transformers", __spec__.name, header, rows,
         notes=notes, append=args.append)


if __name__ == "__main__":
  main()
