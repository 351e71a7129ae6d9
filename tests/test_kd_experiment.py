"""KD experiment: the loss dispatcher, the embedded run end to end, the TFDS path on mock data."""

import glob
import importlib
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
import tensorflow_datasets as tfds

from experiments import kd
from experiments.configs import (kd_cifar100_teacher, kd_embedded, kd_imagenet_teacher,
                                 kd_tfds_base)
from logitlab import kd_recipes, training
from logitlab.models import vision


@pytest.mark.parametrize("name", ["kd_ls", "dkd_ls"])
def test_standardized_recipes_ignore_teacher_shift_and_scale(name):
  rng = np.random.default_rng(2)
  zs, zt = (jnp.asarray(rng.normal(size=(5, 7)), jnp.float32) for _ in range(2))
  y = jnp.asarray(rng.integers(0, 7, size=5))
  recipe = kd.recipe_of(kd_tfds_base.recipe_block(name, kd_tfds_base.CIFAR100_RECIPES))
  plain = kd.recipe_of(kd_tfds_base.recipe_block(name[:-3], kd_tfds_base.CIFAR100_RECIPES))
  total = lambda r, t: sum(kd_recipes.loss_terms(r, {"logits": zs}, {"logits": t}, y,
                                                 100.0).values())
  np.testing.assert_allclose(total(recipe, zt), total(recipe, 3.0 * zt + 50.0), rtol=1e-4)
  assert not np.isclose(total(plain, 3.0 * zt + 50.0), total(recipe, zt), rtol=1e-3)


def test_unknown_method_and_unknown_recipe_keys_raise():
  with pytest.raises(ValueError, match="`method` must be one of"):
    kd_recipes.Recipe("fitnet")
  with pytest.raises(ValueError, match="unknown keys"):
    kd_recipes.Recipe.from_config({"method": "kd", "kd_temperatur": 4.0})
  with pytest.raises(ValueError, match="logit_standardization"):
    kd_recipes.Recipe("nkd", logit_standardization=True)


def test_every_paper_row_config_is_consistent_with_its_teacher():
  teachers = {"cifar100": kd_cifar100_teacher, "imagenet2012": kd_imagenet_teacher}
  rows = [os.path.basename(p)[:-3] for p in sorted(glob.glob(
      os.path.join(os.path.dirname(kd_tfds_base.__file__), "kd_*_*.py")))]
  rows = [r for r in rows
          if not r.endswith(("_teacher", "kd_tfds_base")) and not r.startswith("kd_embedded")]
  assert len(rows) >= 27, rows  # CIFAR-100 / ImageNet rows + USKD ResNet-18 / DeiT-Tiny
  for path in rows:
    c = importlib.import_module(f"experiments.configs.{path}").get_config()
    recipe = kd.recipe_of(c.recipe)
    assert c.paper_top1 is not None and c.run_status == "not run", path
    assert {c.teacher.name, c.student.name} <= set(vision.REGISTRY), path
    assert c.train.eval_every == c.train.steps_per_epoch, path  # best epoch is recorded
    if not recipe.needs_teacher:
      continue
    # The student restores the checkpoint the teacher config writes, into an optimizer state
    # of the same structure (MLKD rows change the learning rate and schedule only).
    teacher = teachers[c.dataset].get_config(c.teacher.name)
    assert c.teacher_workdir == teacher.workdir, path
    assert c.num_classes == teacher.num_classes, path
    structure = lambda o: (o.momentum, o.nesterov, o.weight_decay > 0)
    assert structure(c.optimizer) == structure(teacher.optimizer), path


def _shrunk_embedded_config(workdir):
  c = kd_embedded.get_config()
  c.dataset = "digits"
  c.teacher.name, c.teacher.kwargs = "mlp", {"hidden": (64,)}
  c.student.kwargs = {"hidden": (16,)}
  c.recipes = {"kd": c.recipes.kd}  # one method keeps the compile count at 2 runs
  c.seeds = 2
  c.train.update({"steps": 300, "chunk_steps": 150, "progress": False})
  c.workdir = str(workdir)
  return c


def test_embedded_experiment_end_to_end(tmp_path):
  results = kd.run(_shrunk_embedded_config(tmp_path))
  # Chance is 10% (balanced digits); a broken loss, label or data path stays near it.
  assert results["teacher"] > 0.85
  accuracy = results["methods"]["kd"]["accuracy"]
  assert len(accuracy) == 2 and min(accuracy) > 0.6, accuracy
  # Seeds are independent runs, not copies.
  assert results["methods"]["kd"]["accuracy"][0] != results["methods"]["kd"]["accuracy"][1]
  best = results["methods"]["kd"]["best_accuracy"]
  assert all(b >= a for a, b in zip(accuracy, best))  # best of the chunk evaluations
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["methods"]["kd"]["mean"] == pytest.approx(results["methods"]["kd"]["mean"])
  assert (tmp_path / "results.png").stat().st_size > 1000


