"""LR-spike survival on scikit-learn digits (Ghosts of Softmax arch grid, CPU-sized default).

Adam (lr 0.015, 200 steps) with a one-step learning-rate spike at step 50 of
x{1, 10, 100, 1e3, 1e4}; plain Adam vs gradient clipping vs the radius guard on MLP,
MLP+LayerNorm, CNN+BatchNorm and a tiny Transformer, 3 seeds; divergent = final training
loss > 10 (or non-finite). One deviation from the paper, for a few minutes on 2 CPU cores:
minibatches of 256 instead of the full batch (1437), which costs 5.6x less per step. The
paper's protocol (full batch, 5 seeds, six architectures) is `lr_spike_paper.py`.

Run:  python -m experiments.lr_spike
      python -m experiments.lr_spike --config=experiments/configs/lr_spike_paper.py
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.architectures = "mlp,mlp_ln,cnn_bn,transformer"
  c.methods = "adam,clip,guard"
  c.spike_factors = "1,10,100,1000,10000"
  c.seeds = 3
  c.steps = 200
  c.learning_rate = 0.015
  c.spike_step = 50
  c.spike_length = 1
  c.batch_size = 256  # 0 = full batch (the paper's protocol)
  c.clip_norm = 1.0
  c.max_ratio = 1.0
  c.divergence_loss = 10.0
  c.out_dir = "experiments/out/lr_spike"
  return c
