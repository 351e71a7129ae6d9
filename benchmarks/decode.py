"""Greedy decoding throughput: jitted KV-cache ``sampling.generate`` vs HF ``generate``.

Both decode the same checkpoint (the committed tiny reasoner if present, else a random
tiny Llama) from the same prompts for exactly ``--new_tokens`` steps, after one warm-up
call each (compilation excluded). Reports tokens/s of each and their ratio, plus how many
greedy tokens agree (a correctness check on the comparison itself).

Run:  python -m benchmarks.decode
      python -m benchmarks.decode --batch 16 --new_tokens 128 --repeats 5 --no-append
"""
from __future__ import annotations

import argparse
import json
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
from logitlab.tasks import arithmetic

ASSET = Path(__file__).resolve().parent.parent / "experiments" / "assets" / "tiny_reasoner"


def load_model() -> tuple[decoder_lm.DecoderLM, str]:
  if (ASSET / "config.json").exists():
    return hf_checkpoint.load_hf_checkpoint(ASSET)[0], "tiny_reasoner (experiments/assets)"
  config = decoder_lm.LMConfig(vocab_size=256, hidden_size=128, intermediate_size=384,
                               num_layers=4, num_heads=4, num_kv_heads=2)
  return decoder_lm.DecoderLM(config, rngs=nnx.Rngs(0)), "random tiny Llama"


def time_calls(fn, repeats: int) -> float:
  fn()  # warm-up: compilation / first-call overhead
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-append", dest="append", action="store_false",
                      help="print only; do not append to BENCHMARKS.md")
  args = parser.parse_args()

  model, name = load_model()
  config = model.config
  if name.startswith("tiny_reasoner"):  # real task prompts: 2-operator problems, 9 tokens
    problems = arithmetic.generate_problems(args.batch, seed=0, num_ops=(2, 2), split="test")
    prompts = arithmetic.encode_prompts(arithmetic.build_tokenizer(), problems)[0]
  else:
    prompts = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, 12))
  prompts = prompts.astype(np.int32)
  prompt_len = prompts.shape[1]
  decode_tokens = args.batch * args.new_tokens

  def ours():
    out = sampling.generate(model, jnp.asarray(prompts), max_new_tokens=args.new_tokens,
                            key=jax.random.key(0), policy=sampling.GREEDY)
    return np.asarray(jax.block_until_ready(out.tokens))

  ours_s = time_calls(ours, args.repeats)
  rows = [["logitlab generate (jit, KV cache)", f"{decode_tokens / ours_s:.1f}", "1.00"]]
  notes = f"Model: {name}, {config.num_layers} layers, d={config.hidden_size}; batch " \
          f"{args.batch}, prompt {prompt_len}, {args.new_tokens} greedy tokens."
  try:
    import torch
    import transformers
  except ImportError:
    notes += " transformers not importable: HF row skipped."
  else:
    with tempfile.TemporaryDirectory() as tmp:
      hf_checkpoint.save_hf_checkpoint(model, None, tmp)
      # Both decoders run all new_tokens steps: no EOS in HF's generation config.
      for file in ("config.json", "generation_config.json"):
        hf_config = json.loads((Path(tmp) / file).read_text())
        (Path(tmp) / file).write_text(json.dumps({**hf_config, "eos_token_id": None}))
      reference = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    reference.eval()
    input_ids = torch.as_tensor(prompts, dtype=torch.long)

    def theirs():
      with torch.no_grad():
        out = reference.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=0)
      return out[:, prompt_len:].numpy()

    hf_s = time_calls(theirs, args.repeats)
    agree = float(np.mean(ours() == theirs()))
    rows.append([f"HF transformers {transformers.__version__} generate (torch "
                 f"{torch.__version__}, {torch.get_num_threads()} threads)",
                 f"{decode_tokens / hf_s:.1f}", f"{ours_s / hf_s:.2f}"])
    rows[0][2] = f"{hf_s / ours_s:.2f}"
    rows[1][2] = "1.00"
    notes += (f" Ratio column = speed relative to HF generate. Greedy tokens agreeing: "
              f"{agree:.1%} (after a float32 near-tie flips, a row's continuation differs).")
  report("Greedy decode throughput (tokens/s)", __spec__.name,
         ["decoder", "tokens/s", "speed vs HF"], rows, notes=notes, append=args.append)


if __name__ == "__main__":
  main()
