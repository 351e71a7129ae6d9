"""Per-device parameter and optimizer-state bytes under FSDP, against the ideal 1/fsdp.

Abstract states only (``training.abstract_train_state``: shapes and shardings, nothing
allocated), so it runs on 8 forced CPU devices in seconds. "rule" is the per-device size with
the library's shardings (logical names + ``mesh.fsdp_spec`` for every parameter of at least
``FSDP_MIN_BYTES``); "names only" is what the logical names alone gave before that rule
(``fsdp_min_bytes`` set beyond every parameter). Efficiency = reduction / fsdp.

Run:  python -m benchmarks.fsdp_memory [--fsdp 8] [--no-append]
"""
from __future__ import annotations

import argparse
import os

if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.core import spmd  # noqa: E402

from benchmarks.report import report  # noqa: E402
from logitlab import training  # noqa: E402
from logitlab.models import vision  # noqa: E402
from logitlab.training import mesh as mesh_lib  # noqa: E402
from logitlab.training import state as state_lib  # noqa: E402

MODELS = (("resnet18", 1000), ("deit_tiny", 1000), ("resnet32x4", 100), ("mobilenetv2", 1000))


def bytes_per_device(tree, shardings) -> int:
  return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                 for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def total_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def measure(name: str, num_classes: int, fsdp: int) -> dict:
  """Full and per-device bytes of params and Adam state, with and without the size rule."""
  mesh = training.make_mesh({"fsdp": fsdp})
  tx = optax.adam(1e-3)
  model_fn = lambda rngs: vision.build(name, num_classes, rngs=rngs)
  _, abstract, shardings = training.abstract_train_state(model_fn, tx, mesh)
  with jax.set_mesh(mesh), spmd.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
    names_only = state_lib.state_shardings(abstract, tx, mesh, fsdp_min_bytes=2**62)
  out = {"params": total_bytes(abstract.params), "opt": total_bytes(abstract.opt_state)}
  for label, sh in (("rule", shardings), ("names", names_only)):
    out[f"params_{label}"] = bytes_per_device(abstract.params, sh.params)
    out[f"opt_{label}"] = bytes_per_device(abstract.opt_state, sh.opt_state)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--fsdp", type=int, default=8)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  rows = []
  for name, num_classes in MODELS:
    m = measure(name, num_classes, args.fsdp)
    mb = lambda b: b / 2**20
    rows.append([name, mb(m["params"]), mb(m["params_names"]), mb(m["params_rule"]),
                 mb(m["params"] / args.fsdp), m["params"] / m["params_rule"],
                 m["params"] / m["params_rule"] / args.fsdp, mb(m["opt_rule"]),
                 m["opt"] / m["opt_rule"]])
  report(f"FSDP per-device parameter and Adam-state memory (fsdp={args.fsdp})",
         __spec__.name,
         ["model", "params MiB", "per device, names only", "per device, rule", "ideal",
          "reduction", "efficiency", "Adam state per device MiB", "Adam reduction"], rows,
         notes=f"Mesh `fsdp={args.fsdp}` of forced CPU devices; shapes and shardings only. "
               f"Rule: `training.mesh.fsdp_spec`, min size {mesh_lib.FSDP_MIN_BYTES} bytes. "
               f"Goal: efficiency >= 0.9 for ResNet-18 and ViT (DeiT-tiny).",
         append=not args.no_append)


if __name__ == "__main__":
  main()
