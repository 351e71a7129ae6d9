"""Logit distillation: a teacher, then students trained with CE / KD / DKD / NKD / USKD /
KD+LS / DKD+LS / DHKD (issue 3; formulas and defaults in docs/distillation.md).

Two paths share one config schema (``experiments/configs/kd_*.py``) and one loss dispatcher
(`distillation_loss`):

* **embedded** (``dataset="mnist1d" | "digits"``, data generated or shipped, no download): trains
  the teacher, precomputes its logits (no augmentation, so they are exact), then every method
  for all seeds at once: the whole run is a ``lax.scan`` over steps ``vmap``-ed over seeds.
  Prints a mean +- std table and writes ``results.json`` and ``results.png`` to ``workdir``.
* **tfds** (``cifar100`` / ``imagenet2012`` prepared in ``data_dir``): one run per config on the
  shared training core (``logitlab.training``: sharded jit step, Orbax checkpoints and resume,
  grain pipelines with crop+flip). ``method="ce"`` with no teacher trains a teacher; students
  restore it from ``teacher_workdir``.

Run:  python -m experiments.kd                                   # embedded default, ~minutes
      python -m experiments.kd --config=experiments/configs/kd_embedded.py --config.seeds=1
      python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r32x4_r8x4_dkd.py
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from logitlab import datasets, losses, training
from logitlab.models import vision

METHODS = ("ce", "kd", "dkd", "nkd", "uskd", "kd_ls", "dkd_ls", "dhkd")
TEACHER_FREE = ("ce", "uskd")
EMBEDDED_DATASETS = ("mnist1d", "digits")


# --------------------------------------------------------------------------- losses


def student_heads(method: str) -> dict:
  """Extra heads a method needs: USKD's middle-feature head, DHKD's auxiliary head."""
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
  return {"uskd": {"middle_head": True}, "dhkd": {"aux_head": "linear"}}.get(method, {})


def distillation_loss(method: str, c: ml_collections.ConfigDict, outputs: dict,
                      teacher_logits: jax.Array | None, labels: jax.Array,
                      epoch: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The training loss of ``method`` on one batch and its logged parts.

  Args:
    method: one of `METHODS`.
    c: the config's ``loss`` block (weights, temperatures; see kd_embedded.py).
    outputs: ``student.forward(x, train=True)``.
    teacher_logits: ``[N, C]`` (ignored by the teacher-free methods).
    labels: ``[N]`` int.
    epoch: scalar float, epochs done (DKD's linear warmup ``min(epoch / warmup, 1)``).
  """
  logits = outputs["logits"]
  ce = losses.cross_entropy(logits, labels)
  if method == "ce":
    return ce, {"ce": ce}
  if method == "uskd":
    return losses.uskd(logits, outputs["middle_logits"], labels, alpha=c.uskd_alpha,
                       beta=c.uskd_beta, mu=c.uskd_mu)
  # Logit standardization (arXiv 2403.01427) sits in front of the unchanged KD / DKD.
  standardized = method.endswith("_ls")
  if standardized:
    logits_in, teacher_in = losses.standardize(logits), losses.standardize(teacher_logits)
  else:
    logits_in, teacher_in = logits, teacher_logits
  if method in ("kd", "kd_ls"):
    temperature = c.ls_temperature if standardized else c.kd_temperature
    weight = c.ls_kd_weight if standardized else c.kd_weight
    term = losses.kd(logits_in, teacher_in, temperature=temperature)
    return c.kd_ce_weight * ce + weight * term, {"ce": ce, "kd": term}
  if method in ("dkd", "dkd_ls"):
    temperature = c.ls_temperature if standardized else c.kd_temperature
    term = losses.dkd(logits_in, teacher_in, labels, alpha=c.dkd_alpha, beta=c.dkd_beta,
                      temperature=temperature)
    warmup = losses.dkd_warmup(epoch, c.dkd_warmup_epochs)
    return ce + warmup * term, {"ce": ce, "dkd": term}
  if method == "nkd":
    term = losses.nkd(logits, teacher_logits, labels, temperature=c.nkd_temperature,
                      gamma=c.nkd_gamma)
    return ce + term, {"ce": ce, "nkd": term}
  if method == "dhkd":
    # Probability-level loss (CE + KD) on head 1, logit-level BinaryKLNorm on head 2.
    total, parts = losses.dhkd(logits, outputs["aux_logits"], teacher_logits, labels,
                               gamma=c.kd_ce_weight, alpha=c.dhkd_alpha,
                               temperature=c.dhkd_temperature)
    term = losses.kd(logits, teacher_logits, temperature=c.kd_temperature)
    return total + c.kd_weight * term, {**parts, "kd": term}
  raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")


