"""Orbax checkpointing of the whole run: state, data position, config, integrity checksums.

A checkpoint at step ``s`` holds, as items of one ``ocp.CheckpointManager`` step:

* ``state``: the ``TrainState`` after ``s`` updates (``StandardSave``, sharded arrays);
* ``data``: the data iterator's state (``{"position": s}`` for ``data.ResumableBatches``);
* ``config``: the run's flat config (``run_config``), checked before a resume;
* ``integrity``: one checksum pair per state leaf (``integrity.inspect_tree``), computed on
  device before the save and verified after every restore.

Behaviour:

* periodic saves with keep-N (``save_interval_steps`` / ``max_to_keep``); asynchronous (the
  device->host copy happens before ``save`` returns, so donating the state is safe); a step
  directory becomes visible only once finalized, so a process killed mid-save leaves the
  previous checkpoint as the latest one.
* a state with a NaN or Inf leaf is never saved (``Diverged``), so keep-N never deletes the
  newest finite checkpoint in favour of a non-finite one.
* the directory is probed for writing at construction and step directories are created
  synchronously: unwritable storage raises ``CheckpointStorageError`` at once instead of
  leaving Orbax's background threads waiting for a directory that never appears (they would
  block interpreter exit for ``AsyncOptions.timeout_secs``, 20 minutes).
* ``restore_latest_intact`` walks the steps newest first; a step that fails to read (missing
  item, truncated file, bad JSON) or whose checksums differ is renamed ``<step>.damaged``
  (kept for inspection, invisible to Orbax) with a warning naming it, and the next older step
  is tried. No intact step: ``CheckpointCorruptError`` listing every step's problem.

Restore targets are ``jax.ShapeDtypeStruct`` trees with shardings (``state.abstract_state``),
so each host reads only its shards and the restored arrays land in the training sharding.
"""

from __future__ import annotations

import os
import uuid
import warnings
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath

from logitlab.training import integrity
from logitlab.training.faults import CheckpointCorruptError, CheckpointStorageError, Diverged

DAMAGED_SUFFIX = ".damaged"


class Restored(NamedTuple):
  step: int
  state: Any
  data: dict[str, Any]
  config: dict[str, Any]


