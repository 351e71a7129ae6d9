"""SFT -> GRPO vs SofT-GRPO on the tiny reasoner: Pass@1 and Pass@k before and after RL.

Both methods start from the same SFT checkpoint (``config.init_dir``, HF format), train for
``num_steps`` rollout batches with the same optimizer and objective (PPO clip 0.2, dual clip
3, k3 KL 0.001 to the SFT model, token-mean), and are evaluated on held-out problems with
the reference's evaluation sampling (``config.eval_*``: T 0.6, top-k 5, top-p 0.95; Pass@1,
Pass@k, unbiased estimator); the SofT-GRPO model is also evaluated with its soft-thinking
rollout policy. Writes ``results.json`` and ``reward.png`` to ``config.out_dir``; prints
each method's step-time split (generate / score / update) and rollout tokens/s.

The task (``config.task``) is the generated arithmetic by default or a local math JSONL
file (``config.data``, ``\\boxed{}`` reward); special token ids come from the checkpoint's
tokenizer by the strings in ``config.tokens`` (see experiments/llm_demo_common.py).

Run:  python -m experiments.grpo [--config.num_steps=30 ...]   (configs/grpo.py)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
from tqdm import tqdm

from experiments import llm_demo_common as common
from logitlab import rl
from logitlab.rl import trainer


def rl_config(config, soft: bool) -> trainer.RLConfig:
  return trainer.RLConfig(
      group_size=config.group_size, max_new_tokens=config.max_new_tokens,
      temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, soft=soft,
      soft_top_k=config.soft_top_k, soft_top_p=config.soft_top_p, soft_tau=config.soft_tau,
      after_think_top_k=config.after_think_top_k, after_think_top_p=config.after_think_top_p,
      detach_soft_inputs=config.detach_soft_inputs, advantage_scale=config.advantage_scale,
      advantage_ddof=config.advantage_ddof, num_updates=config.num_updates,
      num_minibatches=config.num_minibatches,
      mask_truncated_completions=config.mask_truncated_completions,
      learning_rate=config.learning_rate, chunk_size=config.chunk_size,
      loss=rl.GRPOLossConfig(eps_low=config.eps_low, eps_high=config.eps_high,
                             dual_clip=config.dual_clip, kl_coef=config.kl_coef,
                             kl_clamp=config.kl_clamp, aggregation=config.aggregation,
                             importance_sampling=config.importance_sampling))


def time_split(history: list[dict]) -> dict[str, float]:
  """Total seconds per phase over the run (the first step includes compilation) and the
  rollout throughput of the steps after the first."""
  totals = {k: float(sum(h[k] for h in history)) for k in ("generate_s", "score_s", "update_s")}
  later = history[1:] or history
  tokens = sum(h["length"] * h["num_rollouts"] for h in later)
  totals["rollout_tokens_per_s"] = tokens / max(sum(h["generate_s"] for h in later), 1e-9)
  return totals


def train_rl(config, model, ref_model, demo: common.Demo, soft: bool, key) -> list[dict]:
  """``num_steps`` GRPO / SofT-GRPO steps on train-split prompts; returns per-step metrics."""
  cfg = rl_config(config, soft)
  optimizer = trainer.make_optimizer(model, cfg)
  problems = demo.task.sample(config.num_steps * config.prompts_per_step, config.seed + 1,
                              "train")
  history = []
  width = max(len(demo.prompt_ids(p.prompt)) for p in problems)
  for step in (bar := tqdm(range(config.num_steps), desc="soft_grpo" if soft else "grpo")):
    batch = problems[step * config.prompts_per_step:(step + 1) * config.prompts_per_step]
    prompts, lengths = common.think_prompts(demo, batch, width)
    key, step_key = jax.random.split(key)
    metrics = trainer.train_step(
        model, optimizer, ref_model, prompts, lengths, [p.prompt for p in batch],
        demo.task.reward, {"answers": [p.answer for p in batch]}, step_key, cfg,
        decode=demo.decode, **demo.tokens.rollout_kwargs())
    history.append({"step": step, "num_rollouts": len(batch) * cfg.group_size, **metrics})
    bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0):.4f}",
                    tok_s=f"{metrics['rollout_tokens_per_s']:.0f}")
  return history


def run(config) -> dict:
  wall = time.time()
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  base, tokenizer = common.load_sft(config.init_dir)
  demo = common.setup(config, base, tokenizer)
  if "soft_grpo" in config.methods:
    demo.tokens.require_think("SofT-GRPO (config.methods has 'soft_grpo')")
  evaluate = common.held_out_evaluator(config, demo)
  results = {"config": config.to_dict(), "sft": evaluate(base)}
  if demo.tokens.think_close is not None:  # soft thinking needs a think block to end
    results["sft_soft_eval"] = evaluate(base, soft=True)
  histories = {}
  for method in config.methods:
    start = time.time()
    model, _ = common.load_sft(config.init_dir)
    soft = method == "soft_grpo"
    histories[method] = train_rl(config, model, base, demo, soft, jax.random.key(config.seed))
    split = time_split(histories[method])
    print(f"{method}: generate {split['generate_s']:.1f} s, score {split['score_s']:.1f} s, "
          f"update {split['update_s']:.1f} s; rollout {split['rollout_tokens_per_s']:.0f} "
          "tokens/s (steps after the first)")
    results[method] = {"train_seconds": time.time() - start, "time_split": split,
                       "first_train_reward": float(np.mean([h["reward"] for h in
                                                            histories[method][:10]])),
                       "final_train_reward": float(np.mean([h["reward"] for h in
                                                            histories[method][-10:]])),
                       "discrete_eval": evaluate(model)}
    if soft:
      results[method]["soft_eval"] = evaluate(model, soft=True)
  results["history"] = histories
  results["wall_seconds"] = time.time() - wall
  common.plot_curves({name: [h["reward"] for h in hist] for name, hist in histories.items()},
                     out_dir / "reward.png", xlabel="RL step",
                     ylabel="train reward (10-step mean)", window=10)
  return common.write_results(out_dir, results, hide=("config", "history"))


if __name__ == "__main__":
  common.main(run, "grpo")
