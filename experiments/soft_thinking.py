"""Soft thinking vs discrete decoding on the arithmetic task, plus single-threadedness probes.

Decoding methods (all through ``logitlab.sampling.generate``):
  greedy, sampling (T, top-k, top-p of the config), vanilla soft thinking, Dirichlet and
  Gumbel-Softmax soft thinking (``logitlab.soft_thinking.SoftThinkingPolicy``). The model
  writes ``<think>`` itself; the policy switches to soft inputs after it and back to greedy
  after ``</think>``.

Probes (vanilla soft thinking, arXiv 2508.03440): along each trajectory, at the soft steps
with the smallest top-1 weight, JS(next | soft input vs its top-1 token), JS(soft vs top-2),
JS(top-1 vs top-2) and argmax agreement; logit lens over layers with a 0.6/0.4 input of the
top-2 tokens. Writes ``results.json`` and ``soft_thinking.png`` to ``config.out_dir``.

Run:  python -m experiments.soft_thinking [--config.num_problems=64 ...]
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from logitlab import sampling
from logitlab import soft_thinking as st
from logitlab.models import hf_checkpoint
from logitlab.tasks import arithmetic


SOFT_MODES = ("vanilla", "dirichlet", "gumbel")


def make_policy(config, method: str, batch: int, embedding_matrix):
  """(policy, policy_state) of one decoding method."""
  filters = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                 min_p=config.min_p)
  if method == "greedy":
    return sampling.GREEDY, None
  if method == "sampling":
    return sampling.SamplingPolicy(**filters), None
  return st.soft_thinking_policy(
      embedding_matrix, batch, end_think_id=arithmetic.END_THINK_ID,
      start_think_id=arithmetic.THINK_ID, thinking=False, mode=method,
      max_topk=config.max_topk, dirichlet_alpha=config.dirichlet_alpha,
      gumbel_tau=config.gumbel_tau,
      after_think=sampling.SamplingPolicy(config.after_think_temperature,
                                          config.after_think_top_k, config.after_think_top_p),
      **filters)


def compare_methods(config, model, tokenizer, problems) -> dict:
  """Accuracy and generated tokens of every method over ``config.seeds``."""
  results = {}
  methods = ["greedy", "sampling", *SOFT_MODES]
  for method in tqdm(methods, desc="methods"):
    # Vanilla soft thinking samples after </think> (official setting), so it is seeded too.
    deterministic = method == "greedy" or (method == "vanilla"
                                           and config.after_think_temperature == 0)
    seeds = config.seeds[:1] if deterministic else config.seeds
    accuracy, tokens = [], []
    for seed in seeds:
      policy, state = make_policy(config, method, len(problems), model.embedding_matrix())
      out = arithmetic.evaluate_policy(model, tokenizer, problems, key=jax.random.key(seed),
                                       policy=policy, policy_state=state,
                                       max_new_tokens=config.max_new_tokens)
      accuracy.append(float(out["correct"].mean()))
      tokens.append(float(out["lengths"].mean()))
    results[method] = dict(accuracy_mean=float(np.mean(accuracy)),
                           accuracy_std=float(np.std(accuracy)), accuracy_per_seed=accuracy,
                           tokens_mean=float(np.mean(tokens)), seeds=list(seeds))
  return results


def trajectory_embeddings(model, prompts, prompt_lengths, out) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded input embeddings [B, P + N, D] of prompt + fed inputs, and their mask.

  Generated step t was fed at position P + t: the soft embedding where ``soft`` else E[token].
  """
  table = model.embedding_matrix()
  weights, ids, soft = out.extras["weights"], out.extras["ids"], out.extras["soft"]
  one_hot = jax.nn.one_hot(0, weights.shape[-1])
  fed = st.soft_embedding(jnp.where(soft[..., None], weights, one_hot),
                          jnp.where(soft[..., None], ids, out.tokens[..., None]), table)
  batch, width = prompts.shape
  aligned, mask = sampling.left_align(jnp.asarray(prompts),
                                      jnp.arange(width)[None] < prompt_lengths[:, None])
  embeds = jnp.concatenate([model.embed(aligned).astype(jnp.float32), fed], axis=1)
  steps = jnp.arange(out.tokens.shape[1])[None]
  mask = jnp.concatenate([mask, steps < out.lengths[:, None]], axis=1)
  return embeds, mask