class Checkpointer:
  """Periodic, asynchronous, keep-N, verified checkpoints of ``(state, data state, config)``.

  Args:
    directory: checkpoint root (created); a local path is made absolute (Orbax requires it),
      a URL such as ``gs://bucket/run/checkpoints`` is used as is.
    save_interval_steps: ``save`` writes only when ``step % save_interval_steps == 0``.
    max_to_keep: number of most recent checkpoints kept.
    async_save: write in a background thread.
    read_only: open for restoring only (no directory creation, no write probe).
  """

  def __init__(self, directory: str, *, save_interval_steps: int = 1000, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    for name, value in (("save_interval_steps", save_interval_steps),
                        ("max_to_keep", max_to_keep)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self.directory = epath.Path(directory)
    if not read_only:
      _probe_writable(self.directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def should_save(self, step: int) -> bool:
    """Whether ``save(step, ...)`` would write (interval, or a preemption sync point)."""
    return self.manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """Orbax's multi-host preemption sync point (True on every host at the same step)."""
    return self.manager.reached_preemption(step)

  def save(self, step: int, state, data_state: dict[str, Any], *,
           config: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves if ``step`` is on the interval (or ``force``); returns whether it saved.

    Raises:
      Diverged: ``state`` has a NaN or Inf leaf (nothing is written).
      CheckpointStorageError: the directory cannot be written.
    """
    if not (force or self.should_save(step)):
      return False
    digests, nonfinite = integrity.inspect_tree(state)
    if nonfinite:
      raise Diverged(step, f"Refusing to checkpoint step {step}: non-finite values in "
                           f"{', '.join(nonfinite[:5])}{' ...' if len(nonfinite) > 5 else ''}.")
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              config=ocp.args.JsonSave(dict(config or {})),
                              integrity=ocp.args.JsonSave({"checksums": digests}))
    try:
      return self.manager.save(step, args=args, force=True)
    except OSError as e:
      raise CheckpointStorageError(
          f"Cannot write checkpoint step {step} under {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def read_config(self, step: int) -> dict[str, Any]:
    """The ``config`` item of ``step`` (``{}`` for checkpoints written without one)."""
    if not (self.directory / str(step) / "config").exists():
      return {}
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(restored.config or {})

  def _restore_verified(self, abstract_state, step: int) -> Restored:
    config = self.read_config(step)
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    has_checksums = (self.directory / str(step) / "integrity").exists()
    if has_checksums:
      items["integrity"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if has_checksums:
      actual, _ = integrity.inspect_tree(restored.state)
      bad = integrity.compare(restored.integrity["checksums"], actual)
      if bad:
        raise CheckpointCorruptError(
            f"checksum mismatch in {len(bad)} array(s): {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}")
    else:
      warnings.warn(f"Checkpoint {step} in {self.directory} has no checksums (written before "
                    f"they existed); restored unverified.", stacklevel=3)
    return Restored(step, restored.state, dict(restored.data), config)

  def restore_latest_intact(self, abstract_state, *, check_config=None) -> Restored | None:
    """Restores the newest step that reads back intact; ``None`` if there is no checkpoint.

    Args:
      abstract_state: restore target (shapes, dtypes, shardings).
      check_config: ``fn(stored_config, step)`` called before a step's arrays are read; its
        exceptions (e.g. ``ConfigMismatchError``) propagate: a refused config is not damage.

    Raises:
      CheckpointCorruptError: checkpoints exist but none is intact.
    """
    problems = []
    for step in reversed(self.all_steps()):
      try:
        stored_config = self.read_config(step)
      except Exception as e:  # pylint: disable=broad-except  # any read failure is damage
        problems.append(self._set_aside(step, e))
        continue
      if check_config is not None:
        check_config(stored_config, step)
      try:
        return self._restore_verified(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except
        problems.append(self._set_aside(step, e))
    if problems:
      raise CheckpointCorruptError(
          f"No intact checkpoint in {self.directory}; every step is damaged "
          f"(renamed *{DAMAGED_SUFFIX}):\n" + "\n".join(problems))
    return None

  def _set_aside(self, step: int, error: Exception) -> str:
    problem = f"  step {step}: {type(error).__name__}: {str(error)[:300]}"
    warnings.warn(f"Checkpoint step {step} in {self.directory} is damaged and is set aside "
                  f"as {step}{DAMAGED_SUFFIX}; trying an older step. {problem.strip()}",
                  stacklevel=3)
    if jax.process_index() == 0:
      source = self.directory / str(step)
      target = self.directory / f"{step}{DAMAGED_SUFFIX}"
      while target.exists():
        target = self.directory / f"{step}{DAMAGED_SUFFIX}-{uuid.uuid4().hex[:6]}"
      source.rename(target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"logitlab_set_aside_{step}")
    self.manager.reload()
    return problem

  def restore_params(self, abstract: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Restores only some top-level fields of a saved ``TrainState`` (fine-tuning, teachers).

    Args:
      abstract: ``{field: abstract tree}``, e.g. ``{"params": abstract.params,
        "model_state": abstract.model_state}`` from this run's ``abstract_train_state``: the
        arrays land in its shardings; the other run's optimizer state is never read.
      step: default: the newest step.

    Raises:
      FileNotFoundError: no checkpoint. CheckpointCorruptError: checksums differ.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory} to initialize from.")
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    items = dict(state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                              partial_restore=True))
    has_checksums = (self.directory / str(step) / "integrity").exists()
    if has_checksums:
      items["integrity"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if has_checksums:
      # Saved paths are TrainState attributes (".params[...]"); ours are dict keys.
      actual = {f".{name[2:].replace(chr(39) + ']', '', 1)}": value for name, value in
                integrity.inspect_tree(restored.state)[0].items()}
      bad = [n for n in actual if restored.integrity["checksums"].get(n) != actual[n]]
      if bad:
        raise CheckpointCorruptError(f"Checkpoint step {step} in {self.directory}: checksum "
                                     f"mismatch in {', '.join(bad[:5])}.")
    return dict(restored.state)

  def restore(self, abstract_state, step: int | None = None
              ) -> tuple[Any, dict[str, Any]] | None:
    """``(state, data_state)`` of ``step`` (verified), or of the newest intact step.

    Returns ``None`` when there is no checkpoint (a fresh run). An explicit damaged ``step``
    raises ``CheckpointCorruptError`` (no fallback: the caller asked for that step).
    """
    if step is None:
      restored = self.restore_latest_intact(abstract_state)
      return None if restored is None else (restored.state, restored.data)
    try:
      restored = self._restore_verified(abstract_state, step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"Checkpoint step {step} in {self.directory} cannot be "
                                   f"read: {type(e).__name__}: {e}") from e
    return restored.state, restored.data

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    try:
      self.manager.wait_until_finished()
    except OSError as e:
      raise CheckpointStorageError(f"Writing a checkpoint under {self.directory} failed: "
                                   f"{e}") from e

  def close(self) -> None:
    self.manager.close()


def _probe_writable(directory: epath.Path) -> None:
  """Creates ``directory`` and writes/deletes a probe file there, or raises clearly."""
  probe = directory / f".write_probe_{jax.process_index()}_{uuid.uuid4().hex[:8]}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text("probe")
    probe.unlink()
  except OSError as e:
    raise CheckpointStorageError(
        f"Checkpoint directory {str(directory)!r} is not writable ({type(e).__name__}: {e}); "
        f"point `checkpoint_dir` (or `workdir`) at writable storage.") from e
