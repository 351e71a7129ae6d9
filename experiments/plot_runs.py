"""Plots ``metrics.jsonl`` of one or more runs (``logitlab.training.MetricsWriter``) to a PNG.

One panel per key, one line per run (labelled by its directory name); steps without a key
(e.g. eval records between train records) are skipped, so train and eval keys mix freely.

Run:  python -m experiments.plot_runs experiments/out/classifier_digits \
          --keys loss eval/accuracy opt/ratio --out experiments/out/classifier_digits.png
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from logitlab.training import read_jsonl  # noqa: E402


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """``(steps, values)`` of ``key`` over the records that have it."""
  points = [(r["step"], r[key]) for r in records if key in r]
  return [s for s, _ in points], [v for _, v in points]


def plot_runs(run_dirs: list[str], keys: list[str], out: str, *, log_y: bool = False) -> str:
  runs = {os.path.basename(os.path.normpath(d)): read_jsonl(os.path.join(d, "metrics.jsonl"))
          for d in run_dirs}
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for index, (name, records) in enumerate(runs.items()):
      steps, values = series(records, key)
      if steps:  # one color per run across panels
        ax.plot(steps, values, color=f"C{index}", marker="." if len(steps) < 30 else None,
                label=name)
    ax.set_title(key)
    ax.set_xlabel("step")
    if log_y:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc="upper right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dirs", nargs="+", help="run directories holding metrics.jsonl")
  parser.add_argument("--keys", nargs="+", default=["loss", "eval/accuracy"])
  parser.add_argument("--out", default="runs.png")
  parser.add_argument("--log_y", action="store_true")
  args = parser.parse_args()
  print(plot_runs(args.run_dirs, args.keys, args.out, log_y=args.log_y))


if __name__ == "__main__":
  main()
