"""The shared train loop: init-or-resume, step, log, evaluate, checkpoint.

Deliberately small: everything problem-specific comes in as functions (``model_fn``,
``loss_fn``, ``extra_args_fn``, ``eval_fn``, ``hooks``), the data as a ``ResumableBatches``
(or anything with ``__next__``/``get_state``/``set_state``). Resuming is automatic: if the
checkpoint directory (default ``<workdir>/checkpoints``) holds a checkpoint, the state and the
data position are restored from the latest one and training continues; since the batch at a
position and the per-step RNG are fixed, the continued run computes exactly what the
uninterrupted run would have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from logitlab.training import mesh as mesh_lib
from logitlab.training.checkpoint import Checkpointer
from logitlab.training.metrics import MetricsWriter, require_local_dir
from logitlab.training.state import TrainState, abstract_train_state, create_train_state
from logitlab.training.step import LossFn, StepContext, make_train_step


class TrainResult(NamedTuple):
  graphdef: nnx.GraphDef
  state: TrainState
  shardings: TrainState


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Sums ``eval_step`` outputs over ``batches`` and divides every sum by the ``count`` sum.

  ``eval_step`` (from ``step.make_eval_step``) returns per-batch sums and ``count``.
  """
  totals = None
  for batch in batches:
    sums = jax.device_get(eval_step(state, mesh_lib.put_batch(batch, mesh)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  if totals is None:
    raise ValueError("`batches` is empty.")
  count = max(float(totals.pop("count")), 1.0)
  return {name: float(value) / count for name, value in totals.items()}


def train(
    *,
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    train_data,
    mesh: jax.sharding.Mesh,
    workdir: str,
    num_steps: int,
    checkpoint_dir: str | None = None,
    seed: int = 0,
    log_every: int = 50,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    eval_every: int = 0,
    eval_fn: Callable[[nnx.GraphDef, TrainState], dict[str, float]] | None = None,
    extra_args_fn: Callable[[StepContext], dict[str, Any]] | None = None,
    hooks: Sequence[Callable[[int, TrainState], None]] = (),
    rules=mesh_lib.LOGICAL_AXIS_RULES,
    progress: bool = True,
) -> TrainResult:
  """Trains for ``num_steps`` optimizer steps (resuming from ``workdir`` when possible).

  Args:
    model_fn, tx, seed, rules: see ``state.create_train_state``.
    loss_fn, extra_args_fn: see ``step.make_train_step``.
    train_data: iterator of host-local batches with ``get_state``/``set_state``.
    mesh: from ``mesh.make_mesh``.
    workdir: local (or mounted) directory for ``metrics.jsonl`` and ``tb/`` (written by
      process 0), and ``checkpoints/`` unless ``checkpoint_dir`` is given.
    checkpoint_dir: Orbax checkpoint directory, e.g. ``gs://bucket/run/checkpoints`` on a
      multi-host pod slice (every host writes its shards there, so it must be shared);
      default ``<workdir>/checkpoints``.
    log_every: write train metrics every this many steps (and at the last step).
    checkpoint_every, keep_checkpoints: periodic save interval and keep-N.
    eval_every, eval_fn: ``eval_fn(graphdef, state) -> {name: value}`` logged as ``eval/name``
      every ``eval_every`` steps (0: only at the end) when given.
    hooks: ``hook(step, state)`` called after every step (e.g. to stop early, profile).
    progress: show a tqdm bar.

  Returns:
    ``TrainResult(graphdef, state, shardings)`` at ``num_steps``.
  """
  require_local_dir(workdir)  # before any checkpoint I/O
  checkpointer = Checkpointer(checkpoint_dir or os.path.join(workdir, "checkpoints"),
                              save_interval_steps=checkpoint_every,
                              max_to_keep=keep_checkpoints)
  if checkpointer.latest_step() is None:
    graphdef, state, shardings = create_train_state(model_fn, tx, mesh, seed=seed, rules=rules)
  else:
    graphdef, abstract, shardings = abstract_train_state(model_fn, tx, mesh, seed=seed,
                                                         rules=rules)
    state, data_state = checkpointer.restore(abstract)
    train_data.set_state(data_state)
    if jax.process_index() == 0:
      print(f"resumed from step {int(state.step)} ({workdir})", flush=True)
  train_step = make_train_step(graphdef, tx, loss_fn, shardings, mesh,
                               extra_args_fn=extra_args_fn)
  start_step = int(state.step)
  writer = MetricsWriter(workdir, total_steps=num_steps, start_step=start_step,
                         progress=progress)
  for step in range(start_step + 1, num_steps + 1):
    state, metrics = train_step(state, mesh_lib.put_batch(next(train_data), mesh))
    writer.advance()
    if step % log_every == 0 or step == num_steps:
      writer.write(step, metrics)
    if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == num_steps):
      writer.write(step, {f"eval/{k}": v for k, v in eval_fn(graphdef, state).items()})
    checkpointer.save(step, state, train_data.get_state(), force=step == num_steps)
    for hook in hooks:
      hook(step, state)
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  return TrainResult(graphdef, state, shardings)
