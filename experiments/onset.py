"""Collapse onset vs normalized step r (Ghosts of Softmax, arXiv 2603.13552).

Prints the first r at which one step makes the training loss exceed `threshold` x its
value, per architecture and direction (paper: no failure below r = 1, onsets in [1, 10]),
and the temperature experiment: the spread (std of log10) of the onset measured in raw
step length tau vs in r = tau / rho_a with rho_a = pi T / Delta_a (paper: 0.992 vs 0.164).

Run:  python -m experiments.onset
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import logging
from ml_collections import config_flags
from tqdm import tqdm

import logitlab
from experiments import digits_trainer as dt
from logitlab import datasets


def train(config, arch, data, temperature=1.0):
  """Full-batch Adam on digits with loss CE(softmax(z / T)); returns (model, params, rest)."""
  x_train, y_train = data
  model = dt.functional_model(arch)
  params, rest = model.init(config.seed)
  tx = optax.adam(config.learning_rate)
  state = tx.init(params)

  @jax.jit
  def step(params, rest, state):
    def loss_fn(p):
      logits, new_rest = model.forward(p, rest, x_train, train=True)
      return dt.cross_entropy(logits / temperature, y_train), new_rest
    (_, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), rest, state

  for _ in range(config.train_steps):
    params, rest, state = step(params, rest, state)
  return model, params, rest


def directions(config, model, params, rest, data, temperature):
  """Descent direction of the gradient, the first Adam step (~ -sign g), and a random one."""
  x, y = data
  loss = lambda p: dt.cross_entropy(model.forward(p, rest, x, train=False)[0] / temperature, y)
  grads = jax.grad(loss)(params)
  adam = optax.adam(1.0)
  adam_step, _ = adam.update(grads, adam.init(params), params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(config.seed + 1), len(leaves))
  random = jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape) for k, l in
                                        zip(keys, leaves)])
  return {"gradient": jax.tree.map(jnp.negative, grads), "adam": adam_step, "random": random}


def loss_ratio_curve(config, model, params, rest, data, direction, temperature):
  """Loss ratio and raw step length tau for steps of normalized size r along `direction`."""
  x, y = data
  logits_fn = lambda p: model.forward(p, rest, x, train=False)[0]
  _, tangent = logitlab.directional_logits(logits_fn, params, direction)
  r_unit = logitlab.normalized_step(tangent, temperature=temperature).ratio
  norm = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(direction)))
  rs = jnp.geomspace(config.r_min, config.r_max, config.num_r)
  loss = lambda p: dt.cross_entropy(logits_fn(p) / temperature, y)
  base = loss(params)

  def at(r):
    step = jax.tree.map(lambda d: d * (r / r_unit), direction)
    return loss(optax.apply_updates(params, step)) / base

  ratios = jax.lax.map(at, rs)
  return np.asarray(rs), np.asarray(ratios), float(norm / r_unit)


def first_crossing(rs, ratios, threshold):
  bad = np.nonzero(~np.isfinite(ratios) | (ratios > threshold))[0]
  return float(rs[bad[0]]) if bad.size else float("inf")


def plot(curves, threshold, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  archs = sorted({a for a, _ in curves})
  fig, axes = plt.subplots(1, len(archs), figsize=(3.2 * len(archs), 3.2), squeeze=False)
  for j, arch in enumerate(archs):
    ax = axes[0, j]
    for (a, d), (rs, ratios) in curves.items():
      if a == arch:
        ax.plot(rs, np.clip(ratios, 1e-3, 1e6), label=d)
    ax.axvline(1.0, color="k", ls="--", lw=0.8)
    ax.axhline(threshold, color="r", ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", title=arch, xlabel="r = tau / rho_a")
  axes[0, 0].set_ylabel("L(theta + step) / L(theta)")
  axes[0, 0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  os.makedirs(config.out_dir, exist_ok=True)
  x_train, y_train, _, _ = (jnp.asarray(a) for a in datasets.digits())
  data = (x_train, y_train)

  onsets, curves = {}, {}
  for arch in tqdm(dt.csv_list(config.architectures), desc="architectures"):
    model, params, rest = train(config, arch, data)
    dirs = directions(config, model, params, rest, data, 1.0)
    for name in dt.csv_list(config.directions):
      rs, ratios, _ = loss_ratio_curve(config, model, params, rest, data, dirs[name], 1.0)
      onsets[(arch, name)] = first_crossing(rs, ratios, config.threshold)
      curves[(arch, name)] = (rs, ratios)
  rows = [[a, *[f"{onsets[(a, d)]:.3g}" for d in dt.csv_list(config.directions)]]
          for a in dt.csv_list(config.architectures)]
  table = dt.text_table(["arch", *dt.csv_list(config.directions)], rows)
  print(f"\nFirst r with loss ratio > {config.threshold} (one step from a trained model):\n")
  print(table)
  finite = [v for v in onsets.values() if np.isfinite(v)]
  print(f"\nmin onset r = {min(finite) if finite else float('nan'):.3g} "
        f"(paper: no failure for r < 1, onsets between 1 and 10)")

  temp_rows, tau_onsets, r_onsets = [], [], []
  for temperature in tqdm(dt.csv_list(config.temperatures, float), desc="temperatures"):
    model, params, rest = train(config, config.temperature_arch, data, temperature)
    direction = directions(config, model, params, rest, data, temperature)["gradient"]
    rs, ratios, tau_per_r = loss_ratio_curve(config, model, params, rest, data, direction,
                                             temperature)
    r_on = first_crossing(rs, ratios, config.threshold)
    tau_onsets.append(r_on * tau_per_r)
    r_onsets.append(r_on)
    temp_rows.append([f"{temperature:g}", f"{r_on * tau_per_r:.3g}", f"{r_on:.3g}"])
  spread = lambda v: float(np.std(np.log10(np.asarray(v)))) if np.all(np.isfinite(v)) else float(
      "nan")
  print(f"\nTemperature sweep ({config.temperature_arch}, gradient direction):\n")
  print(dt.text_table(["T", "onset tau", "onset r"], temp_rows))
  print(f"\nstd of log10 onset: raw tau {spread(tau_onsets):.3f} vs r {spread(r_onsets):.3f} "
        f"(paper: 0.992 vs 0.164)")

  plot(curves, config.threshold, os.path.join(config.out_dir, "onset.png"))
  with open(os.path.join(config.out_dir, "results.json"), "w") as f:
    json.dump({"config": config.to_dict(),
               "onsets": {f"{a}/{d}": v for (a, d), v in onsets.items()},
               "curves": {f"{a}/{d}": [rs.tolist(), ratios.tolist()]
                          for (a, d), (rs, ratios) in curves.items()},
               "temperature": {"rows": temp_rows, "std_log10_tau": spread(tau_onsets),
                               "std_log10_r": spread(r_onsets)}}, f)
  print(f"\nwrote {config.out_dir}/results.json and onset.png")


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "onset.py"),
      "Experiment config file.")
  app.run(main)