def _shrunk_tfds_config(method, tmp_path):
  c = kd_tfds_base.cifar100("resnet8", "resnet8", method)
  tiny = {"widths": (4, 4, 4, 4)}
  c.teacher.kwargs, c.student.kwargs = tiny, tiny
  c.teacher_workdir = str(tmp_path / "teacher")
  c.workdir = c.teacher_workdir if method == "ce" else str(tmp_path / method)
  c.train.update({"steps": 2, "steps_per_epoch": 1, "batch_size": 8, "log_every": 1,
                  "eval_every": 0, "checkpoint_every": 2, "num_threads": 1, "progress": False})
  return c


def test_tfds_path_with_mock_cifar100(tmp_path):
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(FileNotFoundError, match="No teacher checkpoint"):
      kd.run(_shrunk_tfds_config("kd", tmp_path))
    teacher_metrics = kd.run(_shrunk_tfds_config("ce", tmp_path))
    # The Orbax restore gives the trained teacher, not a fresh init: BatchNorm's running
    # statistics (init mean 0, var 1) moved during the 2 teacher steps.
    student_config = _shrunk_tfds_config("dkd", tmp_path)
    graphdef, arrays = kd.load_teacher(student_config,
                                       training.make_mesh(dict(student_config.mesh)))
    teacher = nnx.merge(graphdef, arrays["params"], arrays["model_state"])
    assert not np.allclose(teacher.stem.bn.mean[...], 0.0)
    assert not np.allclose(teacher.stem.bn.var[...], 1.0)
    student_metrics = kd.run(_shrunk_tfds_config("dkd", tmp_path))
  for metrics in (teacher_metrics, student_metrics):
    assert 0.0 <= metrics["accuracy"] <= metrics["best_accuracy"] <= 1.0
  saved = json.loads((tmp_path / "dkd" / "results.json").read_text())
  assert saved["accuracy"] == student_metrics["accuracy"] and len(saved["history"]) == 1
  assert os.path.isdir(tmp_path / "teacher" / "checkpoints" / "2")
  records = [json.loads(line) for line in open(tmp_path / "dkd" / "metrics.jsonl")]
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == [1, 2]
  assert all(np.isfinite(r["loss"]) and "dkd" in r for r in train_records)


@pytest.mark.slow  # ~1-2 min of XLA compiles (two views x student and teacher); run with -m slow
def test_tfds_path_mlkd_strong_view_with_mock_cifar100(tmp_path):
  """MLKD + LS on the TFDS path: the strong RandAugment view reaches student and teacher."""
  with tfds.testing.mock_data(num_examples=16):
    kd.run(_shrunk_tfds_config("ce", tmp_path))
    metrics = kd.run(_shrunk_tfds_config("mlkd_ls", tmp_path))
  assert 0.0 <= metrics["accuracy"] <= metrics["best_accuracy"] <= 1.0
  records = [json.loads(line) for line in open(tmp_path / "mlkd_ls" / "metrics.jsonl")]
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == [1, 2]
  assert all(np.isfinite(r["loss"]) and {"ce", "kd", "cc", "bc"} <= set(r)
             for r in train_records)


@pytest.mark.slow  # ~30-60 s: TFDS mock ImageNet at 224 px, RandAugment, a 2-block ViT; -m slow
def test_tfds_path_uskd_deit_recipe_with_mock_imagenet(tmp_path):
  """The USKD DeiT-Tiny row end to end: DeiT augmentation, Mixup / CutMix soft labels, AdamW
  with warmup + cosine, label smoothing, one checkpointed run."""
  from experiments.configs import kd_imagenet_uskd_deit_tiny
  c = kd_imagenet_uskd_deit_tiny.get_config()
  c.student.kwargs.update({"dim": 24, "depth": 2, "num_heads": 2})
  c.workdir = str(tmp_path / "uskd")
  c.train.update({"steps": 3, "steps_per_epoch": 1, "batch_size": 8, "log_every": 1,
                  "eval_every": 0, "checkpoint_every": 3, "num_threads": 1, "progress": False})
  c.optimizer.warmup_epochs = 2
  with tfds.testing.mock_data(num_examples=16):
    metrics = kd.run(c)
  assert 0.0 <= metrics["accuracy"] <= metrics["best_accuracy"] <= 1.0
  records = [json.loads(line) for line in open(tmp_path / "uskd" / "metrics.jsonl")]
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and {"ce", "target", "non_target", "weak"} <= set(r)
             for r in train_records)


def test_epoch_batches_and_best_and_final():
  source = training.ArraySource(image=np.zeros((8, 2), np.float32),
                                label=np.zeros(8, np.int32))
  batches = kd_recipes.EpochBatches(
      training.ResumableBatches(source, global_batch_size=2, seed=0, num_threads=1), 3)
  assert [next(batches)["epoch"][0] for _ in range(7)] == [1, 1, 1, 2, 2, 2, 3]
  batches.set_state({"position": 6})
  assert next(batches)["epoch"].tolist() == [3.0, 3.0]  # resume keeps the epoch
  history = [{"step": 1, "epoch": 1.0, "accuracy": 0.3}, {"step": 2, "epoch": 2.0,
                                                          "accuracy": 0.5},
             {"step": 3, "epoch": 3.0, "accuracy": 0.4}]
  summary = kd_recipes.best_and_final(history)
  assert (summary["accuracy"], summary["best_accuracy"], summary["best_epoch"]) == (0.4, 0.5, 2.0)
