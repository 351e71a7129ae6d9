"""Build a pure ``logits_fn`` for :func:`logitlab.radius_guard` from a Flax NNX module.

``nnx.Optimizer.update(model, grads, **extra)`` forwards ``extra`` to ``tx.update`` with the
``wrt``-filtered parameter *State* as ``params``. The guard calls ``logits_fn(params)`` inside
``jax.jvp``, so the function must be a pure function of ``params``:

* The module's non-parameter state (BatchNorm statistics, RNG stream keys and counts, custom
  Variables, earlier ``sow`` outputs) is snapshotted as arrays when ``nnx_logits_fn`` is
  called (``nnx.split`` + ``nnx.as_pure``), i.e. after the gradient's forward of the step.
* Each call rebuilds a *fresh copy* of the module inside the caller's trace
  (``nnx.merge(..., copy=True)``) around the given parameters and that snapshot, runs the
  forward on the copy and returns its output only. A forward that writes Variables (a call
  counter, ``sow`` intermediates, auxiliary-loss collections, BatchNorm in train mode,
  Dropout drawing from an RNG stream) writes to the copy, which is dropped: the caller's
  module is bit-identical after the call and two calls with the same params agree.

Writing to the caller's own Variables from inside ``jax.jvp`` is what raised NNX's
``TraceContextError`` before (issue 12).

The copy is put in evaluation mode by default (BatchNorm running statistics, dropout off),
as the radius concerns the deterministic map (the paper's code measures in eval mode).

Linen is functional already; build the function from the variables dict (tested in
tests/test_radius_guard.py, recipe in docs/radius_guard.md)::

    rest = {k: v for k, v in variables.items() if k != "params"}
    logits_fn = lambda p: model.apply({"params": p, **rest}, x, train=False)
    # train-mode forward: pass `mutable=[...]`/`rngs=` and keep only the output:
    # lambda p: model.apply({"params": p, **rest}, x, train=True,
    #                       mutable=["batch_stats", "intermediates"], rngs={"dropout": k})[0]
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx


def nnx_logits_fn(
    model: nnx.Module,
    *inputs: Any,
    wrt: nnx.filterlib.Filter = nnx.Param,
    eval_mode: bool = True,
    forward: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Callable[[nnx.State], Any]:
  """Returns the pure function ``params_state -> logits`` of ``model(*inputs, **kwargs)``.

  Args:
    model: the NNX module being trained. It is never modified, neither here nor by the
      returned function.
    *inputs, **kwargs: the batch the radius is measured on (usually the training batch).
    wrt: the parameter filter the optimizer uses (``nnx.Optimizer(..., wrt=...)``).
    eval_mode: call ``module.eval()`` on the rebuilt copy (recommended). With ``False`` a
      train-mode forward runs on the copy (batch statistics, dropout from the snapshotted
      RNG streams, so every call draws the same mask).
    forward: optional ``(module, *inputs, **kwargs) -> logits`` when the logits are not the
      module's ``__call__`` output (e.g. a model returning a dict).
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  graphdef, _, rest = nnx.split(model, wrt, ...)
  rest = nnx.as_pure(rest)  # arrays, not the caller's live Variables
  call = forward if forward is not None else (lambda m, *a, **k: m(*a, **k))

  def logits_fn(params: nnx.State):
    # copy=True: new Variables owned by the current trace (jvp, jit, grad), so the forward
    # may write to them; nothing reaches the caller's module.
    module = nnx.merge(graphdef, params, rest, copy=True)
    if eval_mode:
      module.eval()
    return call(module, *inputs, **kwargs)

  return logits_fn
