"""n-gram style injection sweep on the tiny reasoner (issue 5; arXiv 2601.16224).

Style corpus (no download): worked solutions of the arithmetic task (train split) rewritten
in a "spaced" house style, "5 * 3 = 15 . 7 + 15 = 22 ." instead of "5*3=15. 7+15=22.", tokenized
with the model's own character-level tokenizer. The LM was trained on the compact style
only, so the prior pulls generations towards a style it has never produced.

Run:  python -m experiments.ngram_style
      python -m experiments.ngram_style --config.strengths="(0.0,0.1,1.0)"
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = "experiments/assets/tiny_reasoner"
  c.out_dir = "experiments/out/ngram_style"
  # Held-out prompts to continue.
  c.num_problems = 128
  c.problem_seed = 4321
  c.min_ops = 1
  c.max_ops = 3
  c.max_new_tokens = 72
  # Style corpus and n-gram model (logitlab.ngram).
  c.num_style_problems = 4000
  c.style_seed = 7
  c.max_order = 3
  c.discount = 0.75
  c.order_weights = (0.2, 0.3, 0.5)
  c.normalize_weights = True
  # lambda sweep; decoding is greedy on the steered logits unless temperature > 0.
  c.strengths = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)  # paper: [0, 1]
  c.temperature = 0.0
  c.seed = 0
  return c
