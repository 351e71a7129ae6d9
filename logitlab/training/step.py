"""Jitted, sharded train and eval steps built from a user loss.

A step is ``jax.jit`` with explicit ``in_shardings``/``out_shardings`` (the state's sharding
tree and ``mesh.batch_sharding``) and the state donated, so parameters and optimizer state are
updated in place on every device. The same function runs on 1 CPU, 8 fake CPU devices, a GPU
box or a TPU pod slice; only the mesh changes. On a mesh with Explicit axes (the
``jax.make_mesh`` default) the body runs with those axes switched to Auto
(``mesh.auto_axes``): the model and the loss are traced as on an Auto mesh, and the state
and metrics come back with the mesh's shardings.

Optimizers that need more than gradients (optax ``GradientTransformationExtraArgs``: the
radius guard's ``logits_fn=``, a line search's ``value_fn=``) get their keyword arguments from
``extra_args_fn(ctx)``, called inside the step with a ``StepContext``.

Non-finite steps: if the loss, any gradient or any updated parameter is NaN or Inf, the update
is not applied (parameters, optimizer and model state keep their values) and
``state.nonfinite_steps`` grows by one. ``on_nonfinite="skip"`` then moves on to the next batch
(the step counter and RNG advance; big_vision/optax ``apply_if_finite`` semantics);
``on_nonfinite="stop"`` freezes the whole state, step counter included, from that step on, so
the loop (which reads ``nonfinite_steps`` at log and save steps, big_vision-style, instead of
syncing every step) raises ``faults.Diverged`` naming step ``state.step + 1`` and the state
it holds is the last finite one.

Gradient accumulation (``grad_accum_steps=k``): the global batch of ``B`` examples is split
into ``k`` micro-batches of ``B / k`` (micro-batch ``i`` holds examples ``i, i + k, i + 2k,
...``, so each one stays spread over every device of the batch axes) and ``lax.scan`` runs
forward + backward on one micro-batch at a time, summing the float32 gradients; the update
uses their mean, which is the full-batch gradient of a per-example mean loss (activation
memory of one micro-batch). Model state (BatchNorm statistics, RNG counts) is carried from
one micro-batch to the next, as ``k`` small batches would update it; ``loss`` and the
``loss_fn`` metrics are the means over micro-batches; micro-batch ``i`` gets the key
``fold_in(step_rng, i)``. With the radius guard, :func:`radius_guard_args` caps the
accumulated update on *every* micro-batch (``logitlab.batched_radius``: one JVP per
micro-batch, again one micro-batch in memory at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

import jax.numpy as jnp

from logitlab import batched_radius
from logitlab.training import mesh as mesh_lib
from logitlab.training import remat
from logitlab.training.integrity import all_finite
from logitlab.training.metrics import optimizer_scalars
from logitlab.training.state import TrainState

Batch = Mapping[str, jax.Array]
# loss_fn(model, batch, rng) -> (scalar loss, {name: scalar metric}).
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
ON_NONFINITE = ("stop", "skip")


class StepContext(NamedTuple):
  """What ``extra_args_fn`` may use to build optimizer extra args.

  Attributes:
    to_model: ``params -> nnx.Module``; rebuilds the module around (possibly perturbed)
      parameters, e.g. ``logits_fn = lambda p: ctx.to_model(p)(ctx.batch["image"])``.
    batch: the global batch of this step.
    rng: typed PRNG key of this step (the one ``loss_fn`` received).
    loss: the loss at the current parameters.
    grads: gradients of ``loss`` w.r.t. the parameters (an ``nnx.State``).
    micro_batches: with ``grad_accum_steps=k > 1``, the batch as ``k`` micro-batches (every
      leaf ``[k, B / k, ...]``, the split the gradients were accumulated over); else ``None``.
    params: the parameters of this step (the point the update is applied at).
  """
  to_model: Callable[[nnx.State], nnx.Module]
  batch: Batch
  rng: jax.Array
  loss: jax.Array
  grads: nnx.State
  micro_batches: Batch | None = None
  params: nnx.State | None = None


def radius_guard_args(
    logits_fn: Callable[[nnx.Module, Batch], jax.Array],
) -> Callable[[StepContext], dict[str, Any]]:
  """``extra_args_fn`` for ``logitlab.radius_guard`` that caps against every micro-batch.

  Args:
    logits_fn: ``(model, batch) -> logits [b, ..., K]`` in eval mode, e.g.
      ``lambda model, batch: model(batch["image"], train=False)``.

  Returns:
    ``ctx -> {"logits_fn": ...}`` without accumulation (one JVP over the batch), and with
    ``grad_accum_steps=k > 1`` ``ctx -> {"logits_spread": ...}`` from
    ``batched_radius.microbatch_spread_fn``: the spreads of the accumulated update on each
    of the ``k`` micro-batches, one JVP per micro-batch (memory of one micro-batch), so the
    applied update has ``r <= max_ratio`` on every one of them.
  """
  if not callable(logits_fn):
    raise ValueError(f"`logits_fn` must be a callable `(model, batch) -> logits`, got "
                     f"{logits_fn!r}.")

  def extra_args_fn(ctx: StepContext) -> dict[str, Any]:
    if ctx.micro_batches is None:
      return {"logits_fn": lambda params: logits_fn(ctx.to_model(params), ctx.batch)}
    batch_logits = lambda params, batch: logits_fn(ctx.to_model(params), batch)
    return {"logits_spread": batched_radius.microbatch_spread_fn(
        batch_logits, ctx.params, ctx.micro_batches)}

  return extra_args_fn


def _check_grad_accum_steps(value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"`grad_accum_steps` must be an int >= 1, got {value!r}.")


def split_micro_batches(batch: Batch, grad_accum_steps: int) -> Batch:
  """Every leaf ``[B, ...] -> [k, B / k, ...]``, micro-batch ``i`` = examples ``i::k``.

  Strided rather than contiguous: a batch sharded over devices along its leading axis keeps
  ``B / (k * devices)`` examples of every micro-batch on each device, so no micro-batch sits
  on a subset of the devices.
  """
  _check_grad_accum_steps(grad_accum_steps)
  k = grad_accum_steps

  def split(path, x):
    if x.ndim == 0 or x.shape[0] % k:
      raise ValueError(
          f"`grad_accum_steps` = {k} must divide the global batch size; "
          f"`batch{jax.tree_util.keystr(path)}` has shape {x.shape}.")
    return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)

  return jax.tree_util.tree_map_with_path(split, batch)


def _check_callable(name: str, fn) -> None:
  if not callable(fn):
    raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}.")


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    extra_args_fn: Callable[[StepContext], dict[str, Any]] | None = None,
    on_nonfinite: str = "stop",
    frozen_shardings: Any = None,
    compute_dtype: Any = None,
    grad_accum_steps: int = 1,
    remat_policy: str | None = None,
    remat_modules: Sequence[type] = (),
    shard_activations: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """Returns ``train_step(state, batch) -> (state, metrics)``, jitted with donated state.

  One step: split ``state.rng``; ``loss, grads = value_and_grad(loss_fn)`` at ``state.params``
  (non-parameter variables such as BatchNorm statistics updated by the forward pass become
  the new ``model_state``); ``updates = tx.update(grads, opt_state, params, **extra_args)``;
  ``params += updates``, unless a value is non-finite (module docstring). ``metrics`` holds
  ``loss``, ``grad_norm``, ``nonfinite_steps``, the loss_fn's metrics and every named scalar
  in the optimizer state (``metrics.optimizer_scalars``), all replicated float32 scalars.

  Args:
    graphdef: from ``state.create_train_state``.
    tx: the optax transformation.
    loss_fn: ``loss_fn(model, batch, rng) -> (loss, metrics)``, mean over the global batch.
    shardings: the state's sharding tree (from ``create_train_state``).
    mesh: the mesh; batches are expected sharded with ``mesh.batch_sharding``.
    extra_args_fn: ``ctx -> {name: value}`` keyword arguments for ``tx.update``.
    on_nonfinite: ``"stop"`` or ``"skip"`` (module docstring).
    frozen_shardings: sharding tree of a pytree of frozen arrays (a teacher's parameters and
      statistics, a reference model): the step becomes ``train_step(state, batch, frozen)``
      and calls ``loss_fn(model, batch, rng, frozen)``. Passing such arrays as arguments keeps
      them sharded and out of the compiled program; closing over them in ``loss_fn`` inlines
      them as constants (replicated, and the program grows with their size).
    compute_dtype: mixed precision, e.g. ``jnp.bfloat16``: the forward and backward pass see
      float32 parameters and floating batch fields cast to it, while the master parameters,
      gradients (the cast's transpose returns float32), optimizer state, model state and the
      returned loss stay float32 (``loss_fn`` should reduce in float32; logitlab's losses
      do). ``None``: no casting.
    grad_accum_steps: ``k >= 1``: accumulate the gradient over ``k`` micro-batches of the
      global batch (module docstring); ``k`` must divide the batch size (checked at trace).
      ``loss_fn`` must return a per-example *mean* for the mean of micro-batch gradients to be
      the full-batch gradient.
    remat_policy: a ``jax.checkpoint_policies`` name (``remat.POLICIES``, e.g.
      ``"nothing_saveable"``, ``"dots_saveable"``): rematerialize the forward pass
      (``logitlab.training.remat``); ``None``: no remat.
    remat_modules: module classes whose calls are checkpointed one block at a time (block
      remat, what lowers peak memory); empty: the whole loss and forward pass is one
      ``jax.checkpoint``.
    shard_activations: constrain the batch (and each micro-batch) to the batch axes
      ``("data", "fsdp")`` inside the step, and trace the step under the mesh's abstract mesh
      so that ``loss_fn`` can pin activations the same way with ``mesh.constrain_batch``
      (e.g. the logits); otherwise their layout is left to sharding propagation.
  """
  _check_callable("loss_fn", loss_fn)
  if extra_args_fn is not None:
    _check_callable("extra_args_fn", extra_args_fn)
  mesh_lib.check_mesh(mesh)
  if on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"`on_nonfinite` must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
  _check_grad_accum_steps(grad_accum_steps)
  remat.check(remat_policy, remat_modules)
  if not isinstance(shard_activations, bool):
    raise ValueError(f"`shard_activations` must be a bool, got {shard_activations!r}.")
  if compute_dtype is not None and not jnp.issubdtype(compute_dtype, jnp.floating):
    raise ValueError(f"`compute_dtype` must be a floating dtype, got {compute_dtype!r}.")

  def cast(tree):
    if compute_dtype is None:
      return tree
    return jax.tree.map(lambda x: x.astype(compute_dtype) if x.dtype == jnp.float32 else x,
                        tree)

  def gradients(params, model_state, batch, rng, frozen):
    """``(loss, metrics, new model_state, grads)`` of ``loss_fn`` on one (micro-)batch."""

    def objective(params):
      # copy=True: fresh Variables owned by this (grad) trace, which the forward pass may
      # update (BatchNorm statistics); the jit-level ones cannot be mutated here.
      model = nnx.merge(graphdef, cast(params), model_state, copy=True)
      if remat_modules:
        remat.remat_blocks(model, remat_modules, remat_policy)
      loss, metrics = loss_fn(model, cast(batch), rng, *frozen)
      return loss.astype(jnp.float32), (metrics, nnx.state(model, nnx.Not(nnx.Param)))

    if remat_policy is not None and not remat_modules:
      objective = jax.checkpoint(objective, policy=remat.policy(remat_policy))
    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        params)
    # Statistics computed from compute_dtype activations keep their stored dtype.
    new_model_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_model_state,
                                   model_state)
    return loss, metrics, new_model_state, grads

  def accumulated_gradients(params, model_state, micro_batches, rng, frozen):
    """Mean loss, metrics and float32 gradients over micro-batches (``lax.scan``)."""

    def body(carry, xs):
      model_state, grad_sum = carry
      index, micro_batch = xs
      loss, metrics, model_state, grads = gradients(
          params, model_state, micro_batch, jax.random.fold_in(rng, index), frozen)
      grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
      return (model_state, grad_sum), (loss, metrics)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (model_state, grad_sum), (losses, metrics) = jax.lax.scan(
        body, (model_state, zeros), (jnp.arange(grad_accum_steps), micro_batches))
    grads = jax.tree.map(lambda s, p: (s / grad_accum_steps).astype(p.dtype), grad_sum, params)
    metrics = jax.tree.map(lambda m: jnp.mean(m.astype(jnp.float32), axis=0), metrics)
    return jnp.mean(losses), metrics, model_state, grads

  def train_step(state: TrainState, batch: Batch, *frozen):
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    micro_batches = None
    if shard_activations:
      batch = mesh_lib.constrain_batch(batch)
    if grad_accum_steps == 1:
      loss, metrics, model_state, grads = gradients(state.params, state.model_state, batch,
                                                    step_rng, frozen)
    else:
      micro_batches = split_micro_batches(batch, grad_accum_steps)
      if shard_activations:
        micro_batches = mesh_lib.constrain_batch(micro_batches, axis=1)
      loss, metrics, model_state, grads = accumulated_gradients(
          state.params, state.model_state, micro_batches, step_rng, frozen)
    extra_args = {}
    if extra_args_fn is not None:
      to_model = lambda params: nnx.merge(graphdef, params, state.model_state)
      extra_args = extra_args_fn(StepContext(to_model, batch, step_rng, loss, grads,
                                             micro_batches, state.params))
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra_args)
    params = optax.apply_updates(state.params, updates)
    apply = all_finite((loss, grads, params))
    if on_nonfinite == "stop":
      apply &= state.nonfinite_steps == 0
    keep_if_not = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
    params, model_state, opt_state = keep_if_not(
        (params, model_state, opt_state), (state.params, state.model_state, state.opt_state))
    advance = apply if on_nonfinite == "stop" else True
    new_state = state.replace(
        step=jnp.where(advance, state.step + 1, state.step), params=params,
        model_state=model_state, opt_state=opt_state,
        rng=keep_if_not(jax.random.key_data(rng), state.rng) if on_nonfinite == "stop"
        else jax.random.key_data(rng),
        nonfinite_steps=state.nonfinite_steps + (~apply).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics,
               **optimizer_scalars(opt_state),
               "nonfinite_steps": new_state.nonfinite_steps.astype(jnp.float32)}
    return new_state, metrics

  replicated = mesh_lib.replicated(mesh)
  out_shardings = (shardings, replicated)
  in_shardings = (shardings, mesh_lib.batch_sharding(mesh))
  if frozen_shardings is not None:
    in_shardings += (frozen_shardings,)
  step = mesh_lib.auto_axes(train_step, mesh, out_shardings)
  if shard_activations:
    body = step

    def step(*args):
      # The mesh in context lets constrain_batch (here and in loss_fn) name its axes.
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return body(*args)

  return jax.jit(step, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=0)


def make_eval_step(
    graphdef: nnx.GraphDef,
    metrics_fn: Callable[[nnx.Module, Batch], dict[str, jax.Array]],
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
  """Returns jitted ``eval_step(state, batch) -> metrics`` with the model in eval mode.

  ``metrics_fn(model, batch)`` should return *sums* over the valid examples of the batch
  (e.g. ``jnp.sum(correct * batch["mask"])``) plus a ``count``; ``evaluate`` adds them over
  batches and divides once, so padding in the last batch never biases a mean.
  """
  _check_callable("metrics_fn", metrics_fn)
  mesh_lib.check_mesh(mesh)

  def eval_step(state: TrainState, batch: Batch):
    model = nnx.merge(graphdef, state.params, state.model_state)
    model.eval()
    return metrics_fn(model, batch)

  replicated = mesh_lib.replicated(mesh)
  return jax.jit(mesh_lib.auto_axes(eval_step, mesh, replicated),
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=replicated)