# --------------------------------------------------------------------------- optimizer


def make_optimizer(c: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """mdistiller SGD: momentum, coupled weight decay, lr x ``decay_factor`` at fractions of the run.

  ``decay_at`` are fractions of ``steps`` (150/240, 180/240, 210/240 for the CIFAR protocol).
  """
  boundaries = {int(round(f * steps)): c.decay_factor for f in c.decay_at}
  schedule = optax.piecewise_constant_schedule(c.learning_rate, boundaries)
  return optax.chain(optax.add_decayed_weights(c.weight_decay),
                     optax.sgd(schedule, momentum=c.momentum, nesterov=c.nesterov))


# --------------------------------------------------------------------------- embedded path


def load_embedded(name: str, *, num_samples: int = 5000, seed: int = 0):
  """``(x_train, y_train, x_test, y_test)``: flat float32 inputs, int32 labels, no download.

  ``mnist1d`` is generated by its package (4:1 split of ``num_samples``); ``digits`` is
  scikit-learn's bundled 8x8 digits, flattened to 64 features.
  """
  if name == "digits":
    x_train, y_train, x_test, y_test = datasets.digits(seed=seed)
    return (x_train.reshape(len(x_train), -1), y_train, x_test.reshape(len(x_test), -1), y_test)
  if name == "mnist1d":
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    data = make_dataset(args)
    return tuple(np.asarray(data[k], dtype) for k, dtype in
                 (("x", np.float32), ("y", np.int32), ("x_test", np.float32),
                  ("y_test", np.int32)))
  raise ValueError(f"`dataset` must be one of {EMBEDDED_DATASETS} here, got {name!r}.")


def _init_states(model_fn, tx, seeds):
  """Static graphdef and seed-stacked ``(params, rest, opt_state)``: one vmapped, jitted init."""
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param, ...)

  @jax.jit
  @jax.vmap
  def init(seed):
    _, params, rest = nnx.split(model_fn(nnx.Rngs(jax.random.key(seed))), nnx.Param, ...)
    return params, rest, tx.init(params)

  return graphdef, init(jnp.asarray(seeds, jnp.uint32))


def _forward(graphdef, params, rest, x, *, train: bool):
  # copy=True: fresh Variables at this trace level (``rest`` may come from an outer trace,
  # and BatchNorm writes its statistics in train mode).
  model = nnx.merge(graphdef, params, rest, copy=True)
  outputs = model.forward(x, train=train)
  return outputs, nnx.split(model, nnx.Param, ...)[2]


