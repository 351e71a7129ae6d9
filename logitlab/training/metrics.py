"""Observability: scalars to a progress bar, JSONL and TensorBoard.

``MetricsWriter`` is the one sink every trainer uses. ``metrics.jsonl`` (one JSON object per
``write``: ``{"step": ..., "time": ..., name: value, ...}``) is the machine-readable record
read by ``experiments/plot_runs.py`` and by tests; TensorBoard event files (tensorboardX, no
TensorFlow needed) sit in ``<workdir>/tb``. Only process 0 writes in a multi-host run.

On resume from step ``s`` the writer drops JSONL records with ``step > s`` (they were
written by the killed run after its last checkpoint and are recomputed identically) and
TensorBoard purges those steps, so a killed-and-resumed run leaves the same logs as an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping

import jax
import numpy as np
import tqdm


def _tensorboard_writer(logdir: str, purge_step: int):
  """A ``tensorboardX.SummaryWriter``, imported on first use.

  tensorboardX imports torch at import time when torch is installed (~9 s, only to accept
  torch tensors); we log Python floats, so torch is hidden from that one import unless it is
  already loaded.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
      import tensorboardX
    finally:
      del sys.modules["torch"]
  import tensorboardX
  return tensorboardX.SummaryWriter(logdir, purge_step=purge_step)


def optimizer_scalars(opt_state) -> dict[str, jax.Array]:
  """Every named scalar leaf of an optax state, as ``{"opt/<path>": float32}``.

  This is how the radius guard's normalized step ``r`` and capped-step count, or an
  ``inject_hyperparams`` learning rate, reach the logs without the loop knowing any
  optimizer: e.g. a chain ``(RadiusGuardState(r, num_capped), ScaleByAdamState(...))`` gives
  ``opt/0/r`` and ``opt/0/num_capped``. Integer ``count`` leaves are skipped (they duplicate
  the step).
  """
  scalars = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    if not hasattr(leaf, "shape") and not isinstance(leaf, (int, float, np.number)):
      raise TypeError(f"`opt_state` must be an optax state (a pytree of arrays), got a leaf "
                      f"of type {type(leaf).__name__} at {jax.tree_util.keystr(path) or 'root'}.")
    if not hasattr(leaf, "ndim") or leaf.ndim != 0:
      continue
    parts = []
    for key in path:
      if isinstance(key, jax.tree_util.GetAttrKey):
        parts.append(key.name)
      elif isinstance(key, jax.tree_util.DictKey):
        parts.append(str(key.key))
      elif isinstance(key, jax.tree_util.SequenceKey):
        parts.append(str(key.idx))
    if parts and parts[-1] == "count" and not jax.numpy.issubdtype(leaf.dtype, np.floating):
      continue
    scalars["opt/" + "/".join(parts)] = leaf.astype(np.float32)
  return scalars


def require_local_dir(workdir: str) -> None:
  """Raises unless ``workdir`` is a local (or mounted) path: logs are written with ``open``."""
  if "://" in workdir:
    raise ValueError(f"`workdir` must be a local or mounted directory (metrics are written "
                     f"with plain `open`), got {workdir!r}; put checkpoints on a URL with "
                     f"`train(checkpoint_dir=...)` instead.")


def batch_checksum(labels: jax.Array) -> jax.Array:
  """``sum_i (i + 1) * labels[i]`` as float32: an order-sensitive fingerprint of a batch.

  Logged as a metric (e.g. ``data/labels`` in ``experiments/train_classifier.py``), it lets
  ``metrics.jsonl`` alone show that a resumed or multi-host run saw the same examples in the
  same order at every step. Exact while the sum stays below 2**24 (labels < 1000 and batches
  up to ~180).
  """
  labels = jax.numpy.asarray(labels)
  if labels.ndim != 1 or not jax.numpy.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"`labels` must be a 1-D integer array, got {labels.dtype}{labels.shape}.")
  weights = jax.numpy.arange(1, labels.shape[0] + 1, dtype=jax.numpy.int32)
  return jax.numpy.sum(labels.astype(jax.numpy.int32) * weights).astype(jax.numpy.float32)


