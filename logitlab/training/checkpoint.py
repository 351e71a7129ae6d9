"""Orbax checkpointing of the whole run: state + data-iterator position.

A checkpoint at step ``s`` holds the ``TrainState`` after ``s`` updates (params, optimizer
state, model state, RNG key, step) and the data iterator's state (``{"position": s}`` for
``data.ResumableBatches``), saved with ``ocp.CheckpointManager``:

* ``save_interval_steps`` / ``max_to_keep`` give periodic saves with keep-N;
* saves are asynchronous (training continues while a background thread writes; the
  device->host copy happens before ``save`` returns, so donating the state is safe);
* a checkpoint directory becomes visible only after it is finalized, so a process killed
  mid-save leaves the previous checkpoint as the latest one.

Restore targets are ``jax.ShapeDtypeStruct`` trees with shardings (``state.abstract_state``),
so each host reads only its shards and the restored arrays land in the training sharding.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from logitlab.training.state import TrainState


class Checkpointer:
  """Periodic, asynchronous, keep-N checkpoints of ``(TrainState, data state)``.

  Args:
    directory: checkpoint root (created); a local path is made absolute (Orbax requires it),
      a URL such as ``gs://bucket/run/checkpoints`` is used as is.
    save_interval_steps: ``save`` writes only when ``step % save_interval_steps == 0``.
    max_to_keep: number of most recent checkpoints kept.
    async_save: write in a background thread.
  """

  def __init__(self, directory: str, *, save_interval_steps: int = 1000, max_to_keep: int = 3,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=True)
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(directory, options=options)

  def save(self, step: int, state: TrainState, data_state: dict[str, Any], *,
           force: bool = False) -> bool:
    """Saves if ``step`` is on the interval (or ``force``); returns whether it saved."""
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)), force=force)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state: TrainState,
              step: int | None = None) -> tuple[TrainState, dict[str, Any]] | None:
    """Restores ``step`` (default: latest) into ``abstract_state``'s shapes and shardings.

    Returns ``None`` when there is no checkpoint (a fresh run).
    """
    step = self.manager.latest_step() if step is None else step
    if step is None:
      return None
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return restored.state, dict(restored.data)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
