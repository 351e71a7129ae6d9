"""Semantic Soft Bootstrapping vs GRPO on the tiny reasoner.

1. ``rollouts`` completions per train question (top-k 50 at T = 0.8, as the official
   code); ``ssb.curate`` keeps questions with a correct and an answered incorrect rollout.
2. Teacher context ``template`` (correct + incorrect + question); the model generates
   ``teacher_samples`` robust solutions (top-k 50, T = 0.4) and correct ones are kept.
3. Teacher targets (``config.teacher_targets``): "full" stores the teacher's hidden states
   and distills the full vocabulary (official); "topk_rest" the top-k logits + the exact
   tail mass; "topk" the renormalized top-k.
4. Student (same model + LoRA) sees the bare question + reply; ``train_steps`` of
   ``T^2 KL`` at T = 2 on reply tokens, LoRA parameters only; adapters are checkpointed
   (``ssb.save_lora``: the LoRA parameters only).
5. Held-out Pass@1 / Pass@k vs the SFT model (and the GRPO result of experiments.grpo if
   present). Writes ``results.json`` to ``config.out_dir``.

The task and the special tokens come from ``config.task`` / ``config.data`` /
``config.tokens`` as in experiments.grpo; with a math JSONL task the teacher context is
``config.template`` filled with the bare question and both solutions, then wrapped in the
prompt template (``config.data.template``).

Run:  python -m experiments.ssb [--config.train_steps=60 ...]   (configs/ssb.py)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from experiments import llm_demo_common as common
from logitlab import ssb
from logitlab.rl import trainer


def sample(model, demo: common.Demo, prompt_rows, key, *, num, temperature, max_new_tokens,
           top_k=None):
  """``num`` completions (token lists and texts) per prompt given as token-id lists."""
  prompts, lengths = common.pad_rows(prompt_rows, demo.tokens.pad)
  cfg = trainer.RLConfig(group_size=num, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k)
  _, tokens, out_lengths = trainer.rollout(model, prompts, lengths, key, cfg,
                                           **demo.tokens.rollout_kwargs())
  rows = [t[:n].tolist() for t, n in zip(tokens, out_lengths)]
  return rows, demo.decode(tokens, out_lengths)


def grpo_reference(config) -> dict | None:
  """GRPO's held-out eval from ``experiments.grpo``'s results.json if it used the same
  evaluation problems and sampling (same ``eval_seed``, ``num_eval_problems``, ``eval_k``,
  ``num_ops``, ``max_new_tokens``, ``init_dir``, ``eval_*``; for a JSONL task also
  ``data``); else None."""
  path = Path(config.grpo_results)
  if not path.exists():
    return None
  grpo = json.loads(path.read_text())
  keys = ("eval_seed", "num_eval_problems", "eval_k", "num_ops", "max_new_tokens", "init_dir",
          "eval_temperature", "eval_top_k", "eval_top_p")
  if config.task != "arithmetic":  # the same files and prompt template too
    keys += ("task", "data")
  mine = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists
  if any(grpo["config"].get(k) != mine.get(k) for k in keys):
    return None
  method = grpo.get("grpo", {})
  return {**method.get("discrete_eval", {}), "train_seconds": method.get("train_seconds")}


def teacher_data(model, teacher_batch: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
  """Stored targets per ``config.teacher_targets``: "full" (teacher hidden states, exact
  full-vocabulary KL), "topk_rest" (top-k logits + tail mass) or "topk" (renormalized)."""
  mode = config.teacher_targets
  if mode not in ("full", "topk_rest", "topk"):
    raise ValueError(f"`config.teacher_targets` must be 'full', 'topk_rest' or 'topk', got "
                     f"{mode!r}.")
  rows = range(0, len(teacher_batch["tokens"]), config.batch_size)
  batches = [{k: jnp.asarray(v[i:i + config.batch_size]) for k, v in teacher_batch.items()}
             for i in rows]
  if mode == "full":
    hidden = nnx.jit(ssb.model_teacher_hidden)
    return {"teacher_hidden": np.concatenate([np.asarray(hidden(model, b)) for b in batches])}
  targets = nnx.jit(ssb.model_teacher_targets,
                    static_argnames=("top_k", "temperature", "chunk_size"))
  parts = [targets(model, b, top_k=config.teacher_top_k, temperature=config.distill_temperature,
                   chunk_size=config.chunk_size) for b in batches]
  out = {"teacher_logits": np.concatenate([np.asarray(p[0]) for p in parts]),
         "teacher_ids": np.concatenate([np.asarray(p[1]) for p in parts])}
  if mode == "topk_rest":
    out["teacher_rest"] = np.concatenate([np.asarray(p[2]) for p in parts])
  return out


def run(config) -> dict:
  wall = time.time()
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  model, tokenizer = common.load_sft(config.init_dir)
  demo = common.setup(config, model, tokenizer)
  task = demo.task
  problems = task.sample(config.num_questions, config.seed + 5, "train")
  think = lambda p: demo.prompt_ids(p.prompt)
  key = jax.random.key(config.seed)
  # 1. Rollouts + curation.
  _, texts = sample(model, demo, [think(p) for p in problems], key, num=config.rollouts,
                    temperature=config.rollout_temperature, max_new_tokens=config.max_new_tokens,
                    top_k=config.sampling_top_k)
  texts = np.array(texts, object).reshape(len(problems), config.rollouts)
  answers = [[task.extract(t) for t in row] for row in texts]
  correct = np.array([[a == p.answer for a in row] for row, p in zip(answers, problems)])
  unanswered = float(np.mean([[a is None for a in row] for row in answers]))
  triples = ssb.curate(correct, answers, np.random.default_rng(config.seed))
  # 2. Hinted teacher generation + correctness filter. A rollout's text starts after the
  # prompt's think_open token (if any): write it back so the solution reads as generated.
  def solution(text):
    for eos in demo.tokens.eos_text:
      text = text.replace(eos, "")
    return demo.tokens.think_open_text + text

  contexts = [demo.prompt_ids(task.wrap(ssb.teacher_prompt(
      task.question(problems[q]), solution(texts[q, c]), solution(texts[q, i]),
      config.template))) for q, c, i in triples]
  stats = {"questions": len(problems), "curated": len(triples),
           "rollout_correct_rate": float(correct.mean()), "rollout_unanswered_rate": unanswered}
  if not triples:
    raise RuntimeError(f"No question has both a correct and an incorrect rollout: {stats}.")
  replies, reply_texts = sample(model, demo, contexts, jax.random.fold_in(key, 1),
                                num=config.teacher_samples,
                                temperature=config.teacher_temperature,
                                max_new_tokens=config.max_new_tokens,
                                top_k=config.sampling_top_k)
  owners = [t for t in triples for _ in range(config.teacher_samples)]
  keep = [j for j, (text, (q, _, _)) in enumerate(zip(reply_texts, owners))
          if task.reward(None, [text], answers=[problems[q].answer])[0] > 0]
  stats["teacher_solutions_kept"] = len(keep)
  stats["teacher_solutions_generated"] = len(replies)
  # Control: the same questions and sampling without the hint (bare question context).
  _, bare_texts = sample(model, demo, [think(problems[q]) for q, _, _ in triples],
                         jax.random.fold_in(key, 1), num=config.teacher_samples,
                         temperature=config.teacher_temperature,
                         max_new_tokens=config.max_new_tokens, top_k=config.sampling_top_k)
  stats["teacher_correct_rate"] = len(keep) / len(replies)
  stats["no_hint_correct_rate"] = float(task.reward(
      None, bare_texts, answers=[problems[q].answer for q, _, _ in owners]).mean())
  if not keep:
    raise RuntimeError(f"No teacher solution passed the correctness filter: {stats}.")
  teacher_prefix = [contexts[j // config.teacher_samples] for j in keep]
  student_prefix = [think(problems[owners[j][0]]) for j in keep]
  reply_rows = [replies[j] for j in keep]
  reply_start = max(len(p) for p in teacher_prefix)
  width = reply_start + max(len(r) for r in reply_rows)
  teacher_batch = ssb.align_replies(teacher_prefix, reply_rows, reply_start, width)
  data = ssb.align_replies(student_prefix, reply_rows, reply_start, width)
  # 3. Teacher targets on the reply tokens in the hinted context, batched over rows and
  # chunked over T, so no [rows, T, V] logits exist at once.
  data.update(teacher_data(model, teacher_batch, config))
  # 4. LoRA-only student training.
  evaluate = common.held_out_evaluator(config, demo)
  results = {"config": config.to_dict(), "data": stats, "sft": evaluate(model)}
  start = time.time()
  ssb.add_lora(model, config.lora_rank, rngs=nnx.Rngs(config.seed))
  optimizer = ssb.lora_optimizer(model, config.learning_rate)
  rng = np.random.default_rng(config.seed)
  losses = []
  for _ in (bar := tqdm(range(config.train_steps), desc="ssb")):
    rows = rng.integers(0, len(keep), config.batch_size)
    loss = ssb.lora_train_step(model, optimizer, {k: jnp.asarray(v[rows]) for k, v in data.items()},
                               temperature=config.distill_temperature,
                               chunk_size=config.chunk_size)
    losses.append(float(loss))
    bar.set_postfix(loss=f"{losses[-1]:.4f}")
  shutil.rmtree(out_dir / "lora", ignore_errors=True)  # a rerun replaces the adapters
  ssb.save_lora(str(out_dir / "lora"), model, config.train_steps)
  results["train_seconds"] = time.time() - start
  results["ssb"] = evaluate(model)
  results["ssb_loss"] = {"first": losses[0], "last": losses[-1]}
  results["loss_history"] = losses
  results["grpo"] = grpo_reference(config)
  results["wall_seconds"] = time.time() - wall
  common.plot_curves({"ssb": losses}, out_dir / "loss.png", xlabel="LoRA step",
                     ylabel="SSB loss (T^2 KL, reply tokens)", log_y=True)
  return common.write_results(out_dir, results, hide=("config", "loss_history"))


if __name__ == "__main__":
  common.main(run, "ssb")