class MetricsWriter:
  """Writes scalars to tqdm, ``<workdir>/metrics.jsonl`` and TensorBoard.

  Args:
    workdir: run directory (created).
    total_steps: length of the progress bar.
    start_step: first step of this (possibly resumed) process; see module docstring.
    tensorboard: also write TensorBoard event files.
    progress: show a tqdm progress bar on stderr.
  """

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, progress: bool = True):
    require_local_dir(workdir)
    self.is_main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = self._bar = None
    if not self.is_main:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(start_step)
    if tensorboard:
      self._tb = _tensorboard_writer(os.path.join(workdir, "tb"), start_step)
    if progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(kept)

  def write(self, step: int, scalars: Mapping[str, float | jax.Array]) -> None:
    """Logs ``scalars`` (device scalars are fetched here, once per call) at ``step``."""
    if not self.is_main:
      return
    values = {name: float(v) for name, v in jax.device_get(dict(scalars)).items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, int(step))
    if self._bar is not None:
      shown = {k: f"{v:.4g}" for k, v in values.items() if "/" not in k or k.startswith("eval")}
      self._bar.set_postfix(shown, refresh=False)

  def write_hparams(self, config: Mapping[str, object]) -> None:
    """Records the run's flat config in TensorBoard (HParams and a ``config`` text)."""
    if self._tb is None:
      return
    hparams = {k: v for k, v in config.items()
               if isinstance(v, (int, float, str, bool)) and not k.startswith("state")}
    self._tb.add_text("config", "\n".join(f"    {k}: {v!r}" for k, v in sorted(config.items())))
    # A sub-run: a second writer in the same directory could pick the same event file name.
    self._tb.add_hparams(hparams, {}, name="hparams")

  def advance(self, steps: int = 1) -> None:
    """Moves the progress bar (call every step; cheap, no device sync)."""
    if self._bar is not None:
      self._bar.update(steps)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


def read_jsonl(path: str) -> list[dict]:
  """Records of a ``metrics.jsonl`` file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# Dense bf16 peak FLOP/s per chip (vendor figures), keyed by a substring of
# ``jax.Device.device_kind`` (checked in order). Unknown kinds (CPU) report no MFU.
PEAK_FLOPS = (
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12), ("TPU v4", 275e12),
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
)


def peak_flops(device: jax.Device) -> float | None:
  """The device's dense bf16 peak FLOP/s from ``PEAK_FLOPS``, or ``None`` if unknown."""
  return next((flops for kind, flops in PEAK_FLOPS if kind in device.device_kind), None)


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (partitioned, so per-device) program, from XLA's cost
  analysis; ``None`` where the backend gives none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


class Throughput:
  """Step time, examples/s and MFU between two log points (``perf/*`` metrics).

  The clock runs from the end of the first (compiling) step; ``pause``/``resume`` exclude
  evaluation and checkpoint waits. ``measure(step)`` must follow a device sync so that the
  interval covers finished steps (the loop reads ``nonfinite_steps`` first).
  """

  def __init__(self, *, examples_per_step: int, flops_per_step: float | None,
               peak_flops_per_device: float | None):
    if isinstance(examples_per_step, bool) or not isinstance(
        examples_per_step, (int, np.integer)) or examples_per_step < 1:
      raise ValueError(f"`examples_per_step` must be an int >= 1, got {examples_per_step!r}.")
    for name, value in (("flops_per_step", flops_per_step),
                        ("peak_flops_per_device", peak_flops_per_device)):
      if value is not None and not (isinstance(value, (int, float, np.number))
                                    and 0 < value < float("inf")):
        raise ValueError(f"`{name}` must be None or a finite number > 0, got {value!r}.")
    self.examples_per_step = examples_per_step
    self.flops, self.peak = flops_per_step, peak_flops_per_device
    self._start = self._step = None
    self._paused = 0.0

  def start(self, step: int) -> None:
    self._start, self._step, self._paused = time.perf_counter(), step, 0.0

  def pause(self) -> float:
    return time.perf_counter()

  def resume(self, paused_at: float) -> None:
    self._paused += time.perf_counter() - paused_at

  def measure(self, step: int) -> dict[str, float]:
    if self._start is None or step <= self._step:
      return {}
    seconds = (time.perf_counter() - self._start - self._paused) / (step - self._step)
    out = {"perf/step_time_s": seconds, "perf/examples_per_s": self.examples_per_step / seconds}
    if self.flops is not None:
      out["perf/tflops_per_device"] = self.flops / seconds / 1e12
      if self.peak is not None:
        out["perf/mfu"] = self.flops / seconds / self.peak
    self.start(step)
    return out
