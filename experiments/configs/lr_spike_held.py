"""Held LR spike (Ghosts of Softmax, Sec. LR spike): MLP 64-128-10, Adam, batch 64,
spike x1000 at step 50 held for 150 steps; base lr 1e-3 and 1e-2.

Run:  python -m experiments.lr_spike --config=experiments/configs/lr_spike_held.py
      (add --config.learning_rate=0.01 for the second base rate)
"""
from experiments.configs import lr_spike


def get_config():
  c = lr_spike.get_config()
  c.architectures = "mlp"
  c.spike_factors = "1,1000"
  c.learning_rate = 1e-3
  c.batch_size = 64
  c.steps = 300
  c.spike_length = 150
  c.out_dir = "experiments/out/lr_spike_held"
  return c
