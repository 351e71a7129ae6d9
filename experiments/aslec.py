"""ASLEC data selection on the tiny reasoner (Step Length Confounding).

1. Pool: ``responses_per_question`` completions per train question sampled from the
   target model (``init_dir``) at ``sample_temperature``.
2. Scores from the target model's per-token log-probs (chunked): average log-prob,
   ASLEC-DROP (step heads excluded), ASLEC-CASL (OLS over the pool); plus random.
3. Top-``select_k`` per question; report the selection's correctness rate and the
   correlation of each score with the number of steps; fine-tune the target model on each
   selection (completion-token NLL) and evaluate Pass@1 / Pass@k on held-out problems.
Writes ``results.json`` to ``config.out_dir``.

The task and the special tokens come from ``config.task`` / ``config.data`` /
``config.tokens`` as in experiments.grpo.

Run:  python -m experiments.aslec [--config.num_questions=48 ...]   (configs/aslec.py)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from experiments import llm_demo_common as common
from logitlab import data_selection
from logitlab import numerics
from logitlab.rl import trainer

@nnx.jit(static_argnames="chunk_size")
def _logprobs(model, tokens, attention_mask, chunk_size):
  return data_selection.response_logprobs(model, tokens, attention_mask, chunk_size=chunk_size)


@nnx.jit(static_argnames="chunk_size")
def sft_step(model, optimizer, tokens, attention_mask, completion_mask, chunk_size):
  """Completion-token NLL step (index convention of ``logitlab.rl.logprobs``)."""
  def loss_fn(m):
    logp = data_selection.response_logprobs(m, tokens, attention_mask, chunk_size=chunk_size)
    return -numerics.masked_mean(logp, completion_mask)

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def head_masks(tokenizer, tokens: np.ndarray, completion_mask: np.ndarray,
               num_head_tokens: int) -> np.ndarray:
  """Step-head mask ``[N, L]`` over the completion tokens of each rollout.

  The text is the concatenation of the tokens' individual decodings, so every token has
  exact character offsets without re-tokenizing (a sampled BPE sequence need not be the
  canonical tokenization of its text). Added tokens (``<think>``, ``<eos>``,
  ``<|im_end|>`` ...) are never step heads.
  """
  added = set(tokenizer.get_added_tokens_decoder())
  heads = np.zeros(tokens.shape, bool)
  for i in range(len(tokens)):
    cols = np.flatnonzero(completion_mask[i])
    ids = tokens[i, cols].tolist()
    pieces = tokenizer.decode_batch([[t] for t in ids], skip_special_tokens=False)
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    offsets = list(zip([0] + ends[:-1], ends))
    heads[i, cols] = data_selection.step_head_mask("".join(pieces), offsets,
                                                   num_head_tokens=num_head_tokens,
                                                   never_head=[t in added for t in ids])
  return heads


def run(config) -> dict:
  wall = time.time()
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  target, tokenizer = common.load_sft(config.init_dir)
  demo = common.setup(config, target, tokenizer)
  problems = demo.task.sample(config.num_questions, config.seed + 3, "train")
  prompts, lengths = common.think_prompts(demo, problems)
  rcfg = trainer.RLConfig(group_size=config.responses_per_question,
                          max_new_tokens=config.max_new_tokens,
                          temperature=config.sample_temperature)
  pool, tokens, out_lengths = trainer.rollout(
      target, prompts, lengths, jax.random.key(config.seed), rcfg,
      **demo.tokens.rollout_kwargs())
  completions = demo.decode(tokens, out_lengths)
  answers = [p.answer for p in problems for _ in range(config.responses_per_question)]
  correct = demo.task.reward(None, completions, answers=answers)
  num_steps = np.array([len(demo.task.split_steps(c)) for c in completions])
  questions = np.repeat(np.arange(len(problems)), config.responses_per_question)

  logp = _logprobs(target, pool.tokens, pool.attention_mask, config.chunk_size)
  completion_mask = np.asarray(pool.completion_mask)
  heads = head_masks(tokenizer, np.asarray(pool.tokens), completion_mask, config.num_head_tokens)
  scores = data_selection.step_scores(logp, completion_mask, heads)
  casl, coef = data_selection.casl_scores(scores)
  by_method = {"random": np.random.default_rng(config.seed).random(len(completions)),
               "avg_logp": np.asarray(scores["s_logp"]), "drop": np.asarray(scores["s_drop"]),
               "casl": np.asarray(casl)}
  first, rest = np.asarray(scores["s_first"]), np.asarray(scores["s_non_head"])
  both = (heads & completion_mask).any(-1) & (~heads & completion_mask).any(-1)
  results = {"config": config.to_dict(), "pool_correct_rate": float(correct.mean()),
             "casl_coefficients": np.asarray(coef).tolist(),
             # The confound ASLEC corrects: step heads with *lower* log-prob than the rest.
             "head_logprob_mean": float(first[both].mean()),
             "non_head_logprob_mean": float(rest[both].mean()),
             "frac_heads_lower": float(np.mean(first[both] < rest[both])),
             "mean_head_density": float(np.asarray(scores["z"]).mean()), "methods": {}}
  evaluate = common.held_out_evaluator(config, demo)
  results["target_eval"] = evaluate(target)
  for method in config.methods:
    score = by_method[method]
    chosen = data_selection.select_top_k(score, questions, config.select_k)
    model, _ = common.load_sft(config.init_dir)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    rng = np.random.default_rng(config.seed)
    for _ in tqdm(range(config.sft_steps), desc=f"sft[{method}]"):
      rows = chosen[rng.integers(0, len(chosen), config.sft_batch_size)]
      sft_step(model, optimizer, pool.tokens[rows], pool.attention_mask[rows],
               pool.completion_mask[rows], config.chunk_size)
    results["methods"][method] = {
        "selected_correct_rate": float(correct[chosen].mean()),
        "selected_mean_steps": float(num_steps[chosen].mean()),
        "score_vs_steps_corr": float(np.corrcoef(score, num_steps)[0, 1]),
        "score_vs_correct_corr": float(np.corrcoef(score, correct)[0, 1]),
        "finetuned_eval": evaluate(model)}
  results["wall_seconds"] = time.time() - wall
  return common.write_results(out_dir, results)


if __name__ == "__main__":
  common.main(run, "aslec")
