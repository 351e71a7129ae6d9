"""Paired differences (with standard errors) between held-out evaluations of the demos.

Every demo evaluates all its models on the same problems and sampling key (common random
numbers, ``config.eval_seed``), and records per-problem correct counts
(``correct_per_problem``: c_i of k samples). The paired per-problem differences give

  Pass@1:  d_i = (c_i^A - c_i^B) / k,          Pass@k:  d_i = [c_i^A > 0] - [c_i^B > 0],
  diff = mean_i d_i,   SE = std_i(d_i, ddof 1) / sqrt(n),

(Pass@k with k = the number of samples per problem). The SE covers the problem draw and the
sampling of these k completions; two *training seeds* evaluated on the same draws are not
independent replications of the evaluation noise.

Run:  python -m experiments.compare_evals experiments/results/grpo/results.json \
        sft grpo.discrete_eval soft_grpo.discrete_eval
"""
from __future__ import annotations

import json
import sys

import numpy as np


def lookup(results: dict, path: str) -> dict:
  for part in path.split("."):
    results = results[part]
  return results


def paired(a: dict, b: dict, k: int) -> dict[str, float]:
  """Paired differences A - B of Pass@1 and Pass@k with standard errors (module doc)."""
  ca, cb = np.asarray(a["correct_per_problem"]), np.asarray(b["correct_per_problem"])
  if ca.shape != cb.shape:
    raise ValueError(f"Evaluations on different problems: {ca.shape} vs {cb.shape}.")
  out = {}
  for name, d in (("pass@1", (ca - cb) / k), (f"pass@{k}", (ca > 0).astype(float) - (cb > 0))):
    out[name] = float(d.mean())
    out[f"{name}_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
  return out


def main(argv: list[str]) -> None:
  path, base, *others = argv
  results = json.loads(open(path).read())
  k = results["config"]["eval_k"]
  ref = lookup(results, base)
  for other in others:
    diff = paired(lookup(results, other), ref, k)
    print(f"{other} - {base}: " + ", ".join(
        f"{n} {100 * diff[n]:+.1f} (SE {100 * diff[n + '_se']:.1f}, "
        f"{diff[n] / max(diff[n + '_se'], 1e-12):+.1f} SE)" for n in ("pass@1", f"pass@{k}")))


if __name__ == "__main__":
  main(sys.argv[1:])
