"""Paper setting (Step Length Confounding / ASLEC): score a LIMO-v2-style pool with a
Qwen3-4B-Base target, keep 5 of 20 responses per question, SFT, evaluate. GPU/TPU only.

Run:  python -m experiments.aslec --config=experiments/configs/aslec_qwen.py \
        --config.init_dir=/path/to/Qwen3-4B-Base
(The arithmetic pool stands in for LIMO-v2 here; replace the pool loader to reproduce.)
Known gap: the demos take the special token ids (<think>, </think>, <eos>, <pad>) from
logitlab.tasks.arithmetic (experiments/llm_demo_common.py, experiments/{grpo,ssb,aslec}.py),
not from the loaded tokenizer; map them to the checkpoint's tokens before running.
"""
from experiments.configs import aslec


def get_config():
  c = aslec.get_config()
  c.init_dir = "/checkpoints/Qwen3-4B-Base"
  c.out_dir = "experiments/out/aslec_qwen"
  c.num_questions = 800
  c.max_new_tokens = 16384
  c.sft_steps = 2000
  c.learning_rate = 1e-5
  c.chunk_size = 1024
  return c
