"""Collapse onset vs normalized step r (Ghosts of Softmax, arXiv 2603.13552).

Prints the first r at which one step makes the training loss exceed `threshold` x its
value, per architecture and direction (paper: no failure below r = 1, onsets in [1, 10]),
and the temperature experiment: the spread (std of log10) of the onset measured in raw
step length tau vs in r = tau / rho_a with rho_a = pi T / Delta_a (paper: 0.992 vs 0.164).

An onset is the first of `num_r` grid points to cross the threshold, so a single run moves
by a grid step with tiny changes (training length, float rounding): every number is reported
as a distribution over `seeds` x `train_steps` (several training lengths, snapshots of one
run per seed). The run is deterministic (seeded; tests/test_onset_experiment.py).

Run:  python -m experiments.onset
"""

from __future__ import annotations

import functools
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


def training_lengths(config) -> list[int]:
  lengths = sorted(dt.csv_list(config.train_steps, int))
  if not lengths or lengths[0] < 1:
    raise ValueError(f"`train_steps` must list positive step counts, got {config.train_steps!r}.")
  return lengths


@functools.lru_cache(maxsize=None)
def _programs(arch: str, learning_rate: float, segment: int, names: tuple[str, ...]):
  """Jitted programs for one architecture, cached so that every seed set, training length and
  temperature reuses one compilation (data, temperature and the r grid are arguments)."""
  model = dt.functional_model(arch)
  tx = optax.adam(learning_rate)

  def one_step(carry, _, data, temperature):
    params, rest, state = carry
    x_train, y_train = data
    def loss_fn(p):
      logits, new_rest = model.forward(p, rest, x_train, train=True)
      return dt.cross_entropy(logits / temperature, y_train), new_rest
    grads, rest = jax.grad(loss_fn, has_aux=True)(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), rest, state), None

  def run_segment(carry, data, temperature):
    step = functools.partial(one_step, data=data, temperature=temperature)
    return jax.lax.scan(step, carry, None, segment)[0]

  def curves(params, rest, seed, data, temperature, rs):
    dirs = directions(model, params, rest, data, temperature, seed)
    return {n: loss_ratio_curve(model, params, rest, data, dirs[n], temperature, rs)
            for n in names}

  over_seeds = jax.vmap(curves, in_axes=(0, 0, 0, None, None, None))
  return (model, jax.jit(jax.vmap(tx.init)),
          jax.jit(jax.vmap(run_segment, in_axes=(0, None, None))),
          jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, None, None, None, None))))


def curves_for(config, arch, data, names, temperature=1.0):
  """Full-batch Adam with loss CE(softmax(z / T)) for every seed at once (vmapped), then the
  loss-ratio curves from the state after each of ``config.train_steps`` steps (one run per
  seed, snapshotted: the lengths differ only by the extra steps).

  Returns the r grid, curves ``{direction: [num_lengths, num_seeds, num_r]}`` and the raw step
  length per unit r ``{direction: [num_lengths, num_seeds]}``.
  """
  seeds = dt.csv_list(config.seeds, int)
  lengths = training_lengths(config)
  segment = int(np.gcd.reduce(lengths))
  model, init_opt, run_segment, curves = _programs(arch, float(config.learning_rate), segment,
                                                   tuple(names))
  params, rest = dt.stack_inits(model, seeds)
  temperature = jnp.float32(temperature)
  carry = (params, rest, init_opt(params))
  snapshots, done = [], 0
  for length in lengths:
    while done < length:
      carry = run_segment(carry, data, temperature)
      done += segment
    snapshots.append(carry[:2])
  params, rest = jax.tree.map(lambda *xs: jnp.stack(xs), *snapshots)
  rs = jnp.geomspace(config.r_min, config.r_max, config.num_r)
  out = curves(params, rest, jnp.asarray(seeds), data, temperature, rs)
  return np.asarray(rs), {n: np.asarray(v[0]) for n, v in out.items()}, {
      n: np.asarray(v[1]) for n, v in out.items()}


def directions(model, params, rest, data, temperature, seed):
  """Descent direction of the gradient, the first Adam step (~ -sign g), and a random one."""
  x, y = data
  loss = lambda p: dt.cross_entropy(model.forward(p, rest, x, train=False)[0] / temperature, y)
  grads = jax.grad(loss)(params)
  adam = optax.adam(1.0)
  adam_step, _ = adam.update(grads, adam.init(params), params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), seed), len(leaves))
  random = jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape) for k, l in
                                        zip(keys, leaves)])
  return {"gradient": jax.tree.map(jnp.negative, grads), "adam": adam_step, "random": random}


def loss_ratio_curve(model, params, rest, data, direction, temperature, rs):
  """Loss ratio at steps of normalized size ``rs`` along ``direction``, and the raw step
  length tau per unit r."""
  x, y = data
  logits_fn = lambda p: model.forward(p, rest, x, train=False)[0]
  _, tangent = logitlab.directional_logits(logits_fn, params, direction)
  r_unit = logitlab.normalized_step(tangent, temperature=temperature).ratio
  norm = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(direction)))
  loss = lambda p: dt.cross_entropy(logits_fn(p) / temperature, y)
  base = loss(params)

  def at(r):
    step = jax.tree.map(lambda d: d * (r / r_unit), direction)
    return loss(optax.apply_updates(params, step)) / base

  return jax.lax.map(at, rs), norm / r_unit


