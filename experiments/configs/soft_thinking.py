"""Soft thinking on the generated arithmetic task with the tiny reasoner (issue 5).

Compares greedy, sampling, vanilla soft thinking (arXiv 2505.15778), Dirichlet and
Gumbel-Softmax soft thinking (arXiv 2508.03440) by accuracy and generated tokens over
several seeds, then probes vanilla soft thinking (JS(soft vs top-1) vs JS(top-1 vs top-2),
logit lens with a 0.6/0.4 two-token input).

Run:  python -m experiments.soft_thinking
      python -m experiments.soft_thinking --config.num_problems=64 --config.seeds=0,1
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = "experiments/assets/tiny_reasoner"
  c.out_dir = "experiments/out/soft_thinking"
  # Task: held-out problems of logitlab.tasks.arithmetic.
  c.num_problems = 256
  c.problem_seed = 1234
  c.min_ops = 2
  c.max_ops = 3
  c.max_new_tokens = 56
  c.seeds = (0, 1, 2)
  # Soft-token recipe (paper defaults; the task vocabulary has only ~30 tokens).
  c.temperature = 0.6
  c.top_k = 30
  c.top_p = 0.95
  c.min_p = 0.0
  c.max_topk = 10
  c.dirichlet_alpha = 4.0
  c.gumbel_tau = 0.5
  # The discrete sampling baseline uses the same temperature/top-k/top-p.
  # After </think> the official eval scripts sample with T 0.6, top-k 30, top-p 0.95
  # (WJMacro/Randomized-Soft-Thinking scripts/st/naive_st.sh: --after_thinking_temperature 0.6
  # --after_thinking_top_p 0.95 --after_thinking_top_k 30).
  c.after_think_temperature = 0.6
  c.after_think_top_k = 30
  c.after_think_top_p = 0.95
  # Probes compare next-token distributions at the decoding temperature (as the
  # Randomized-Soft-Thinking sampler does), not at T = 1.
  # Probes: vanilla soft-thinking trajectories, the `probes_per_row` most uncertain soft steps.
  c.num_probe_problems = 128
  c.probes_per_row = 4
  c.lens_top1_weight = 0.6
  return c
