"""lambda sweep of logit-space n-gram style injection (arXiv 2601.16224) on the tiny reasoner.

For each lambda: generate continuations of held-out prompts with
``logitlab.ngram.NGramStylePolicy`` and report style perplexity (under the n-gram model),
base perplexity (under the unsteered LM), mean JS(original, steered), token overlap with the
lambda = 0 output, the share of the style marker (spaces) and task accuracy. Writes
``results.json`` and ``ngram_style.png`` to ``config.out_dir``.

Run:  python -m experiments.ngram_style [--config.strengths="(0.0,0.1)" ...]
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from logitlab import ngram, numerics, sampling
from logitlab.models import hf_checkpoint
from logitlab.tasks import arithmetic


PAPER = {"model": "TinyLlama-1.1B", "corpus": "Don Quixote", "strength": 0.1,
         "style_ppl_change_pct": -24.7, "base_ppl_change_pct": -51.4}


def spaced_style(text: str) -> str:
  """The style: spaces around operators, '=' and step-ending periods."""
  return re.sub(r"\s+", " ", re.sub(r"([+\-*=]|\.(?= |<))", r" \1 ", text)).strip()


def style_corpus(config, tokenizer) -> list[list[int]]:
  problems = arithmetic.generate_problems(config.num_style_problems, seed=config.style_seed,
                                          num_ops=(config.min_ops, config.max_ops),
                                          split="train")
  return [tokenizer.encode(spaced_style(p.completion)).ids for p in problems]


def main(argv):
  del argv
  config = _CONFIG.value
  start = time.time()
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(config.checkpoint)
  vocab_size = model.config.vocab_size
  style = ngram.build_ngram(style_corpus(config, tokenizer), vocab_size,
                            max_order=config.max_order, discount=config.discount)
  problems = arithmetic.generate_problems(config.num_problems, seed=config.problem_seed,
                                          num_ops=(config.min_ops, config.max_ops), split="test")
  prompts, prompt_lengths = arithmetic.encode_prompts(tokenizer, problems)
  space_id = tokenizer.token_to_id(" ")
  sampler = sampling.SamplingPolicy(temperature=config.temperature)
  rows, reference, reference_mask = [], None, None
  for strength in tqdm(config.strengths, desc="lambda"):
    policy, state = ngram.ngram_style_policy(
        style, prompts, prompt_lengths, strength=float(strength),
        order_weights=tuple(config.order_weights), normalize_weights=config.normalize_weights,
        sampler=sampler)
    out = sampling.generate(model, jnp.asarray(prompts), jnp.asarray(prompt_lengths),
                            max_new_tokens=config.max_new_tokens,
                            key=jax.random.key(config.seed), policy=policy, policy_state=state,
                            stop_tokens=(arithmetic.EOS_ID,), pad_id=arithmetic.PAD_ID)
    mask = jnp.arange(config.max_new_tokens)[None] < out.lengths[:, None]
    if reference is None:
      reference, reference_mask = out.tokens, mask
    rows.append(dict(
        strength=float(strength),
        style_ppl=float(ngram.perplexity(out.extras["style_log_prob"], mask)),
        base_ppl=float(ngram.perplexity(out.extras["lm_log_prob"], mask)),
        js=float(numerics.masked_mean(out.extras["js"], mask)),
        overlap_with_lambda0=float(ngram.token_overlap(out.tokens, reference, mask,
                                                                 reference_mask)),
        space_share=float(numerics.masked_mean(out.tokens == space_id, mask)),
        accuracy=float(arithmetic.rewards(tokenizer, problems, out.tokens, out.lengths).mean()),
        tokens=float(jnp.mean(out.lengths)),
        example=arithmetic.decode_completions(tokenizer, out.tokens[:1], out.lengths[:1])[0]))
  base = rows[0]
  for row in rows:
    row["style_ppl_change_pct"] = 100 * (row["style_ppl"] / base["style_ppl"] - 1)
    row["base_ppl_change_pct"] = 100 * (row["base_ppl"] / base["base_ppl"] - 1)
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  results = dict(rows=rows, paper=PAPER, config=config.to_dict(), seconds=time.time() - start)
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  plot(rows, out_dir / "ngram_style.png")
  print("| lambda | style ppl (chg %) | base ppl (chg %) | JS | overlap w/ lambda=0 | "
        "space share | accuracy |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['strength']:.2f} | {r['style_ppl']:.3g} ({r['style_ppl_change_pct']:+.1f}) | "
          f"{r['base_ppl']:.3g} ({r['base_ppl_change_pct']:+.1f}) | {r['js']:.3g} | "
          f"{r['overlap_with_lambda0']:.2f} | {r['space_share']:.2f} | {r['accuracy']:.2f} |")
  for r in rows:
    print(f"lambda={r['strength']}: {r['example']!r}")


def plot(rows: list[dict], path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  strengths = [r["strength"] for r in rows]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  ax1.plot(strengths, [r["style_ppl"] for r in rows], marker="o", label="style ppl (n-gram)")
  ax1.plot(strengths, [r["base_ppl"] for r in rows], marker="s", label="base ppl (LM)")
  ax1.set_yscale("log")
  ax1.set_xlabel("lambda")
  ax1.legend()
  ax1.set_title("Perplexities vs injection strength")
  for key, label in [("js", "JS(original, steered)"), ("overlap_with_lambda0", "overlap"),
                     ("space_share", "space share (style marker)"), ("accuracy", "accuracy")]:
    ax2.plot(strengths, [r[key] for r in rows], marker="o", label=label)
  ax2.set_xlabel("lambda")
  ax2.legend()
  ax2.set_title("Steering effect")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(Path(__file__).parent / "configs" / "ngram_style.py"))
  app.run(main)
