"""Image classifier launcher on the shared training core (``logitlab.training``).

One config file per experiment (``experiments/configs/classifier_*.py``), overridable from the
command line. The run resumes automatically from ``<workdir>/checkpoints``.

Run:  python -m experiments.train_classifier --config=experiments/configs/classifier_digits.py
      python -m experiments.train_classifier --config=experiments/configs/classifier_digits.py \
          --config.train.steps=100 --config.mesh.data=2 --config.mesh.fsdp=4
      python -m experiments.train_classifier --config=experiments/configs/classifier_cifar.py \
          --config.data_dir=/data/tfds
Multi-host: the same command on every host, plus ``--distributed`` (TPU pods, SLURM: JAX
detects the cluster) or ``--coordinator=HOST:PORT --num_processes=N --process_id=I``.
``--stop_after=N`` sends ``--stop_signal`` (default KILL) to the process after step N (fault
tests). On SIGTERM/SIGINT the run saves and exits with code 75 (``training.EXIT_PREEMPTED``);
rerun the same command to resume. A resume with a changed config is refused unless the changed
fields are in ``RESUME_SAFE_FIELDS`` or ``--allow_config_changes`` (e.g.
``--allow_config_changes=train.steps,optimizer.learning_rate``).
"""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from logitlab import datasets, losses, training
from logitlab.radius_guard import radius_guard
from logitlab.models import vision

_STOP_AFTER = flags.DEFINE_integer("stop_after", 0,
                                   "Send --stop_signal to this process after this step.")
_STOP_SIGNAL = flags.DEFINE_enum("stop_signal", "KILL", ["KILL", "TERM", "INT"],
                                 "Signal sent by --stop_after.")
_ALLOW_CHANGES = flags.DEFINE_list(
    "allow_config_changes", [], "Config fields (fnmatch patterns) that may differ from the "
    "checkpoint's on resume, e.g. train.steps,optimizer.learning_rate.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (cluster auto-detection).")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")


# Fields that do not change what is computed: a resume may change them without a flag.
RESUME_SAFE_FIELDS = ("workdir", "checkpoint_dir", "data_dir", "mesh", "train.log_every",
                      "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
                      "train.num_threads")


