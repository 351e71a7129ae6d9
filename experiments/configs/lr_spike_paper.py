"""LR-spike arch grid exactly as in Ghosts of Softmax (arXiv 2603.13552): full-batch Adam
(lr 0.015, 200 steps), one-step spike at step 50, 5 seeds, six architectures.

About 25 minutes on 2 CPU cores (CNN+BN dominates); `--config.seeds=3
--config.architectures=mlp,mlp_ln,cnn_bn,transformer` is the grid reported in RESULTS.md.

Run:  python -m experiments.lr_spike --config=experiments/configs/lr_spike_paper.py
"""
from experiments.configs import lr_spike


def get_config():
  c = lr_spike.get_config()
  c.architectures = "linear,mlp,cnn,mlp_ln,cnn_bn,transformer"
  c.seeds = 5
  c.batch_size = 0
  c.out_dir = "experiments/out/lr_spike_paper"
  return c