def run_probes(config, model, tokenizer, problems) -> dict:
  prompts, prompt_lengths = arithmetic.encode_prompts(tokenizer, problems)
  policy, state = make_policy(config, "vanilla", len(problems), model.embedding_matrix())
  out = sampling.generate(model, jnp.asarray(prompts), jnp.asarray(prompt_lengths),
                          max_new_tokens=config.max_new_tokens, key=jax.random.key(0),
                          policy=policy, policy_state=state,
                          stop_tokens=(arithmetic.EOS_ID,), pad_id=arithmetic.PAD_ID)
  embeds, mask = trajectory_embeddings(model, prompts, jnp.asarray(prompt_lengths), out)
  weights, ids = out.extras["weights"], out.extras["ids"]
  # Most uncertain soft steps (smallest top-1 weight) with a real second component.
  candidate = out.extras["soft"] & (weights[..., 1] > 0)
  score = jnp.where(candidate, weights[..., 0], jnp.inf)
  steps = jnp.argsort(score, axis=1)[:, :config.probes_per_row]  # [B, S]
  valid = np.asarray(jnp.take_along_axis(candidate, steps, axis=1))
  probe = nnx.jit(st.js_top1_probe)
  lens = nnx.jit(st.logit_lens, static_argnames=("top1_weight",))
  records = {"probe": [], "lens": [], "top1_weight": []}
  rows = jnp.arange(len(problems))
  for s in range(steps.shape[1]):
    step = steps[:, s]
    w, i = weights[rows, step], ids[rows, step]
    position = prompts.shape[1] + step
    records["probe"].append(probe(model, embeds, position, w, i, attention_mask=mask,
                                 temperature=config.temperature))
    records["lens"].append(lens(model, embeds, position, i[:, :2],
                                top1_weight=config.lens_top1_weight, attention_mask=mask,
                                temperature=config.temperature))
    records["top1_weight"].append(w[:, 0])
  keep = valid.T.reshape(-1)  # [S * B], step-major like the records
  probe_stats = {k: float(np.mean(np.concatenate([np.asarray(r[k]) for r in records["probe"]])
                                  [keep])) for k in records["probe"][0]}
  lens_stats = {k: np.mean(np.concatenate([np.asarray(r[k]) for r in records["lens"]], axis=1)
                           [:, keep].astype(np.float64), axis=1).tolist()
                for k in records["lens"][0]}
  top1_weight = np.concatenate([np.asarray(w) for w in records["top1_weight"]])[keep]
  soft_steps = np.asarray(out.extras["soft"]).sum(1)
  return dict(num_probes=int(keep.sum()), mean_top1_weight=float(top1_weight.mean()),
              mean_soft_steps=float(soft_steps.mean()), probe=probe_stats, logit_lens=lens_stats)


def plot(results: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  methods = list(results["methods"])
  acc = [results["methods"][m]["accuracy_mean"] for m in methods]
  err = [results["methods"][m]["accuracy_std"] for m in methods]
  ax1.bar(methods, acc, yerr=err, capsize=4, color="tab:blue")
  ax1.set_ylabel("held-out accuracy")
  ax1.set_title("Decoding methods (tiny reasoner)")
  lens = results["probes"]["logit_lens"]
  layers = np.arange(len(lens["js_soft_top1"]))
  for key, label in [("js_soft_top1", "JS(soft, top-1)"), ("js_soft_top2", "JS(soft, top-2)"),
                     ("js_top1_top2", "JS(top-1, top-2)")]:
    ax2.plot(layers, lens[key], marker="o", label=label)
  ax2.set_xlabel("layer (0 = embeddings)")
  ax2.set_ylabel("JS (nats)")
  ax2.set_title(f"Logit lens, {results['config']['lens_top1_weight']:.1f}/"
                f"{1 - results['config']['lens_top1_weight']:.1f} soft input")
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  config = _CONFIG.value
  start = time.time()
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(config.checkpoint)
  problems = arithmetic.generate_problems(config.num_problems, seed=config.problem_seed,
                                          num_ops=(config.min_ops, config.max_ops), split="test")
  results = {"methods": compare_methods(config, model, tokenizer, problems)}
  results["probes"] = run_probes(config, model, tokenizer, problems[:config.num_probe_problems])
  results["config"] = config.to_dict()
  results["seconds"] = time.time() - start
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  plot(results, out_dir / "soft_thinking.png")
  print("| method | accuracy (mean +- std over seeds) | generated tokens |")
  print("|---|---|---|")
  for method, r in results["methods"].items():
    print(f"| {method} | {r['accuracy_mean']:.3f} +- {r['accuracy_std']:.3f} | "
          f"{r['tokens_mean']:.1f} |")
  print(json.dumps(results["probes"], indent=2))


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(Path(__file__).parent / "configs" / "soft_thinking.py"))
  app.run(main)
