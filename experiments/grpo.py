"""SFT -> GRPO vs SofT-GRPO on the tiny reasoner: Pass@1 and Pass@k before and after RL.

Both methods start from the same SFT checkpoint (``config.init_dir``, HF format), train for
``num_steps`` rollout batches with the same optimizer and objective (PPO clip 0.2, dual clip
3, k3 KL 0.001 to the SFT model, token-mean), and are evaluated on held-out problems with
discrete sampling at T = 1 (Pass@1, Pass@k, unbiased estimator); the SofT-GRPO model is
also evaluated with its soft-thinking rollout policy. Writes ``results.json`` and
``reward.png`` to ``config.out_dir``.

Run:  python -m experiments.grpo [--config.num_steps=30 ...]   (configs/grpo.py)
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from logitlab import rl
from logitlab.models import hf_checkpoint
from logitlab.rl import rewards as rl_rewards
from logitlab.rl import trainer
from logitlab.tasks import arithmetic

def load_sft(init_dir: str):
  """``(model, tokenizer)`` of the SFT checkpoint; the task tokenizer if none is saved."""
  if not (Path(init_dir) / "config.json").exists():
    raise FileNotFoundError(
        f"No SFT checkpoint in {init_dir!r}: train one with `python -m experiments.train_tiny_lm "
        f"--config.out_dir={init_dir}` first.")
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(init_dir)
  return model, tokenizer or arithmetic.build_tokenizer()


def think_prompts(tokenizer, problems, width: int | None = None):
  """Right-padded prompt ids ending in ``<think>`` (rollouts start inside the think block)."""
  rows = [tokenizer.encode(p.prompt).ids + [arithmetic.THINK_ID] for p in problems]
  lengths = np.array([len(r) for r in rows], np.int32)
  width = int(lengths.max()) if width is None else width
  tokens = np.full((len(rows), width), arithmetic.PAD_ID, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return tokens, lengths


def decoder(tokenizer):
  return lambda tokens, lengths: arithmetic.decode_completions(tokenizer, tokens, lengths)


def evaluate(model, tokenizer, problems, key, *, k: int, max_new_tokens: int,
             soft: bool = False, temperature: float = 1.0) -> dict[str, float]:
  """Pass@1 / Pass@k with ``k`` samples per held-out problem (discrete or soft rollouts)."""
  config = trainer.RLConfig(group_size=k, max_new_tokens=max_new_tokens, soft=soft,
                            temperature=temperature)
  prompts, lengths = think_prompts(tokenizer, problems)
  _, tokens, out_lengths = trainer.rollout(
      model, prompts, lengths, key, config, end_think_id=arithmetic.END_THINK_ID,
      stop_tokens=(arithmetic.EOS_ID,), pad_id=arithmetic.PAD_ID)
  completions = arithmetic.decode_completions(tokenizer, tokens, out_lengths)
  answers = [p.answer for p in problems for _ in range(k)]
  correct = rl_rewards.correctness(None, completions, answers=answers).reshape(-1, k) > 0
  return {"pass@1": arithmetic.pass_at_k(correct, 1), f"pass@{k}": arithmetic.pass_at_k(correct, k),
          "mean_length": float(np.mean(out_lengths))}


def rl_config(config, soft: bool) -> trainer.RLConfig:
  return trainer.RLConfig(
      group_size=config.group_size, max_new_tokens=config.max_new_tokens,
      temperature=config.temperature, soft=soft, soft_top_k=config.soft_top_k,
      soft_top_p=config.soft_top_p, soft_tau=config.soft_tau,
      advantage_scale=config.advantage_scale, num_updates=config.num_updates,
      learning_rate=config.learning_rate, chunk_size=config.chunk_size,
      loss=rl.GRPOLossConfig(eps_low=config.eps_low, eps_high=config.eps_high,
                             dual_clip=config.dual_clip, kl_coef=config.kl_coef,
                             aggregation=config.aggregation))


def train_rl(config, model, ref_model, tokenizer, soft: bool, key) -> list[dict]:
  """``num_steps`` GRPO / SofT-GRPO steps on train-split prompts; returns per-step metrics."""
  cfg = rl_config(config, soft)
  optimizer = trainer.make_optimizer(model, cfg)
  problems = arithmetic.generate_problems(config.num_steps * config.prompts_per_step,
                                          seed=config.seed + 1, num_ops=tuple(config.num_ops))
  reward_fn = rl_rewards.correctness
  history = []
  width = max(len(tokenizer.encode(p.prompt).ids) for p in problems) + 1
  for step in (bar := tqdm(range(config.num_steps), desc="soft_grpo" if soft else "grpo")):
    batch = problems[step * config.prompts_per_step:(step + 1) * config.prompts_per_step]
    prompts, lengths = think_prompts(tokenizer, batch, width)
    key, step_key = jax.random.split(key)
    metrics = trainer.train_step(
        model, optimizer, ref_model, prompts, lengths, [p.prompt for p in batch], reward_fn,
        {"answers": [p.answer for p in batch]}, step_key, cfg, decode=decoder(tokenizer),
        end_think_id=arithmetic.END_THINK_ID, stop_tokens=(arithmetic.EOS_ID,),
        pad_id=arithmetic.PAD_ID)
    history.append({"step": step, **metrics})
    bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0):.4f}")
  return history


def plot_rewards(histories: dict[str, list[dict]], path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, hist in histories.items():
    r = np.array([h["reward"] for h in hist])
    smooth = np.convolve(r, np.ones(5) / 5, mode="valid") if len(r) >= 5 else r
    ax.plot(np.arange(len(smooth)), smooth, label=name)
  ax.set_xlabel("RL step")
  ax.set_ylabel("train reward (5-step mean)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config) -> dict:
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  base, tokenizer = load_sft(config.init_dir)
  eval_problems = arithmetic.generate_problems(config.num_eval_problems, seed=config.seed + 100,
                                               num_ops=tuple(config.num_ops), split="test")
  eval_key = jax.random.key(config.seed + 7)
  evaluate_all = lambda m, soft=False: evaluate(m, tokenizer, eval_problems, eval_key,
                                                k=config.eval_k,
                                                max_new_tokens=config.max_new_tokens, soft=soft)
  results = {"config": config.to_dict(), "sft": evaluate_all(base)}
  histories = {}
  for method in config.methods:
    start = time.time()
    model, _ = load_sft(config.init_dir)
    soft = method == "soft_grpo"
    histories[method] = train_rl(config, model, base, tokenizer, soft,
                                 jax.random.key(config.seed))
    results[method] = {"discrete_eval": evaluate_all(model), "train_seconds": time.time() - start,
                       "final_train_reward": float(np.mean([h["reward"] for h in
                                                            histories[method][-5:]]))}
    if soft:
      results[method]["soft_eval"] = evaluate_all(model, soft=True)
  results["sft_soft_eval"] = evaluate_all(base, soft=True)
  results["history"] = histories
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  plot_rewards(histories, out_dir / "reward.png")
  print(json.dumps({k: v for k, v in results.items() if k not in ("config", "history")},
                   indent=2))
  return results


def main(argv):
  del argv
  run(_CONFIG.value)


if __name__ == "__main__":
  # Defined here, not at import, so experiments can import each other's helpers.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "grpo.py"),
      "Experiment config file.")
  app.run(main)
