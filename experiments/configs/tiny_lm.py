"""Tiny reasoner: a 3-layer Llama-style LM trained on generated arithmetic with worked steps.

Run:  python -m experiments.train_tiny_lm                         (this config)
      python -m experiments.train_tiny_lm --config.num_steps=200 --config.out_dir=/tmp/tiny
      python -m experiments.train_tiny_lm --config.eval_only
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Task (logitlab.tasks.arithmetic): difficulty = number of operators per problem.
  c.min_ops = 1
  c.max_ops = 3
  c.max_operand = 9
  c.num_train_problems = 60_000
  c.max_len = 56
  # Model (LMConfig fields; vocab comes from the tokenizer).
  c.model_type = "llama"
  c.hidden_size = 96
  c.intermediate_size = 256
  c.num_layers = 3
  c.num_heads = 4
  c.num_kv_heads = 2
  c.rope_theta = 10_000.0
  c.tie_word_embeddings = True
  # Optimization.
  c.batch_size = 32
  c.num_steps = 1200
  c.learning_rate = 3e-3
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.grad_clip = 1.0
  c.log_every = 50
  # Evaluation on the held-out split (greedy accuracy, sampled Pass@1 / Pass@k).
  c.num_eval_problems = 256
  c.eval_k = 8
  c.eval_temperature = 1.0
  c.max_new_tokens = 56
  c.out_dir = "experiments/assets/tiny_reasoner"
  c.eval_only = False  # True: load out_dir's checkpoint and only evaluate
  return c
