"""Greedy decoding throughput: jitted KV-cache ``sampling.generate`` vs HF ``generate``.

Two models: a random-initialized decoder with Qwen2.5-0.5B's shapes (d=896, 14 query / 2 KV
heads of 64, SwiGLU 4864, vocab 151936, tied embeddings, q/k/v biases; ``--layers`` of its
24 layers, fewer on a small CPU) and the committed tiny reasoner (3 layers, d=96). Each runs
at every ``--batch`` size for exactly ``--new_tokens`` greedy steps (no EOS) from the same
random prompts, in logitlab and in transformers ``generate`` with the same thread count
(``torch.set_num_threads`` = the CPU count XLA uses). The first logitlab call includes
compilation: the table gives that compile time separately (first call minus a steady call);
HF needs none (its warm-up is excluded too). Tokens/s counts generated tokens (batch x new).
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


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", default="1,8,32")
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--layers", type=int, default=4,
                      help="layers of the Qwen2.5-0.5B-shaped model (the real one has 24)")
  parser.add_argument("--models", default="qwen2.5-0.5b-shape,tiny_reasoner")
  parser.add_argument("--device", default="cpu", help="torch device for transformers")
  parser.add_argument("--no-hf", dest="hf", action="store_false")
  parser.add_argument("--no-append", dest="append", action="store_false",
                      help="print only; do not append to BENCHMARKS.md")
  args = parser.parse_args()
  batches = [int(b) for b in args.batch.split(",")]
  threads = os.cpu_count()

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

      first = timed(ours)
      ours_s = timed(ours)
      row = [f"{name} ({config.num_layers}L, d={config.hidden_size})", batch,
             f"{tokens / ours_s:.0f}", f"{first - ours_s:.1f}"]
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
           f"float32, no EOS. Compile s = first call minus a steady call.")
  if args.hf:
    header += ["HF tok/s", "speed-up", "greedy agree"]
    notes += (f" HF: transformers {transformers.__version__} `generate` (torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads = the {threads} CPUs "
              f"XLA uses, device {args.device}). Greedy agreement < 100% on random weights "
              f"comes from float32 near-ties: after one flip a row's continuation differs.")
  report("Greedy decode throughput: logitlab vs transformers", __spec__.name, header, rows,
         notes=notes, append=args.append)


if __name__ == "__main__":
  main()
