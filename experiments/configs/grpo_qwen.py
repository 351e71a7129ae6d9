"""Paper setting (SofT-GRPO, arXiv 2511.06411): GRPO vs SofT-GRPO on a Qwen2.5 / R1-Distill
checkpoint, for GPU/TPU hosts. Not runnable on CPU; the model folder must exist locally.

Run:  python -m experiments.grpo --config=experiments/configs/grpo_qwen.py \
        --config.init_dir=/path/to/DeepSeek-R1-Distill-Qwen-1.5B
The arithmetic task stands in for the paper's math training set (DeepScaleR) here; swap
the prompt source and reward in experiments/grpo.py to reproduce the paper's data.
Known gap: the demos take the special token ids (<think>, </think>, <eos>, <pad>) from
logitlab.tasks.arithmetic (experiments/llm_demo_common.py, experiments/{grpo,ssb,aslec}.py),
not from the loaded tokenizer; map them to the checkpoint's tokens before running.
"""
from experiments.configs import grpo


def get_config():
  c = grpo.get_config()
  c.init_dir = "/checkpoints/DeepSeek-R1-Distill-Qwen-1.5B"
  c.out_dir = "experiments/out/grpo_qwen"
  c.num_steps = 500
  c.prompts_per_step = 32
  c.group_size = 8
  c.max_new_tokens = 8192
  c.learning_rate = 1e-6
  c.num_eval_problems = 500
  c.eval_k = 32
  c.chunk_size = 512
  return c
