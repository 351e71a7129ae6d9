"""LR-spike survival: plain Adam vs gradient clipping vs the radius guard on digits.

Reproduces the Ghosts-of-Softmax arch grid (arXiv 2603.13552) on scikit-learn's bundled
digits: prints a table of median final test accuracy and divergent runs per spike factor,
writes ``results.json`` and ``lr_spike.png`` (loss and normalized step r over steps).

Run:  python -m experiments.lr_spike                      (defaults: configs/lr_spike.py)
      python -m experiments.lr_spike --config=experiments/configs/lr_spike_paper.py
      python -m experiments.lr_spike --config.seeds=5 --config.batch_size=0
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import logging
from ml_collections import config_flags
from tqdm import tqdm

from experiments import digits_trainer as dt
from logitlab import datasets


def run_grid(config, data, arch: str, method: str):
  """All (spike factor x seed) runs of one architecture and method in one jit.

  Returns ``{factors, losses, ratios, test_loss, test_acc}``; arrays are ``[factor, seed, ...]``
  (``losses``/``ratios`` per step).
  """
  x_train, y_train, x_test, y_test = data
  factors = np.asarray(dt.csv_list(config.spike_factors, float), np.float32)
  seeds = np.arange(config.seeds)
  model = dt.functional_model(arch)
  params, rest = dt.stack_inits(model, seeds)

  def one(params, rest, factor, seed):
    lr = dt.spiked_schedule(config.learning_rate, factor, config.spike_step,
                            config.spike_length)
    tx = dt.make_optimizer(method, lr, clip_norm=config.clip_norm, max_ratio=config.max_ratio)
    params, rest, losses, ratios = dt.train_run(
        model, tx, params, rest, (x_train, y_train), steps=config.steps,
        batch_size=config.batch_size, key=jax.random.key(seed))
    test_loss, test_acc = dt.evaluate(model, params, rest, x_test, y_test)
    return losses, ratios, test_loss, test_acc

  over_seeds = jax.vmap(one, in_axes=(0, 0, None, 0))
  over_grid = jax.jit(jax.vmap(over_seeds, in_axes=(None, None, 0, None)))
  losses, ratios, test_loss, test_acc = jax.tree.map(
      np.asarray, over_grid(params, rest, jnp.asarray(factors), jnp.asarray(seeds)))
  return dict(factors=factors.tolist(), losses=losses, ratios=ratios, test_loss=test_loss,
              test_acc=test_acc)


def summarize(config, results):
  """Table rows: arch, method, then 'median acc (divergent/seeds)' per factor."""
  rows = []
  for (arch, method), r in results.items():
    cells = []
    for i, _ in enumerate(r["factors"]):
      acc = np.asarray(r["test_acc"][i])
      final = np.asarray(r["losses"][i])[:, -1]
      divergent = int(np.sum(~np.isfinite(final) | (final > config.divergence_loss)))
      cells.append(f"{100 * np.median(acc):5.1f} ({divergent}/{len(acc)})")
    rows.append([arch, method, *cells])
  return rows


def plot(config, results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  archs = dt.csv_list(config.architectures)
  fig, axes = plt.subplots(2, len(archs), figsize=(3.6 * len(archs), 6), squeeze=False)
  for j, arch in enumerate(archs):
    for method in dt.csv_list(config.methods):
      r = results[(arch, method)]
      i = int(np.argmax(r["factors"]))  # the largest spike
      steps = np.arange(1, config.steps + 1)
      axes[0, j].plot(steps, np.nanmedian(np.asarray(r["losses"][i]), 0), label=method)
      axes[1, j].plot(steps, np.nanmedian(np.asarray(r["ratios"][i]), 0), label=method)
    axes[0, j].set(title=f"{arch}, spike x{r['factors'][i]:g}", yscale="log",
                   ylabel="train loss (median)")
    axes[1, j].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1, j].set(yscale="log", xlabel="step", ylabel="r of proposed step")
    axes[0, j].axvline(config.spike_step, color="gray", lw=0.6)
    axes[1, j].axvline(config.spike_step, color="gray", lw=0.6)
  axes[0, 0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # absl would print JAX's backend probing at INFO
  config = _CONFIG.value
  os.makedirs(config.out_dir, exist_ok=True)
  data = tuple(jnp.asarray(a) for a in datasets.digits())
  combos = [(a, m) for a in dt.csv_list(config.architectures) for m in dt.csv_list(config.methods)]
  results = {}
  start = time.time()
  for arch, method in tqdm(combos, desc="arch x method grids", unit="grid"):
    results[(arch, method)] = run_grid(config, data, arch, method)
  elapsed = time.time() - start
  header = ["arch", "method", *[f"x{f:g}" for f in dt.csv_list(config.spike_factors, float)]]
  table = dt.text_table(header, summarize(config, results))
  print(f"\nMedian final test accuracy % (divergent runs / seeds), {config.steps} steps, "
        f"lr {config.learning_rate}, spike at step {config.spike_step} for "
        f"{config.spike_length} step(s); {elapsed:.0f}s on {jax.default_backend()}\n")
  print(table)
  plot(config, results, os.path.join(config.out_dir, "lr_spike.png"))
  serializable = {
      f"{a}/{m}": {k: (np.asarray(v).tolist() if k != "factors" else v) for k, v in r.items()}
      for (a, m), r in results.items()}
  with open(os.path.join(config.out_dir, "results.json"), "w") as f:
    json.dump({"config": config.to_dict(), "table": table, "runs": serializable}, f)
  print(f"\nwrote {config.out_dir}/results.json and lr_spike.png")


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "lr_spike.py"),
      "Experiment config file.")
  app.run(main)