def _require(ok: bool, name: str, expected: str, value) -> None:
  if not ok:
    raise ValueError(f"`config.{name}` must be {expected}, got {value!r}.")


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of a classifier config at start-up; errors name the field."""
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  _require(c.dataset == "digits" or c.dataset in ("cifar10", "cifar100", "imagenet2012"),
           "dataset", "one of digits, cifar10, cifar100, imagenet2012", c.dataset)
  _require(isinstance(c.data_dir, str), "data_dir", "a path string", c.data_dir)
  _require(is_int(c.num_classes) and c.num_classes >= 2, "num_classes", "an int >= 2",
           c.num_classes)
  _require(c.model in vision.REGISTRY, "model", f"one of {sorted(vision.REGISTRY)}", c.model)
  for axis, size in c.mesh.items():
    _require(is_int(size) and (size == -1 or size >= 1), f"mesh.{axis}", "-1 or an int >= 1",
             size)
  t = c.train
  for name in ("steps", "global_batch_size", "log_every", "checkpoint_every",
               "keep_checkpoints", "num_threads"):
    _require(is_int(t[name]) and t[name] >= 1, f"train.{name}", "an int >= 1", t[name])
  _require(is_int(t.seed) and t.seed >= 0, "train.seed", "an int >= 0", t.seed)
  _require(is_int(t.eval_every), "train.eval_every", "an int (0: at the end, < 0: never)",
           t.eval_every)
  _require(t.on_nonfinite in training.ON_NONFINITE, "train.on_nonfinite",
           f"one of {training.ON_NONFINITE}", t.on_nonfinite)
  o = c.optimizer
  _require(o.name in ("sgd", "adam"), "optimizer.name", "'sgd' or 'adam'", o.name)
  _require(o.schedule in ("constant", "cosine"), "optimizer.schedule", "'constant' or 'cosine'",
           o.schedule)
  _require(is_num(o.learning_rate) and o.learning_rate > 0, "optimizer.learning_rate",
           "a number > 0", o.learning_rate)
  _require(is_num(o.momentum) and 0 <= o.momentum < 1, "optimizer.momentum", "in [0, 1)",
           o.momentum)
  _require(is_num(o.weight_decay) and o.weight_decay >= 0, "optimizer.weight_decay",
           "a number >= 0", o.weight_decay)
  _require(is_int(o.warmup_steps) and 0 <= o.warmup_steps, "optimizer.warmup_steps",
           "an int >= 0", o.warmup_steps)
  _require(isinstance(o.radius_guard, bool), "optimizer.radius_guard", "a bool", o.radius_guard)
  _require(is_num(o.max_ratio) and o.max_ratio > 0, "optimizer.max_ratio", "a number > 0",
           o.max_ratio)
  _require(isinstance(c.workdir, str) and bool(c.workdir), "workdir", "a non-empty path",
           c.workdir)
  _require(isinstance(c.checkpoint_dir, str), "checkpoint_dir", "a path or URL string ('' = "
           "<workdir>/checkpoints)", c.checkpoint_dir)


def make_optimizer(c: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """SGD (momentum, coupled weight decay) or Adam(W); optional warmup + cosine; optional guard."""
  if c.schedule == "cosine":
    learning_rate = optax.warmup_cosine_decay_schedule(
        0.0, c.learning_rate, c.warmup_steps, max(steps, c.warmup_steps + 1))
  elif c.schedule == "constant":
    learning_rate = (optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
                     if c.warmup_steps else c.learning_rate)
  else:
    raise ValueError(f"`optimizer.schedule` must be 'constant' or 'cosine', got {c.schedule!r}.")
  if c.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(c.weight_decay),
                     optax.sgd(learning_rate, momentum=c.momentum))
  elif c.name == "adam":
    tx = optax.adamw(learning_rate, weight_decay=c.weight_decay)
  else:
    raise ValueError(f"`optimizer.name` must be 'sgd' or 'adam', got {c.name!r}.")
  return radius_guard(tx, max_ratio=c.max_ratio) if c.radius_guard else tx


def make_data(c: ml_collections.ConfigDict):
  """``(train ResumableBatches, eval batches)`` for ``c.dataset``."""
  t = c.train
  if c.dataset == "digits":
    x_train, y_train, x_test, y_test = datasets.digits()
    flat = lambda x: x.reshape(len(x), -1)
    train = training.ResumableBatches(
        training.ArraySource(image=flat(x_train), label=y_train),
        global_batch_size=t.global_batch_size, seed=t.seed, num_threads=t.num_threads)
    evaluation = training.eval_batches(
        training.ArraySource(image=flat(x_test), label=y_test),
        global_batch_size=t.global_batch_size, num_threads=t.num_threads)
    return train, evaluation
  data_dir = c.data_dir or None
  eval_split = "validation" if c.dataset.startswith("imagenet") else "test"
  train = training.tfds_image_data(c.dataset, "train", global_batch_size=t.global_batch_size,
                                   train=True, seed=t.seed, data_dir=data_dir,
                                   num_threads=t.num_threads)
  evaluation = training.tfds_image_data(c.dataset, eval_split,
                                        global_batch_size=t.global_batch_size, train=False,
                                        data_dir=data_dir, num_threads=t.num_threads)
  return train, evaluation


def loss_fn(model, batch, rng):
  del rng  # deterministic models; dropout would draw from it
  logits = model(batch["image"], train=True)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  # data/labels: which examples, in which order, this step saw (compared across restarts).
  return losses.cross_entropy(logits, batch["label"]), {
      "accuracy": accuracy, "data/labels": training.batch_checksum(batch["label"])}


def eval_metrics(model, batch):
  """Per-batch sums over valid examples (``training.evaluate`` divides by ``count``)."""
  logits = model(batch["image"], train=False)
  mask = batch["mask"]
  correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
  ce = losses.cross_entropy(logits, batch["label"], reduction="none")
  return {"accuracy": jnp.sum(correct), "loss": jnp.sum(jnp.where(mask, ce, 0.0)),
          "count": jnp.sum(mask)}


def guard_extra_args(ctx: training.StepContext):
  """The radius guard's ``logits_fn``: logits of this step's batch at perturbed params."""
  return {"logits_fn": lambda params: ctx.to_model(params)(ctx.batch["image"], train=False)}


def run(c: ml_collections.ConfigDict, stop_after: int = 0, stop_signal: str = "KILL",
        allow_config_changes=()) -> training.TrainResult:
  validate_config(c)
  mesh = training.make_mesh(dict(c.mesh))
  train_data, eval_data = make_data(c)
  model_fn = lambda rngs: vision.build(c.model, c.num_classes, rngs=rngs, **c.model_kwargs)
  tx = make_optimizer(c.optimizer, c.train.steps)
  eval_step = None

  def eval_fn(graphdef, state):
    nonlocal eval_step
    if eval_step is None:
      eval_step = training.make_eval_step(graphdef, eval_metrics, shardings, mesh)
    return training.evaluate(eval_step, state, eval_data, mesh)

  def kill_hook(step, state):
    if step == stop_after:
      jax.block_until_ready(state)
      os.kill(os.getpid(), getattr(signal, f"SIG{stop_signal}"))

  _, abstract, shardings = training.abstract_train_state(model_fn, tx, mesh,
                                                         seed=c.train.seed)
  print(f"mesh {dict(mesh.shape)}, {jax.process_count()} process(es), "
        f"{training.num_params(abstract):,} parameters", flush=True)
  return training.train(
      model_fn=model_fn, tx=tx, loss_fn=loss_fn, train_data=train_data, mesh=mesh,
      workdir=c.workdir, checkpoint_dir=c.checkpoint_dir or None, num_steps=c.train.steps,
      seed=c.train.seed, log_every=c.train.log_every,
      checkpoint_every=c.train.checkpoint_every, keep_checkpoints=c.train.keep_checkpoints,
      eval_every=max(c.train.eval_every, 0),
      eval_fn=eval_fn if c.train.eval_every >= 0 else None,
      extra_args_fn=guard_extra_args if c.optimizer.radius_guard else None,
      hooks=[kill_hook] if stop_after else [], on_nonfinite=c.train.on_nonfinite,
      config=c, allow_config_changes=(*RESUME_SAFE_FIELDS, *allow_config_changes))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  run(_CONFIG.value, stop_after=_STOP_AFTER.value, stop_signal=_STOP_SIGNAL.value,
      allow_config_changes=_ALLOW_CHANGES.value)


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "experiments/configs/classifier_digits.py", "Experiment config file.")
  app.run(main)
