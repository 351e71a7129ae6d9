"""The shared train loop: init-or-resume, step, log, evaluate, checkpoint.

Deliberately small: everything problem-specific comes in as functions (``model_fn``,
``loss_fn``, ``extra_args_fn``, ``eval_fn``, ``hooks``), the data as a ``ResumableBatches``
(or anything with ``__next__``/``get_state``/``set_state``). Resuming is automatic: if the
checkpoint directory (default ``<workdir>/checkpoints``) holds a checkpoint, the state and the
data position are restored from the latest one and training continues; since the batch at a
position and the per-step RNG are fixed, the continued run computes exactly what the
uninterrupted run would have.

Faults (``faults``): a signal or preemption notice ends the run after a final checkpoint
(``Preempted``, exit code 75); a non-finite step is stopped on or skipped (``on_nonfinite``)
and never saved; damaged checkpoints are set aside and the newest intact one is used; a resume
whose config changed in fields not explicitly allowed is refused (``run_config``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from logitlab.training import mesh as mesh_lib
from logitlab.training import remat, run_config
from logitlab.training.checkpoint import Checkpointer
from logitlab.training.faults import EXIT_PREEMPTED, Diverged, Preempted, StopSignals
from logitlab.training.metrics import (MetricsWriter, Throughput, compiled_flops, peak_flops,
                                      require_local_dir)
from logitlab.training.state import TrainState, abstract_train_state, create_train_state
from logitlab.training.step import ON_NONFINITE, LossFn, StepContext, make_train_step


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


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def _validate(num_steps, seed, log_every, checkpoint_every, keep_checkpoints, eval_every,
              on_nonfinite, hooks, grad_accum_steps, remat_policy, remat_modules):
  _check_int("num_steps", num_steps, 1)
  _check_int("grad_accum_steps", grad_accum_steps, 1)
  remat.check(remat_policy, remat_modules)
  _check_int("seed", seed, 0)
  _check_int("log_every", log_every, 1)
  _check_int("checkpoint_every", checkpoint_every, 1)
  _check_int("keep_checkpoints", keep_checkpoints, 1)
  _check_int("eval_every", eval_every, 0)
  if on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"`on_nonfinite` must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
  if not all(callable(h) for h in hooks):
    raise ValueError(f"`hooks` must be callables `hook(step, state)`, got {hooks!r}.")


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
    on_nonfinite: str = "stop",
    config: Mapping[str, Any] | None = None,
    allow_config_changes: Sequence[str] = (),
    handle_signals: bool = True,
    frozen: Any = None,
    init_from: str | None = None,
    compute_dtype: Any = None,
    grad_accum_steps: int = 1,
    remat_policy: str | None = None,
    remat_modules: Sequence[type] = (),
    shard_activations: bool = False,
) -> TrainResult:
  """Trains for ``num_steps`` optimizer steps (resuming from ``workdir`` when possible).

  Args:
    model_fn, tx, seed, rules: see ``state.create_train_state``.
    loss_fn, extra_args_fn: see ``step.make_train_step``.
    train_data: iterator of host-local batches with ``get_state``/``set_state``.
    mesh: from ``mesh.make_mesh``.
    workdir: local (or mounted) directory for ``config.json``, ``metrics.jsonl`` and ``tb/``
      (written by process 0), and ``checkpoints/`` unless ``checkpoint_dir`` is given.
    checkpoint_dir: Orbax checkpoint directory, e.g. ``gs://bucket/run/checkpoints`` on a
      multi-host pod slice (every host writes its shards there, so it must be shared);
      default ``<workdir>/checkpoints``.
    log_every: write train metrics every this many steps (and at the last step).
    checkpoint_every, keep_checkpoints: periodic save interval and keep-N.
    eval_every, eval_fn: ``eval_fn(graphdef, state) -> {name: value}`` logged as ``eval/name``
      every ``eval_every`` steps (0: only at the end) when given.
    hooks: ``hook(step, state)`` called after every step (e.g. to stop early, profile).
    progress: show a tqdm bar.
    on_nonfinite: ``"stop"``: raise ``faults.Diverged`` naming the first step whose loss,
      gradients or parameters were non-finite (detected at the next log or save step; that
      step and later ones are not applied); ``"skip"``: drop such steps, count them in the
      ``nonfinite_steps`` metric and warn. Either way no non-finite state is ever saved.
    config: the experiment's config (nested mapping or ``ConfigDict``), stored with
      ``loop.*`` settings and the state's shapes in ``<workdir>/config.json`` and every
      checkpoint (``run_config``).
    allow_config_changes: field patterns that may differ from the checkpoint's config on
      resume (e.g. ``("loop.num_steps", "train.steps", "optimizer.learning_rate")``); any
      other difference raises ``faults.ConfigMismatchError`` listing the fields.
    handle_signals: on SIGTERM/SIGINT (or Orbax's multi-host preemption notice) finish the
      current step, save a checkpoint, wait for it and raise ``faults.Preempted`` (a
      ``SystemExit`` with code ``faults.EXIT_PREEMPTED`` = 75).
    frozen: a pytree of placed arrays that the loss reads but does not train (a teacher's
      ``nnx.state``): passed to every step as a jit argument with its own shardings, and to
      ``loss_fn(model, batch, rng, frozen)`` (``step.make_train_step``).
    init_from: another run's checkpoint directory: a fresh run (nothing to resume) takes its
      newest ``params`` and ``model_state`` (checksums verified), placed in this run's
      shardings, with a fresh optimizer state for them (fine-tuning). Ignored on resume.
    compute_dtype: mixed precision (``jnp.bfloat16``: bf16 compute, float32 master
      parameters, optimizer state and loss; ``step.make_train_step``).
    grad_accum_steps: average the gradient of this many micro-batches of each global batch
      (``lax.scan``, one micro-batch of activations in memory; ``step.make_train_step``).
      With the radius guard use ``extra_args_fn=step.radius_guard_args(logits_fn)`` so the
      update is capped on every micro-batch.
    remat_policy, remat_modules: rematerialization of the forward pass
      (``logitlab.training.remat``; block remat of ``remat_modules`` lowers peak memory).
    shard_activations: pin the batch, micro-batches and whatever ``loss_fn`` passes to
      ``training.constrain_batch`` (e.g. logits) to the batch axes (``step.make_train_step``).

  Returns:
    ``TrainResult(graphdef, state, shardings)`` at ``num_steps``.
  """
  _validate(num_steps, seed, log_every, checkpoint_every, keep_checkpoints, eval_every,
            on_nonfinite, hooks, grad_accum_steps, remat_policy, remat_modules)
  require_local_dir(workdir)  # before any checkpoint I/O
  checkpointer = Checkpointer(checkpoint_dir or os.path.join(workdir, "checkpoints"),
                              save_interval_steps=checkpoint_every,
                              max_to_keep=keep_checkpoints)
  # Handlers first: a signal during restore or compilation still ends in a clean save.
  try:
    with StopSignals(enabled=handle_signals) as signals:
      return _train(checkpointer, signals, model_fn=model_fn, tx=tx, loss_fn=loss_fn,
                    train_data=train_data, mesh=mesh, workdir=workdir, num_steps=num_steps,
                    seed=seed, log_every=log_every, eval_every=eval_every, eval_fn=eval_fn,
                    extra_args_fn=extra_args_fn, hooks=hooks, rules=rules, progress=progress,
                    on_nonfinite=on_nonfinite, config=config,
                    allow_config_changes=allow_config_changes, handle_signals=handle_signals,
                    frozen=frozen, init_from=init_from, compute_dtype=compute_dtype,
                    grad_accum_steps=grad_accum_steps, remat_policy=remat_policy,
                    remat_modules=remat_modules, shard_activations=shard_activations)
  finally:
    checkpointer.close()


def _init_from(directory: str, state: TrainState, abstract: TrainState, shardings: TrainState,
               tx: optax.GradientTransformation) -> TrainState:
  """``state`` with params + model state from ``directory``'s newest checkpoint, and the
  optimizer state re-initialized for them."""
  source = Checkpointer(directory, read_only=True)
  try:
    loaded = source.restore_params({"params": abstract.params,
                                    "model_state": abstract.model_state})
    step = source.latest_step()
  finally:
    source.close()
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(loaded["params"])
  if jax.process_index() == 0:
    print(f"initialized params from {directory} step {step}", flush=True)
  return state.replace(params=loaded["params"], model_state=loaded["model_state"],
                       opt_state=opt_state)


def _train(checkpointer: Checkpointer, signals: StopSignals, *, model_fn, tx, loss_fn,
           train_data, mesh, workdir, num_steps, seed, log_every, eval_every, eval_fn,
           extra_args_fn, hooks, rules, progress, on_nonfinite, config, allow_config_changes,
           handle_signals, frozen, init_from, compute_dtype, grad_accum_steps, remat_policy,
           remat_modules, shard_activations):
  graphdef, abstract, shardings = abstract_train_state(model_fn, tx, mesh, seed=seed,
                                                       rules=rules)
  current_config = {**run_config.flatten(config),
                    **run_config.flatten({"loop": {"seed": seed, "num_steps": num_steps,
                                                   "on_nonfinite": on_nonfinite,
                                                   "init_from": init_from or "",
                                                   "compute_dtype": str(compute_dtype),
                                                   "grad_accum_steps": grad_accum_steps,
                                                   "remat_policy": str(remat_policy),
                                                   "remat_modules": ",".join(
                                                       t.__name__ for t in remat_modules),
                                                   "shard_activations": shard_activations}}),
                    **run_config.state_signature(abstract)}

  def check_config(stored, step):
    if not stored:
      warnings.warn(f"Checkpoint {step} has no stored config; resuming unchecked.")
      return
    allowed = run_config.check_resume(stored, current_config, allow_config_changes, step=step)
    if allowed and jax.process_index() == 0:
      print(f"config changes allowed on resume: {', '.join(allowed)}", flush=True)

  restored = checkpointer.restore_latest_intact(abstract, check_config=check_config)
  if restored is None:
    graphdef, state, shardings = create_train_state(model_fn, tx, mesh, seed=seed, rules=rules)
    if init_from:
      state = _init_from(init_from, state, abstract, shardings, tx)
  else:
    state = restored.state
    train_data.set_state(restored.data)
    if jax.process_index() == 0:
      print(f"resumed from step {restored.step} ({workdir})", flush=True)
  run_config.write(workdir, current_config)
  frozen_args = () if frozen is None else (frozen,)
  train_step = make_train_step(
      graphdef, tx, loss_fn, shardings, mesh, extra_args_fn=extra_args_fn,
      on_nonfinite=on_nonfinite, compute_dtype=compute_dtype, grad_accum_steps=grad_accum_steps,
      remat_policy=remat_policy, remat_modules=remat_modules,
      shard_activations=shard_activations,
      frozen_shardings=None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen))
  start_step = int(state.step)
  if on_nonfinite == "stop" and int(state.nonfinite_steps):
    # Steps skipped by an earlier on_nonfinite="skip" run: "stop" reads a non-zero count as
    # "halted", so start counting afresh.
    state = state.replace(nonfinite_steps=jax.device_put(np.int32(0), shardings.nonfinite_steps))
  nonfinite_seen = int(state.nonfinite_steps)
  writer = MetricsWriter(workdir, total_steps=num_steps, start_step=start_step,
                         progress=progress)
  if start_step == 0:
    writer.write_hparams(current_config)
  throughput = None

  def check_finite(step):
    """Reads the non-finite counter (a device sync) at log/save steps only."""
    nonlocal nonfinite_seen
    count = int(state.nonfinite_steps)
    if count == nonfinite_seen:
      return
    if on_nonfinite == "stop":
      bad = int(state.step) + 1
      raise Diverged(bad, f"Non-finite loss, gradients or parameters at step {bad} (detected "
                          f"at step {step}); that update was not applied, and the newest "
                          f"checkpoint holds finite values. Lower the learning rate, or pass "
                          f"on_nonfinite='skip' to drop such steps.")
    warnings.warn(f"{count - nonfinite_seen} step(s) with non-finite values skipped up to step "
                  f"{step} ({count} in total; metric `nonfinite_steps`).")
    nonfinite_seen = count

  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = mesh_lib.put_batch(next(train_data), mesh)
      if throughput is None:
        # Compiled ahead of time once, to read XLA's FLOP count for the MFU estimate.
        train_step = train_step.lower(state, batch, *frozen_args).compile()
        throughput = Throughput(
            examples_per_step=jax.tree.leaves(batch)[0].shape[0],
            flops_per_step=compiled_flops(train_step),
            peak_flops_per_device=peak_flops(jax.devices()[0]))
      state, metrics = train_step(state, batch, *frozen_args)
      if step == start_step + 1:
        jax.block_until_ready(state.step)
        throughput.start(step)
      writer.advance()
      preempted = handle_signals and (signals.requested or
                                      checkpointer.reached_preemption(step))
      save = preempted or step == num_steps or checkpointer.should_save(step)
      log = step % log_every == 0 or step == num_steps
      if save or log:
        check_finite(step)
      if log:
        writer.write(step, {**metrics, **throughput.measure(step)})
      paused_at = throughput.pause()
      if eval_fn is not None and ((eval_every and step % eval_every == 0)
                                  or step == num_steps):
        writer.write(step, {f"eval/{k}": v for k, v in eval_fn(graphdef, state).items()})
      if save:
        checkpointer.save(step, state, train_data.get_state(), config=current_config,
                          force=True)
      throughput.resume(paused_at)
      for hook in hooks:
        hook(step, state)
      if preempted:
        checkpointer.wait()
        reason = signals.signal_name or "preemption notice"
        if jax.process_index() == 0:
          print(f"{reason}: saved step {step}, exiting with code {EXIT_PREEMPTED}",
                flush=True)
        raise Preempted(step, reason)
    checkpointer.wait()
  finally:
    writer.close()
  return TrainResult(graphdef, state, shardings)
