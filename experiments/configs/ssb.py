"""SSB vs GRPO on the tiny reasoner: curate rollouts, hinted teacher, LoRA logit distillation.

Run:  python -m experiments.ssb                       (this config)
      python -m experiments.ssb --config.num_questions=8 --config.train_steps=2   (smoke)
"""
import ml_collections

# The character-level task tokenizer cannot spell an English instruction, so the tiny
# teacher context shows the question with the incorrect, then the correct worked solution,
# then asks the question again (a 3-layer model can copy from context; it cannot follow
# instructions). A first try with "{correct} {incorrect} {question}" yielded no correct
# teacher solution (0 of 28).
TINY_TEMPLATE = "{question}{incorrect} {question}{correct} {question}"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_dir = "experiments/assets/tiny_reasoner"
  c.out_dir = "experiments/out/ssb"
  c.grpo_results = "experiments/out/grpo/results.json"  # for the SSB vs GRPO table
  c.num_ops = (2, 3)
  c.num_questions = 128
  c.rollouts = 4
  c.rollout_temperature = 0.8
  c.teacher_samples = 4
  c.teacher_temperature = 0.4
  c.template = TINY_TEMPLATE
  c.teacher_top_k = 16  # stored teacher logits per reply token (None: full vocabulary)
  c.distill_temperature = 2.0
  c.lora_rank = 32
  c.learning_rate = 2e-4
  c.train_steps = 60
  c.batch_size = 16
  c.max_new_tokens = 48
  c.num_eval_problems = 256
  c.eval_seed = 100  # held-out problems and sampling key (fixed across training seeds)
  c.eval_k = 8
  c.chunk_size = 32
  return c
