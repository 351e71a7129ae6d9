"""Build a ``logits_fn`` for :func:`logitlab.radius_guard` from a Flax NNX module.

``nnx.Optimizer.update(model, grads, **extra)`` forwards ``extra`` to ``tx.update`` with the
``wrt``-filtered parameter *State* as ``params``. The guard calls ``logits_fn(params)`` inside
``jax.jvp``, so the function must rebuild the module from that state: split once into
``(graphdef, params, rest)`` and merge with the traced params. The rebuilt module is put in
evaluation mode (BatchNorm running statistics, dropout off), as the radius concerns the
deterministic map, and it is a fresh copy, so nothing in the caller's module is mutated.

For linen, write it directly:
``logits_fn = lambda p: model.apply({"params": p, **other_collections}, x, train=False)``.
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
  """Returns ``params_state -> logits`` for ``model(*inputs, **kwargs)``.

  Args:
    model: the NNX module being trained.
    *inputs, **kwargs: the batch the radius is measured on (usually the training batch).
    wrt: the parameter filter the optimizer uses (``nnx.Optimizer(..., wrt=...)``).
    eval_mode: call ``module.eval()`` on the rebuilt copy (recommended).
    forward: optional ``(module, *inputs, **kwargs) -> logits`` when the logits are not the
      module's ``__call__`` output (e.g. a model returning a dict).
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  graphdef, _, rest = nnx.split(model, wrt, ...)
  call = forward if forward is not None else (lambda m, *a, **k: m(*a, **k))

  def logits_fn(params: nnx.State):
    module = nnx.merge(graphdef, params, rest)  # new Variable objects: the caller's are untouched
    if eval_mode:
      module.eval()
    return call(module, *inputs, **kwargs)

  return logits_fn
