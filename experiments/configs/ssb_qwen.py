"""Paper setting (Semantic Soft Bootstrapping): Qwen2.5-3B-Instruct, GSM8K training
questions, 4 rollouts at T=0.8, teacher at T=0.4, LoRA r=32 alpha=32, lr 2e-4, KL at T=2,
held-out MATH500. GPU/TPU only.

Needs the local HF checkpoint folder and the problems as JSONL (nothing is downloaded):
GSM8K train as {"question", "answer": "... #### 72"} per line, MATH500 as
{"problem", "answer"} (docs/post_training.md shows how to write both files).

Run:  python -m experiments.ssb --config=experiments/configs/ssb_qwen.py \
        --config.init_dir=/path/to/Qwen2.5-3B-Instruct \
        --config.data.path=/path/to/gsm8k_train.jsonl \
        --config.data.eval_path=/path/to/math500.jsonl

Prompts are Qwen's chat format written out with the official system prompt (final answer
in \\boxed{}); the instruct model has no think block (tokens.think_* empty). The teacher
context is ssb.DEFAULT_TEACHER_TEMPLATE (the official instruction with question, correct and
incorrect solution) inside the same chat format; sampling is top-k 50 (T 0.8 / 0.4); correctness is the last \\boxed{} (or "#### x")
answer after normalization (logitlab.rl.rewards.math_correctness).
"""
from experiments.configs import ssb
from logitlab import ssb as ssb_lib

# Qwen's chat format with the official system prompt (logit_gen.py line 91), as
# tokenizer.apply_chat_template writes it.
QWEN_MATH_TEMPLATE = ("<|im_start|>system\n" + ssb_lib.SYSTEM_PROMPT + "<|im_end|>\n"
                      "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def get_config():
  c = ssb.get_config()
  c.init_dir = "/checkpoints/Qwen2.5-3B-Instruct"
  c.out_dir = "experiments/out/ssb_qwen"
  c.grpo_results = "experiments/out/grpo_qwen/results.json"
  c.task = "math_jsonl"
  c.data.path = "/data/gsm8k_train.jsonl"
  c.data.eval_path = "/data/math500.jsonl"
  c.data.template = QWEN_MATH_TEMPLATE
  c.tokens.eos = ("<|im_end|>", "<|endoftext|>")  # generation_config.json of the model
  c.tokens.pad = "<|endoftext|>"
  c.tokens.think_open = ""
  c.tokens.think_close = ""
  c.template = ssb_lib.DEFAULT_TEACHER_TEMPLATE
  c.num_questions = 7473
  c.teacher_samples = 1
  c.teacher_targets = "full"  # official: full-vocabulary teacher logits
  c.teacher_top_k = 64  # only for teacher_targets = "topk_rest" / "topk"
  c.max_new_tokens = 8192  # official max_new_tokens (rollouts and teacher)
  c.train_steps = 1000
  c.batch_size = 16
  c.num_eval_problems = 500
  c.chunk_size = 512
  return c
