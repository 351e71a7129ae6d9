"""SFT -> GRPO vs SofT-GRPO on the tiny reasoner (generated arithmetic), CPU in minutes.

Run:  python -m experiments.grpo                                   (this config)
      python -m experiments.grpo --config.num_steps=2 --config.num_eval_problems=8   (smoke)
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_dir = "experiments/assets/tiny_reasoner"  # HF folder of the SFT model
  c.out_dir = "experiments/results/grpo"
  c.methods = ("grpo", "soft_grpo")
  # Task: held-out problems for evaluation, train-split problems for RL prompts.
  c.num_ops = (2, 3)
  c.num_eval_problems = 64
  c.eval_k = 8
  # RL (logitlab.rl.trainer.RLConfig; SofT-GRPO reference values where given).
  c.num_steps = 40
  c.prompts_per_step = 4
  c.group_size = 8
  c.max_new_tokens = 48
  c.temperature = 1.0
  c.learning_rate = 1e-4  # tiny model; the paper-scale config uses 1e-6
  c.kl_coef = 0.001
  c.dual_clip = 3.0
  c.eps_low = 0.2
  c.eps_high = 0.2
  c.aggregation = "token_mean"
  c.advantage_scale = "group"
  c.num_updates = 1
  c.soft_top_k = 5
  c.soft_top_p = 0.95
  c.soft_tau = 0.1
  c.chunk_size = 32
  return c
