"""Paper setting (Semantic Soft Bootstrapping): Qwen2.5-3B-Instruct, GSM8K questions,
4 rollouts at T=0.8, teacher at T=0.4, LoRA r=32 alpha=32, lr 2e-4, KL at T=2. GPU/TPU only.

Run:  python -m experiments.ssb --config=experiments/configs/ssb_qwen.py \
        --config.init_dir=/path/to/Qwen2.5-3B-Instruct
(The arithmetic questions stand in for GSM8K here; replace the question loader and the
answer extractor (boxed answers) to reproduce the paper.)
Known gap: the demos take the special token ids (<think>, </think>, <eos>, <pad>) from
logitlab.tasks.arithmetic (experiments/llm_demo_common.py, experiments/{grpo,ssb,aslec}.py),
not from the loaded tokenizer; map them to the checkpoint's tokens before running.
"""
from experiments.configs import ssb
from logitlab import ssb as ssb_lib


def get_config():
  c = ssb.get_config()
  c.init_dir = "/checkpoints/Qwen2.5-3B-Instruct"
  c.out_dir = "experiments/out/ssb_qwen"
  c.template = ssb_lib.DEFAULT_TEACHER_TEMPLATE
  c.num_questions = 7473
  c.teacher_samples = 1
  c.teacher_top_k = 64
  c.max_new_tokens = 1024
  c.train_steps = 1000
  c.batch_size = 16
  c.chunk_size = 512
  return c
