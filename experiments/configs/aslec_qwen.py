"""Paper setting (Step Length Confounding / ASLEC): Qwen3-4B-Base target, LIMO-v2
questions, keep 5 of 20 responses per question, SFT, evaluate on MATH500. GPU/TPU only.

Needs the local HF checkpoint folder and the problems as JSONL (nothing is downloaded):
LIMO-v2 as {"question", "solution", "answer"} per line, MATH500 as {"problem", "answer"}
(docs/post_training.md shows how to write both files).

Run:  python -m experiments.aslec --config=experiments/configs/aslec_qwen.py \
        --config.init_dir=/path/to/Qwen3-4B-Base \
        --config.data.path=/path/to/limo_v2.jsonl \
        --config.data.eval_path=/path/to/math500.jsonl

Difference to the paper: the demo samples the 20-response pool from the target model
itself (experiments/aslec.py); the paper scores LIMO-v2's pool of responses from several
generators. Prompts are Qwen3's chat format written out and end with `<think>`.
"""
from experiments.configs import aslec

QWEN3_THINK_TEMPLATE = (
    "<|im_start|>user\n{question}\nPlease reason step by step, and put your final answer "
    "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")


def get_config():
  c = aslec.get_config()
  c.init_dir = "/checkpoints/Qwen3-4B-Base"
  c.out_dir = "experiments/out/aslec_qwen"
  c.task = "math_jsonl"
  c.data.path = "/data/limo_v2.jsonl"
  c.data.eval_path = "/data/math500.jsonl"
  c.data.template = QWEN3_THINK_TEMPLATE
  c.tokens.eos = ("<|im_end|>", "<|endoftext|>")
  c.tokens.pad = "<|endoftext|>"
  c.tokens.think_open = "<think>"
  c.tokens.think_close = "</think>"
  c.num_questions = 800
  c.max_new_tokens = 16384
  c.sft_steps = 2000
  c.learning_rate = 1e-5
  c.num_eval_problems = 500
  c.chunk_size = 1024
  return c