def first_crossing(rs, ratios, threshold):
  bad = np.nonzero(~np.isfinite(ratios) | (ratios > threshold))[0]
  return float(rs[bad[0]]) if bad.size else float("inf")


def onsets_of(rs, curves, threshold):
  """First crossing per curve: ``[..., num_r] -> [...]``."""
  flat = curves.reshape(-1, curves.shape[-1])
  return np.array([first_crossing(rs, c, threshold) for c in flat]).reshape(curves.shape[:-1])


def std_log10(values) -> float:
  values = np.asarray(values)
  return float(np.std(np.log10(values))) if np.all(np.isfinite(values)) else float("nan")


def summary(values) -> str:
  """``median [min, max]`` of finite values, with the count of infinite ones."""
  values = np.asarray(values, float).ravel()
  finite = values[np.isfinite(values)]
  text = (f"{np.median(finite):.3g} [{finite.min():.3g}, {finite.max():.3g}]" if finite.size
          else "-")
  return text + (f" ({values.size - finite.size} none)" if finite.size < values.size else "")


def run(config, data):
  """All onsets: ``{"onsets": {arch/dir: [L, S]}, "temperature": {...}, "curves": ...}``.

  Deterministic: every random draw comes from ``config.seeds``, and the same program runs
  on the same inputs (tested by running it twice).
  """
  names = dt.csv_list(config.directions)
  onsets, curves = {}, {}
  for arch in tqdm(dt.csv_list(config.architectures), desc="architectures"):
    rs, arch_curves, _ = curves_for(config, arch, data, names)
    for name in names:
      onsets[f"{arch}/{name}"] = onsets_of(rs, arch_curves[name], config.threshold)
      curves[f"{arch}/{name}"] = arch_curves[name][0, 0]  # first length, first seed (plot)
  temperatures = dt.csv_list(config.temperatures, float)
  r_on, tau_on = [], []
  for temperature in tqdm(temperatures, desc="temperatures"):
    rs, t_curves, tau_per_r = curves_for(config, config.temperature_arch, data, ["gradient"],
                                         temperature)
    r = onsets_of(rs, t_curves["gradient"], config.threshold)
    r_on.append(r)
    tau_on.append(r * tau_per_r["gradient"])
  r_on, tau_on = np.stack(r_on, -1), np.stack(tau_on, -1)  # [L, S, num_T]
  per_run = lambda v: np.array([[std_log10(v[i, j]) for j in range(v.shape[1])]
                                for i in range(v.shape[0])])
  return {"rs": rs, "onsets": onsets, "curves": curves,
          "temperature": {"temperatures": temperatures, "onset_r": r_on, "onset_tau": tau_on,
                          "std_log10_r": per_run(r_on), "std_log10_tau": per_run(tau_on)}}


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


def to_json(value):
  if isinstance(value, dict):
    return {k: to_json(v) for k, v in value.items()}
  if isinstance(value, (np.ndarray, list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, (str, bool, int)) or value is None:
    return value
  value = float(value)
  return value if np.isfinite(value) else str(value)  # JSON has no inf


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  os.makedirs(config.out_dir, exist_ok=True)
  x_train, y_train, _, _ = (jnp.asarray(a) for a in datasets.digits())
  result = run(config, (x_train, y_train))
  names = dt.csv_list(config.directions)
  seeds, lengths = dt.csv_list(config.seeds, int), training_lengths(config)
  rows = [[a, *[summary(result["onsets"][f"{a}/{d}"]) for d in names]]
          for a in dt.csv_list(config.architectures)]
  print(f"\nFirst r with loss ratio > {config.threshold}, median [min, max] over seeds "
        f"{seeds} x training lengths {lengths}:\n")
  print(dt.text_table(["arch", *names], rows))
  every = np.concatenate([v.ravel() for v in result["onsets"].values()])
  print(f"\nonsets below r = 1: {int(np.sum(every < 1))} of {every.size}; min "
        f"{np.min(every):.3g} (paper: no failure for r < 1, onsets between 1 and 10)")
  t = result["temperature"]
  print(f"\nTemperature sweep ({config.temperature_arch}, gradient direction, T = "
        f"{t['temperatures']}): std of log10 onset over T, per (seed, length):")
  print(f"  raw tau {summary(t['std_log10_tau'])}   r {summary(t['std_log10_r'])}   "
        f"(paper: 0.992 vs 0.164)")
  plot({tuple(k.split("/")): (result["rs"], v) for k, v in result["curves"].items()},
       config.threshold, os.path.join(config.out_dir, "onset.png"))
  with open(os.path.join(config.out_dir, "results.json"), "w") as f:
    json.dump(to_json({"config": config.to_dict(), **result}), f)
  print(f"\nwrote {config.out_dir}/results.json and onset.png")


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "onset.py"),
      "Experiment config file.")
  app.run(main)
