"""SFT -> GRPO vs SofT-GRPO on the tiny reasoner: Pass@1 and Pass@k before and after RL.

Both methods start from the same SFT checkpoint (``config.init_dir``, HF format), train for
``num_steps`` rollout batches with the same optimizer and objective (PPO clip 0.2, dual clip
3, k3 KL 0.001 to the SFT model, token-mean), and are evaluated on held-out problems with
discrete sampling at T = 1 (Pass@1, Pass@k, unbiased estimator); the SofT-GRPO model is
also evaluated with its soft-thinking rollout policy. Writes ``results.json`` and
``reward.png`` to ``config.out_dir``.

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
      temperature=config.temperature, soft=soft, soft_top_k=config.soft_top_k,
      soft_top_p=config.soft_top_p, soft_tau=config.soft_tau,
      advantage_scale=config.advantage_scale, num_updates=config.num_updates,
      learning_rate=config.learning_rate, chunk_size=config.chunk_size,
      loss=rl.GRPOLossConfig(eps_low=config.eps_low, eps_high=config.eps_high,
                             dual_clip=config.dual_clip, kl_coef=config.kl_coef,
                             aggregation=config.aggregation))


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
    history.append({"step": step, **metrics})
    bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0):.4f}")
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
    results[method] = {"train_seconds": time.time() - start,
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
