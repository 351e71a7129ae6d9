"""LR-spike survival on scikit-learn digits (Ghosts of Softmax, arch-grid protocol).

Full-batch Adam (lr 0.015, 200 steps) with a one-step learning-rate spike at step 50 of
x{1, 10, 100, 1e3, 1e4}; plain Adam vs gradient clipping vs the radius guard; divergent =
final training loss > 10 (or non-finite). The paper uses 5 seeds and six architectures
(`--config.seeds=5 --config.architectures=linear,mlp,cnn,mlp_ln,cnn_bn,transformer`).

Run:  python -m experiments.lr_spike
      python -m experiments.lr_spike --config=experiments/configs/lr_spike.py --config.seeds=5
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
  c.batch_size = 0  # 0 = full batch
  c.clip_norm = 1.0
  c.max_ratio = 1.0
  c.divergence_loss = 10.0
  c.out_dir = "experiments/out/lr_spike"
  return c
