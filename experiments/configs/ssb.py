"""SSB vs GRPO on the tiny reasoner: curate rollouts, hinted teacher, LoRA logit distillation.

Run:  python -m experiments.ssb                       (this config)
      python -m experiments.ssb --config.num_questions=8 --config.train_steps=2   (smoke)
"""
import ml_collections

from experiments import llm_demo_common

# The character-level task tokenizer cannot spell an English instruction, so the tiny
# teacher context shows the question with the incorrect, then the correct worked solution,
# then asks the question again. The tiny reasoner was SFT'd on single 56-token examples
# only and cannot read such a context: on the curated questions (T = 0.4) it is correct in
# 66% of samples with the bare question and in 2-4% with any multi-problem context we
# tried ("{question}{correct} {question}", with or without <eos> separators, with the
# incorrect solution first). The results record both rates (teacher_correct_rate,
# no_hint_correct_rate).
TINY_TEMPLATE = "{question}{incorrect} {question}{correct} {question}"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_dir = "experiments/assets/tiny_reasoner"
  c.out_dir = "experiments/out/ssb"
  c.grpo_results = "experiments/out/grpo/results.json"  # for the SSB vs GRPO table
  # Task: "arithmetic" (generated; num_ops) or "math_jsonl" (c.data: local JSONL files).
  # c.tokens: special token strings looked up in the checkpoint's tokenizer.
  c.task = "arithmetic"
  c.data, c.tokens = llm_demo_common.task_config()
  c.num_ops = (2, 3)
  c.num_questions = 128
  c.rollouts = 4
  c.rollout_temperature = 0.8
  c.teacher_samples = 4
  c.teacher_temperature = 0.4
  c.template = TINY_TEMPLATE
  c.sampling_top_k = 50  # rollouts and teacher generation (official: top_k=50)
  # "full": teacher hidden states -> exact full-vocabulary KL (official); "topk_rest": top-k
  # logits + exact tail mass; "topk": renormalized top-k (docs/post_training.md).
  c.teacher_targets = "full"
  c.teacher_top_k = 16  # for "topk_rest" / "topk"
  c.distill_temperature = 2.0
  c.lora_rank = 32
  c.learning_rate = 2e-4
  c.train_steps = 60
  c.batch_size = 16
  c.max_new_tokens = 56
  c.num_eval_problems = 256
  c.eval_seed = 100  # held-out problems and sampling key (fixed across training seeds)
  c.eval_k = 8
  # The same evaluation sampling as experiments/configs/grpo.py (T 0.6, top-k 5, top-p 0.95),
  # so the three demos' tables compare.
  c.eval_temperature = 0.6
  c.eval_top_k = 5
  c.eval_top_p = 0.95
  c.chunk_size = 32
  return c
