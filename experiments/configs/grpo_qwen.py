"""Paper setting (SofT-GRPO, arXiv 2511.06411): GRPO vs SofT-GRPO on
DeepSeek-R1-Distill-Qwen-1.5B with DeepScaleR training problems, for GPU/TPU hosts.

Needs two local things (nothing is downloaded): the HF checkpoint folder (config.json,
*.safetensors, tokenizer.json) and the problems as JSONL, one {"problem", "answer"} object
per line (DeepScaleR-Preview-Dataset for training, MATH500 for the held-out Pass@1/Pass@32;
docs/post_training.md shows how to write both files).

Run:  python -m experiments.grpo --config=experiments/configs/grpo_qwen.py \
        --config.init_dir=/path/to/DeepSeek-R1-Distill-Qwen-1.5B \
        --config.data.path=/path/to/deepscaler.jsonl \
        --config.data.eval_path=/path/to/math500.jsonl

Prompts are the model's chat format written out (R1 template, the SofT-GRPO / DeepScaleR
instruction) and end with the `<think>` token: rollouts start inside the think block, and
soft thinking stops at `</think>`. Rewards: 1 if the last \\boxed{} answer equals the
reference after normalization (logitlab.rl.rewards.math_correctness).
"""
from experiments.configs import grpo

R1_TEMPLATE = ("<｜begin▁of▁sentence｜><｜User｜>{question} Let's think step by step and "
               "output the final answer within \\boxed{}.<｜Assistant｜>")


def get_config():
  c = grpo.get_config()
  c.init_dir = "/checkpoints/DeepSeek-R1-Distill-Qwen-1.5B"
  c.out_dir = "experiments/out/grpo_qwen"
  c.task = "math_jsonl"
  c.data.path = "/data/deepscaler.jsonl"
  c.data.eval_path = "/data/math500.jsonl"
  c.data.template = R1_TEMPLATE
  c.tokens.eos = "<｜end▁of▁sentence｜>"
  c.tokens.pad = ""  # the eos token, as the R1-Distill tokenizer config
  c.tokens.think_open = "<think>"
  c.tokens.think_close = "</think>"
  c.num_steps = 500
  c.prompts_per_step = 64  # data.train_batch_size=64 (SofT-GRPO-deepscaler-8k-*.sh)
  c.num_minibatches = 2  # ppo_mini_batch_size=32 -> 2 updates per rollout batch
  c.group_size = 8
  c.max_new_tokens = 8192
  c.learning_rate = 1e-6
  c.num_eval_problems = 500
  c.eval_k = 32
  c.chunk_size = 512
  return c
