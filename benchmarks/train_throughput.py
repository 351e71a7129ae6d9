"""Throughput metrics of the training loop (``perf/*``), side by side in one process.

Trains resnet8 on synthetic CIFAR-shaped data through ``training.train`` and reads the loop's
own ``perf/step_time_s``, ``perf/examples_per_s`` and ``perf/tflops_per_device`` (XLA's cost
analysis of the partitioned step) from ``metrics.jsonl``: float32 vs bf16 compute on one
device, and the same model on an ``fsdp=8`` mesh. ``perf/mfu`` is reported on accelerators
with a known peak (``training.metrics.PEAK_FLOPS``); on CPU it is absent. Speed is a ratio to
the first row; on a CPU (forced 8 devices share the cores) the fsdp row measures overhead only.

Run:  python -m benchmarks.train_throughput [--steps 30] [--batch 64] [--no-append]
"""
from __future__ import annotations

import argparse
import os
import tempfile

if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.report import report  # noqa: E402
from logitlab import losses, training  # noqa: E402
from logitlab.models import vision  # noqa: E402


def _loss_fn(model, batch, rng):
  del rng
  return losses.cross_entropy(model(batch["image"], train=True), batch["label"]), {}


def run(mesh_shape, compute_dtype, steps, batch, devices=None):
  rng = np.random.default_rng(0)
  n = batch * 4
  source = training.ArraySource(image=rng.normal(size=(n, 32, 32, 3)).astype(np.float32),
                                label=rng.integers(0, 10, n).astype(np.int32))
  with tempfile.TemporaryDirectory() as workdir:
    training.train(
        model_fn=lambda rngs: vision.build("resnet8", 10, rngs=rngs),
        tx=optax.sgd(0.1, momentum=0.9), loss_fn=_loss_fn,
        train_data=training.ResumableBatches(source, global_batch_size=batch, seed=0,
                                             num_threads=1),
        mesh=training.make_mesh(mesh_shape, devices), workdir=workdir, num_steps=steps,
        log_every=steps // 3, checkpoint_every=10 * steps, progress=False,
        compute_dtype=compute_dtype, handle_signals=False)
    records = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  perf = [r for r in records if "perf/step_time_s" in r][1:]  # drop the warm-up interval
  return {k: float(np.median([r[k] for r in perf])) for k in perf[0] if k.startswith("perf/")}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  cases = [("1 device, float32", {"data": 1}, None, jax.devices()[:1]),
           ("1 device, bf16 compute", {"data": 1}, jnp.bfloat16, jax.devices()[:1]),
           (f"fsdp={len(jax.devices())}, float32", {"fsdp": -1}, None, None)]
  rows, base = [], None
  for label, shape, dtype, devices in cases:
    perf = run(shape, dtype, args.steps, args.batch, devices)
    base = base or perf["perf/step_time_s"]
    rows.append([label, 1e3 * perf["perf/step_time_s"], perf["perf/examples_per_s"],
                 perf.get("perf/tflops_per_device", float("nan")),
                 perf.get("perf/mfu", "n/a (no peak for this device)"),
                 base / perf["perf/step_time_s"]])
  report("Training-loop throughput metrics (resnet8, synthetic 32x32, SGD)", __spec__.name,
         ["setting", "step ms", "examples/s", "TFLOP/s per device", "MFU",
          "speed vs row 1"], rows,
         notes=f"Global batch {args.batch}, {args.steps} steps, medians of the loop's own "
               f"`perf/*` log records after the first interval (`log_every={args.steps // 3}`). "
               f"On a CPU shared with other jobs the ratios are noisy (forced devices share the "
               f"cores); the rows check that the metrics and the bf16 policy work, they are not "
               f"accelerator speed claims.",
         append=not args.no_append)


if __name__ == "__main__":
  main()
