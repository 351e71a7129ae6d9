"""ASLEC on the tiny reasoner: select 5 of 20 sampled responses per question by random /
average log-prob / ASLEC-DROP / ASLEC-CASL, fine-tune on each selection, compare.

Run:  python -m experiments.aslec                     (this config)
      python -m experiments.aslec --config.num_questions=4 --config.sft_steps=2   (smoke)
"""
import ml_collections

from experiments import llm_demo_common


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_dir = "experiments/assets/tiny_reasoner"  # target model (scores) and SFT start
  c.out_dir = "experiments/out/aslec"
  # Task: "arithmetic" (generated; num_ops) or "math_jsonl" (c.data: local JSONL files).
  # c.tokens: special token strings looked up in the checkpoint's tokenizer.
  c.task = "arithmetic"
  c.data, c.tokens = llm_demo_common.task_config()
  c.num_ops = (2, 3)
  c.num_questions = 48
  c.responses_per_question = 20
  c.select_k = 5
  c.sample_temperature = 1.0  # 1.2 gave a 37% correct pool and worse fine-tunes
  c.num_head_tokens = 2  # official --skip_token default (merge_cal_limo_ours.py)
  c.max_new_tokens = 56
  c.methods = ("random", "avg_logp", "drop", "casl")
  # Fine-tuning on each selection, then held-out evaluation.
  c.sft_steps = 40
  c.sft_batch_size = 32
  c.learning_rate = 1e-4  # 3e-4 cut held-out Pass@1 by ~8 points for every selection
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
