"""Logit distillation: a teacher, then students trained with CE / KD / DKD / NKD / USKD /
KD+LS / DKD+LS / DHKD (issue 3; formulas and defaults in docs/distillation.md).

Two paths share one config schema (``experiments/configs/kd_*.py``) and one objective, the
library's ``logitlab.kd_recipes.objective`` (the config's ``recipe`` block is a
``kd_recipes.Recipe``):

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

from logitlab import datasets, kd_recipes, training
from logitlab.models import vision

EMBEDDED_DATASETS = datasets.FLAT


def recipe_of(spec: ml_collections.ConfigDict) -> kd_recipes.Recipe:
  """The library recipe of a config's ``recipe`` block (``method`` plus Recipe fields)."""
  return kd_recipes.Recipe.from_config(spec.to_dict())


# --------------------------------------------------------------------------- optimizer


def make_optimizer(c: ml_collections.ConfigDict, steps: int,
                   steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The config's optimizer block (``logitlab.training.optimizers.from_config``)."""
  return training.optimizers.from_config(c.to_dict(), steps, steps_per_epoch)


# --------------------------------------------------------------------------- embedded path


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


def train_embedded_runs(model_fn, recipe: kd_recipes.Recipe, c: ml_collections.ConfigDict, data,
                        seeds, teacher_logits=None, *, desc: str = "") -> tuple[dict, tuple]:
  """Trains one model per seed (vmapped) on ``data`` with ``recipe``'s objective.

  Returns ``({"final": [S], "best": [S]}, (graphdef, params, rest))``: test accuracy after the
  last step and the best over the evaluations after every chunk (``c.train.chunk_steps``).
  Minibatches are drawn with replacement by a per-seed key; ``steps_per_epoch`` =
  ``len(train) // batch_size`` gives the epoch counted from 1 that DKD's warmup and CTKD's
  curriculum read (``kd_recipes.mdistiller_epoch``).
  """
  if recipe.needs_strong_view:
    raise ValueError("The embedded path has no strong (RandAugment) view; MLKD runs on the "
                     "TFDS path only.")
  x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data)
  t = c.train
  steps_per_epoch = max(len(x_train) // t.batch_size, 1)
  tx = make_optimizer(c.optimizer, t.steps, steps_per_epoch)
  graphdef, (params, rest, opt_state) = _init_states(model_fn, tx, seeds)

  def one_step(carry, step):
    params, rest, opt_state, key = carry
    key, batch_key = jax.random.split(key)
    idx = jax.random.randint(batch_key, (t.batch_size,), 0, x_train.shape[0])
    teacher = None if teacher_logits is None else {"logits": teacher_logits[idx]}
    apply_fn = lambda p: _forward(graphdef, p, rest, x_train[idx], train=True)
    (loss, (_, new_rest)), grads = jax.value_and_grad(kd_recipes.objective, argnums=2,
                                                      has_aux=True)(
        recipe, apply_fn, params, teacher, y_train[idx],
        kd_recipes.mdistiller_epoch(step, steps_per_epoch))
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
  history = []
  for chunk in tqdm(range(num_chunks), desc=desc or recipe.method, leave=False,
                    disable=not t.progress):
    carry, chunk_losses = run_chunk(carry, chunk * t.chunk_steps)
    history.append(np.asarray(test_accuracy(carry[0], carry[1])))
  if not np.all(np.isfinite(np.asarray(chunk_losses))):
    raise FloatingPointError(f"{recipe.method}: non-finite training loss "
                             f"{chunk_losses[:, -1]}.")
  accuracy = {"final": history[-1], "best": np.max(np.stack(history), axis=0)}
  return accuracy, (graphdef, carry[0], carry[1])


def run_embedded(c: ml_collections.ConfigDict) -> dict:
  """Teacher, then every recipe in ``c.recipes`` over ``c.seeds`` seeds; writes JSON + PNG."""
  start = time.time()
  data = datasets.flat(c.dataset, num_samples=c.num_samples, seed=c.data_seed)
  num_classes = int(data[1].max()) + 1
  in_features = data[0].shape[1]

  def model_fn(spec, recipe):
    kwargs = dict(spec.kwargs)
    if spec.name == "mlp":
      kwargs["in_features"] = in_features
    return lambda rngs: kd_recipes.build_student(
        recipe, functools.partial(vision.build, spec.name, num_classes), rngs, **kwargs)

  seeds = list(range(c.seeds))
  teacher_recipe = kd_recipes.Recipe("ce")
  teacher_acc, (graphdef, t_params, t_rest) = train_embedded_runs(
      model_fn(c.teacher, teacher_recipe), teacher_recipe, c, data, [c.teacher_seed],
      desc="teacher")
  teacher_logits = jax.jit(jax.vmap(
      lambda p, r, x: _forward(graphdef, p, r, x, train=False)[0]["logits"],
      in_axes=(0, 0, None)))(t_params, t_rest, jnp.asarray(data[0]))[0]
  results = {"teacher": float(teacher_acc["final"][0]), "methods": {}}
  for name, spec in tqdm(c.recipes.items(), desc="methods", disable=not c.train.progress):
    recipe = recipe_of(spec)
    accs, _ = train_embedded_runs(model_fn(c.student, recipe), recipe, c, data, seeds,
                                  teacher_logits if recipe.needs_teacher else None, desc=name)
    final, best = accs["final"], accs["best"]
    results["methods"][name] = {"accuracy": final.tolist(), "mean": float(final.mean()),
                                "std": float(final.std()), "best_accuracy": best.tolist(),
                                "best_mean": float(best.mean())}
  results["seconds"] = time.time() - start
  results["config"] = c.to_dict()
  write_results(results, c)
  return results


def results_table(results: dict) -> str:
  lines = ["| method | final test accuracy (%) mean +- std | best-evaluation mean (%) | seeds |",
           "|---|---|---|---|", f"| teacher | {100 * results['teacher']:.2f} | - | 1 |"]
  for method, r in results["methods"].items():
    lines.append(f"| {method} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | "
                 f"{100 * r['best_mean']:.2f} | {len(r['accuracy'])} |")
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


def _model_fn(spec, num_classes: int, recipe: kd_recipes.Recipe):
  return lambda rngs: kd_recipes.build_student(
      recipe, functools.partial(vision.build, spec.name, num_classes), rngs, **spec.kwargs)


def load_teacher(c: ml_collections.ConfigDict, mesh) -> tuple[nnx.GraphDef, dict]:
  """The teacher this launcher trained (``method="ce"``) from ``teacher_workdir``."""
  return kd_recipes.restore_teacher(
      _model_fn(c.teacher, c.num_classes, kd_recipes.Recipe("ce")),
      make_optimizer(c.optimizer, c.train.steps, c.train.steps_per_epoch), mesh,
      c.teacher_workdir)


def run_tfds(c: ml_collections.ConfigDict) -> dict[str, float]:
  """One run of ``c.recipe`` on TFDS data; evaluates every ``c.train.eval_every`` steps and
  returns, and writes to ``<workdir>/results.json``, ``kd_recipes.best_and_final``."""
  recipe = recipe_of(c.recipe)
  data_recipe = c.get("data_recipe", "crop_flip")
  if data_recipe not in ("crop_flip", "deit"):
    raise ValueError(f"`data_recipe` must be 'crop_flip' or 'deit', got {data_recipe!r}.")
  mesh = training.make_mesh(dict(c.mesh))
  t = c.train
  data = functools.partial(training.tfds_image_data, c.dataset, global_batch_size=t.batch_size,
                           data_dir=c.data_dir or None, num_threads=t.num_threads)
  train_batches = data("train", train=True, seed=t.seed, strong_view=recipe.needs_strong_view,
                       augment="deit" if data_recipe == "deit" else "standard")
  if data_recipe == "deit":  # mixed [B, C] soft labels (Mixup or CutMix per batch)
    train_batches = training.mixing.MixedBatches(train_batches, c.num_classes, seed=t.seed,
                                                 **c.mixing)
  teacher_graphdef, teacher_arrays = (load_teacher(c, mesh) if recipe.needs_teacher
                                      else (None, None))
  student_fn = _model_fn(c.student, c.num_classes, recipe)
  tx = make_optimizer(c.optimizer, t.steps, t.steps_per_epoch)
  _, _, result_shardings = training.abstract_train_state(student_fn, tx, mesh, seed=t.seed)
  eval_step = None
  history = []

  def eval_fn(graphdef, state):
    nonlocal eval_step
    if eval_step is None:
      eval_step = training.make_eval_step(graphdef, kd_recipes.accuracy_metrics,
                                          result_shardings, mesh)
    split = "validation" if c.dataset.startswith("imagenet") else "test"
    metrics = training.evaluate(eval_step, state, data(split, train=False), mesh)
    history.append({"step": int(state.step), "epoch": int(state.step) / t.steps_per_epoch,
                    "accuracy": metrics["accuracy"]})
    return metrics

  result = training.train(
      model_fn=student_fn, tx=tx, loss_fn=kd_recipes.batch_loss_fn(recipe, teacher_graphdef),
      train_data=kd_recipes.EpochBatches(train_batches, t.steps_per_epoch), mesh=mesh,
      workdir=c.workdir, num_steps=t.steps, seed=t.seed, log_every=t.log_every,
      checkpoint_every=t.checkpoint_every, eval_every=t.eval_every, eval_fn=eval_fn,
      progress=t.progress, frozen=teacher_arrays, config=c)
  if not history or history[-1]["step"] != t.steps:
    eval_fn(result.graphdef, result.state)
  summary = {**kd_recipes.best_and_final(history), "paper_top1": c.get("paper_top1"),
             "paper_reports": "best epoch"}
  if jax.process_index() == 0:
    with open(os.path.join(c.workdir, "results.json"), "w") as f:
      json.dump(summary, f, indent=1)
  print(f"{recipe.method}: {c.teacher.name} -> {c.student.name} on {c.dataset}: final top-1 "
        f"{100 * summary['accuracy']:.2f}%, best {100 * summary['best_accuracy']:.2f}% (epoch "
        f"{summary['best_epoch']:g}); paper {c.get('paper_top1')}", flush=True)
  return summary


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
