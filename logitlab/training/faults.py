"""What ends a run early, and how it tells the scheduler: exceptions and exit codes.

* SIGTERM / SIGINT, or Orbax's multi-host preemption sync point: ``Preempted`` (a
  ``SystemExit``), exit code ``EXIT_PREEMPTED`` = 75 (sysexits ``EX_TEMPFAIL``: restart me).
* non-finite loss, gradients or parameters with ``on_nonfinite="stop"``: ``Diverged``
  (uncaught: exit code 1, the message names the step).
* the checkpoint directory cannot be written: ``CheckpointStorageError`` (1).
* no intact checkpoint to resume from: ``CheckpointCorruptError`` (1).
* a resume whose config differs in fields not allowed to change: ``ConfigMismatchError`` (1).

``Preempted`` derives from ``SystemExit`` (as ``KeyboardInterrupt`` derives from
``BaseException``): a launcher needs no code for it, the process ends with 75 after the final
checkpoint is on disk, and a restart resumes from it. Catch it to do something else.

Signals: on one process, ``StopSignals`` turns SIGTERM and SIGINT into a flag that the loop
reads after each step. On several processes the hosts must agree on the step at which they
stop and save, so SIGTERM is left to JAX's preemption service (enabled by
``jax.distributed.initialize``; Orbax's ``reached_preemption`` returns True on every host at
the same step), and SIGINT is forwarded to it as a SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax

EXIT_PREEMPTED = 75


class Preempted(SystemExit):
  """The run stopped at ``step`` on a signal or preemption notice; the checkpoint is saved."""

  def __init__(self, step: int, reason: str):
    super().__init__(EXIT_PREEMPTED)
    self.step, self.reason = step, reason

  def __str__(self):
    return (f"stopped after step {self.step} ({self.reason}); checkpoint {self.step} saved; "
            f"exit code {EXIT_PREEMPTED}: rerun the same command to resume")


class Diverged(RuntimeError):
  """The loss, gradients or parameters became non-finite at ``step``."""

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


class CheckpointStorageError(OSError):
  """A checkpoint could not be written (read-only or missing storage, a file in the path)."""


class CheckpointCorruptError(RuntimeError):
  """Every checkpoint in the directory is damaged."""


class ConfigMismatchError(ValueError):
  """A resume whose config differs from the checkpoint's in fields not allowed to change."""


class StopSignals:
  """Context manager turning SIGTERM/SIGINT into ``requested`` (see module docstring).

  Handlers are installed only in the main thread (Python allows no other) and restored on exit.
  A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` as usual, so an
  impatient user can still abort.
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.signal_name: str | None = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def _forward_to_preemption_service(self, signum, frame):
    del signum, frame
    os.kill(os.getpid(), signal.SIGTERM)

  def __enter__(self):
    if not self.enabled or threading.current_thread() is not threading.main_thread():
      return self
    if jax.process_count() == 1:
      handlers = {signal.SIGTERM: self._handle, signal.SIGINT: self._handle}
    else:
      handlers = {signal.SIGINT: self._forward_to_preemption_service}
    for signum, handler in handlers.items():
      self._previous[signum] = signal.signal(signum, handler)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      with contextlib.suppress(ValueError, TypeError):
        signal.signal(signum, handler)
    self._previous.clear()
    return False