def train_embedded_runs(model_fn, method: str, c: ml_collections.ConfigDict, data, seeds,
                        teacher_logits=None, *, desc: str = "") -> tuple[np.ndarray, tuple]:
  """Trains one model per seed (vmapped) on ``data``; returns per-seed test accuracy [S].

  Minibatches are drawn with replacement from the training set by a per-seed key. The scan is
  chunked (``c.train.chunk_steps``) only to drive the progress bar; the chunk is compiled once.
  """
  x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data)
  t = c.train
  steps_per_epoch = max(len(x_train) // t.batch_size, 1)
  tx = make_optimizer(c.optimizer, t.steps)
  graphdef, (params, rest, opt_state) = _init_states(model_fn, tx, seeds)
  if teacher_logits is None:
    teacher_logits = jnp.zeros((len(x_train), int(y_train.max()) + 1), jnp.float32)

  def one_step(carry, step):
    params, rest, opt_state, key = carry
    key, batch_key = jax.random.split(key)
    idx = jax.random.randint(batch_key, (t.batch_size,), 0, x_train.shape[0])

    def objective(p):
      outputs, new_rest = _forward(graphdef, p, rest, x_train[idx], train=True)
      loss, _ = distillation_loss(method, c.loss, outputs, teacher_logits[idx], y_train[idx],
                                  step / steps_per_epoch)
      return loss, new_rest

    (loss, new_rest), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_rest, opt_state, key), loss

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def run_chunk(carry, first_step):
    return jax.lax.scan(one_step, carry, first_step + jnp.arange(t.chunk_steps))

  @jax.jit
  @jax.vmap
  def test_accuracy(params, rest):
    logits = _forward(graphdef, params, rest, x_test, train=False)[0]["logits"]
    return jnp.mean(jnp.argmax(logits, -1) == y_test)

  # Batch-order keys differ from the init keys of the same seed.
  keys = jax.jit(jax.vmap(jax.random.key))(jnp.asarray(seeds, jnp.uint32) + 1000)
  carry = (params, rest, opt_state, keys)
  num_chunks = -(-t.steps // t.chunk_steps)
  for chunk in tqdm(range(num_chunks), desc=desc or method, leave=False, disable=not t.progress):
    carry, chunk_losses = run_chunk(carry, chunk * t.chunk_steps)
  if not np.all(np.isfinite(np.asarray(chunk_losses))):
    raise FloatingPointError(f"{method}: non-finite training loss {chunk_losses[:, -1]}.")
  params, rest = carry[0], carry[1]
  return np.asarray(test_accuracy(params, rest)), (graphdef, params, rest)


def run_embedded(c: ml_collections.ConfigDict) -> dict:
  """Teacher, then every method in ``c.methods`` over ``c.seeds`` seeds; writes JSON + PNG."""
  start = time.time()
  data = load_embedded(c.dataset, num_samples=c.num_samples, seed=c.data_seed)
  num_classes = int(data[1].max()) + 1
  in_features = data[0].shape[1]

  def model_fn(spec, method):
    kwargs = dict(spec.kwargs)
    if spec.name == "mlp":
      kwargs["in_features"] = in_features
    return lambda rngs: vision.build(spec.name, num_classes, rngs=rngs,
                                     **student_heads(method), **kwargs)

  seeds = list(range(c.seeds))
  teacher_acc, (graphdef, t_params, t_rest) = train_embedded_runs(
      model_fn(c.teacher, "ce"), "ce", c, data, [c.teacher_seed], desc="teacher")
  teacher_logits = jax.jit(jax.vmap(
      lambda p, r, x: _forward(graphdef, p, r, x, train=False)[0]["logits"],
      in_axes=(0, 0, None)))(t_params, t_rest, jnp.asarray(data[0]))[0]
  results = {"teacher": float(teacher_acc[0]), "methods": {}}
  for method in tqdm(c.methods, desc="methods", disable=not c.train.progress):
    accs, _ = train_embedded_runs(model_fn(c.student, method), method, c, data, seeds,
                                  None if method in TEACHER_FREE else teacher_logits)
    results["methods"][method] = {"accuracy": accs.tolist(), "mean": float(accs.mean()),
                                  "std": float(accs.std())}
  results["seconds"] = time.time() - start
  results["config"] = c.to_dict()
  write_results(results, c)
  return results


def results_table(results: dict) -> str:
  lines = ["| method | test accuracy (%) mean +- std | seeds |", "|---|---|---|",
           f"| teacher | {100 * results['teacher']:.2f} | 1 |"]
  for method, r in results["methods"].items():
    lines.append(f"| {method} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | "
                 f"{len(r['accuracy'])} |")
  return "\n".join(lines)


def write_results(results: dict, c: ml_collections.ConfigDict) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(c.workdir, exist_ok=True)
  with open(os.path.join(c.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  names = list(results["methods"])
  means = [100 * results["methods"][m]["mean"] for m in names]
  stds = [100 * results["methods"][m]["std"] for m in names]
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.bar(names, means, yerr=stds, capsize=3, color="tab:blue")
  ax.axhline(100 * results["teacher"], color="tab:red", ls="--", label="teacher")
  ax.set_ylim(min(means) - 5, max(max(means), 100 * results["teacher"]) + 2)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{c.dataset}: {c.teacher.name} -> {c.student.name}, {c.seeds} seeds")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(c.workdir, "results.png"), dpi=120)
  plt.close(fig)
  print(results_table(results))
  print(f"wrote {c.workdir}/results.json and results.png ({results['seconds']:.0f} s)")


# --------------------------------------------------------------------------- TFDS path


class _WithEpoch:
  """Adds ``epoch [B]`` (epochs done, per example so it shards like the batch) to each batch.

  DKD's warmup needs the epoch inside the jitted loss, whose signature is (model, batch, rng).
  """

  def __init__(self, batches, steps_per_epoch: int):
    self.batches, self.steps_per_epoch = batches, steps_per_epoch

  def __iter__(self):
    return self

  def __next__(self):
    epoch = self.batches.get_state()["position"] / self.steps_per_epoch
    batch = next(self.batches)
    return {**batch, "epoch": np.full(len(batch["label"]), epoch, np.float32)}

  def get_state(self):
    return self.batches.get_state()

  def set_state(self, state):
    self.batches.set_state(state)


def _model_fn(spec, num_classes: int, method: str):
  return lambda rngs: vision.build(spec.name, num_classes, rngs=rngs, **student_heads(method),
                                   **spec.kwargs)


def load_teacher(c: ml_collections.ConfigDict, mesh) -> nnx.Module:
  """Restores the teacher trained by this launcher (``method="ce"``) from ``teacher_workdir``."""
  teacher_fn = _model_fn(c.teacher, c.num_classes, "ce")
  tx = make_optimizer(c.optimizer, c.train.steps)
  graphdef, abstract, _ = training.abstract_train_state(teacher_fn, tx, mesh)
  checkpointer = training.Checkpointer(os.path.join(c.teacher_workdir, "checkpoints"))
  restored = checkpointer.restore(abstract)
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No teacher checkpoint under {c.teacher_workdir}/checkpoints; "
                            "train it first with method='ce' (see kd_cifar100_teacher.py).")
  state, _ = restored
  return nnx.merge(graphdef, state.params, state.model_state)


def run_tfds(c: ml_collections.ConfigDict) -> dict[str, float]:
  """One run of ``c.method`` on TFDS data; returns the final eval metrics."""
  mesh = training.make_mesh(dict(c.mesh))
  t = c.train
  data_dir = c.data_dir or None
  eval_split = "validation" if c.dataset.startswith("imagenet") else "test"
  train_batches = training.tfds_image_data(c.dataset, "train", global_batch_size=t.batch_size,
                                           train=True, seed=t.seed, data_dir=data_dir,
                                           num_threads=t.num_threads)
  train_data = _WithEpoch(train_batches, t.steps_per_epoch)
  teacher = None if c.method in TEACHER_FREE else load_teacher(c, mesh)

  def loss_fn(model, batch, rng):
    del rng
    outputs = model.forward(batch["image"], train=True)
    teacher_logits = (None if teacher is None else
                      jax.lax.stop_gradient(teacher(batch["image"], train=False)))
    loss, parts = distillation_loss(c.method, c.loss, outputs, teacher_logits, batch["label"],
                                    batch["epoch"][0])
    parts["accuracy"] = jnp.mean(jnp.argmax(outputs["logits"], -1) == batch["label"])
    return loss, parts

  def eval_metrics(model, batch):
    logits = model(batch["image"], train=False)
    correct = (jnp.argmax(logits, -1) == batch["label"]) & batch["mask"]
    return {"accuracy": jnp.sum(correct), "count": jnp.sum(batch["mask"])}

  eval_step = None

  def eval_fn(graphdef, state):
    nonlocal eval_step
    if eval_step is None:
      eval_step = training.make_eval_step(graphdef, eval_metrics, result_shardings, mesh)
    batches = training.tfds_image_data(c.dataset, eval_split, global_batch_size=t.batch_size,
                                       train=False, data_dir=data_dir, num_threads=t.num_threads)
    return training.evaluate(eval_step, state, batches, mesh)

  student_fn = _model_fn(c.student, c.num_classes, c.method)
  tx = make_optimizer(c.optimizer, t.steps)
  _, _, result_shardings = training.abstract_train_state(student_fn, tx, mesh, seed=t.seed)
  result = training.train(
      model_fn=student_fn, tx=tx, loss_fn=loss_fn, train_data=train_data, mesh=mesh,
      workdir=c.workdir, num_steps=t.steps, seed=t.seed, log_every=t.log_every,
      checkpoint_every=t.checkpoint_every, eval_every=t.eval_every, eval_fn=eval_fn,
      progress=t.progress)
  metrics = eval_fn(result.graphdef, result.state)
  print(f"{c.method}: {c.teacher.name} -> {c.student.name} on {c.dataset}: "
        f"top-1 {100 * metrics['accuracy']:.2f}%", flush=True)
  return metrics


def run(c: ml_collections.ConfigDict):
  return run_embedded(c) if c.dataset in EMBEDDED_DATASETS else run_tfds(c)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  run(_CONFIG.value)


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "experiments/configs/kd_embedded.py", "Experiment config file.")
  app.run(main)
