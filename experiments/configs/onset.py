"""Collapse onset of one step at normalized step r in [0.01, 100] (Ghosts of Softmax).

Models are trained on digits (full-batch Adam; every seed, snapshotted after each training
length), then a single step of size r (in units of
the radius rho_a) is taken along the gradient, the first Adam step and a random direction;
the onset is the first r whose loss ratio L(theta + step) / L(theta) exceeds `threshold`.
Temperature part: MLP 64-128-128-10 trained with softmax(z / T), T in {0.25 .. 8}; spread of
the onset measured in raw step length tau vs in r.

Run:  python -m experiments.onset
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.architectures = "linear,mlp,cnn,mlp_ln,cnn_bn,transformer"
  c.directions = "gradient,adam,random"
  c.train_steps = "280,300,320"  # training lengths (snapshots of one run per seed)
  c.learning_rate = 0.01
  c.r_min = 0.01
  c.r_max = 100.0
  c.num_r = 41
  c.threshold = 2.0
  c.temperatures = "0.25,0.5,1,2,4,8"
  c.temperature_arch = "mlp_deep"
  c.seeds = "0,1,2,3,4"
  c.out_dir = "experiments/out/onset"
  return c
