"""KD experiment: the loss dispatcher, the embedded run end to end, the TFDS path on mock data."""

import glob
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import kd
from experiments.configs import (kd_cifar100_teacher, kd_embedded, kd_imagenet_teacher,
                                 kd_tfds_base)
from logitlab import losses, training
from logitlab.models import vision


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _outputs(logits):
  return {"logits": logits, "aux_logits": logits[:, ::-1], "middle_logits": 0.5 * logits}


def test_kd_method_matches_float64_reference():
  rng = np.random.default_rng(0)
  zs, zt = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
  y = rng.integers(0, 5, size=6)
  c = kd_embedded.loss_defaults()
  loss, parts = kd.distillation_loss("kd", c, _outputs(jnp.asarray(zs, jnp.float32)),
                                     jnp.asarray(zt, jnp.float32), jnp.asarray(y), 0.0)
  t = c.kd_temperature
  log_ps, log_pt = _log_softmax64(zs / t), _log_softmax64(zt / t)
  kl = t**2 * np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), -1))
  ce = -np.mean(_log_softmax64(zs)[np.arange(6), y])
  np.testing.assert_allclose(loss, c.kd_ce_weight * ce + c.kd_weight * kl, rtol=1e-5)
  assert set(parts) == {"ce", "kd"}


def test_dkd_warmup_starts_from_plain_cross_entropy():
  rng = np.random.default_rng(1)
  zs, zt = (jnp.asarray(rng.normal(size=(4, 6)), jnp.float32) for _ in range(2))
  y = jnp.asarray([0, 1, 2, 3])
  c = kd_embedded.loss_defaults(dkd_warmup_epochs=10.0)
  at_start, parts = kd.distillation_loss("dkd", c, _outputs(zs), zt, y, 0.0)
  np.testing.assert_allclose(at_start, parts["ce"], rtol=1e-6)
  halfway, _ = kd.distillation_loss("dkd", c, _outputs(zs), zt, y, 5.0)
  np.testing.assert_allclose(halfway, parts["ce"] + 0.5 * parts["dkd"], rtol=1e-5)


@pytest.mark.parametrize("method", ["kd_ls", "dkd_ls"])
def test_standardized_methods_ignore_teacher_shift_and_scale(method):
  rng = np.random.default_rng(2)
  zs, zt = (jnp.asarray(rng.normal(size=(5, 7)), jnp.float32) for _ in range(2))
  y = jnp.asarray(rng.integers(0, 7, size=5))
  c = kd_embedded.loss_defaults()
  base, _ = kd.distillation_loss(method, c, _outputs(zs), zt, y, 100.0)
  moved, _ = kd.distillation_loss(method, c, _outputs(zs), 3.0 * zt + 50.0, y, 100.0)
  np.testing.assert_allclose(base, moved, rtol=1e-4)
  plain, _ = kd.distillation_loss(method[:-3], c, _outputs(zs), 3.0 * zt + 50.0, y, 100.0)
  assert not np.isclose(plain, base, rtol=1e-3)


def test_dhkd_puts_the_logit_loss_on_the_auxiliary_head_only():
  rng = np.random.default_rng(3)
  zs, zt = (jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(2))
  y = jnp.asarray([0, 1, 2, 3])
  c = kd_embedded.loss_defaults()

  def loss(head1, head2):
    return kd.distillation_loss("dhkd", c, {"logits": head1, "aux_logits": head2}, zt, y, 0.0)

  (_, parts), (g1, g2) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(zs, zs + 1.0)
  assert set(parts) == {"ce", "binary_kl", "kd"}
  # Head 2 only sees BinaryKLNorm, whose gradient is (T/2) tanh((z2 - zt) / 2T) / N.
  t = c.dhkd_temperature
  expected = c.dhkd_alpha * (t / 2) * np.tanh((np.asarray(zs) + 1.0 - np.asarray(zt)) / (2 * t))
  np.testing.assert_allclose(g2, expected / 4, rtol=1e-4, atol=1e-7)
  assert np.all(np.isfinite(g1)) and not np.allclose(g1, 0.0)


def test_ce_nkd_and_uskd_methods_use_their_config_weights():
  rng = np.random.default_rng(4)
  zs, zt = (jnp.asarray(rng.normal(size=(5, 6)) * 2, jnp.float32) for _ in range(2))
  y = jnp.asarray(rng.integers(0, 6, size=5))
  c = kd_embedded.loss_defaults(nkd_temperature=2.0, nkd_gamma=1.5, uskd_alpha=0.3,
                                uskd_beta=0.2, uskd_mu=0.4)
  outputs = _outputs(zs)
  ce = losses.cross_entropy(zs, y)
  np.testing.assert_allclose(kd.distillation_loss("ce", c, outputs, zt, y, 0.0)[0], ce)
  np.testing.assert_allclose(kd.distillation_loss("nkd", c, outputs, zt, y, 0.0)[0],
                             ce + losses.nkd(zs, zt, y, temperature=2.0, gamma=1.5), rtol=1e-6)
  # USKD is teacher-free and ranks with the weak head on the middle feature.
  uskd, parts = kd.distillation_loss("uskd", c, outputs, None, y, 0.0)
  want = losses.uskd(zs, outputs["middle_logits"], y, alpha=0.3, beta=0.2, mu=0.4)[0]
  np.testing.assert_allclose(uskd, want, rtol=1e-6)
  assert set(parts) == {"ce", "target", "non_target", "weak"}


def test_unknown_method_raises():
  with pytest.raises(ValueError, match="`method` must be one of"):
    kd.student_heads("fitnet")


def test_every_paper_row_config_is_consistent_with_its_teacher():
  teachers = {"cifar100": kd_cifar100_teacher, "imagenet2012": kd_imagenet_teacher}
  rows = [os.path.basename(p)[:-3] for p in sorted(glob.glob(
      os.path.join(os.path.dirname(kd_tfds_base.__file__), "kd_*_*.py")))]
  rows = [r for r in rows if not r.endswith(("_teacher", "kd_tfds_base", "kd_embedded"))]
  assert len(rows) >= 15, rows  # 14 CIFAR-100 / ImageNet KD rows + USKD ResNet-18
  for path in rows:
    c = importlib.import_module(f"experiments.configs.{path}").get_config()
    assert c.method in kd.METHODS and c.paper_top1 is not None, path
    assert {c.teacher.name, c.student.name} <= set(vision.REGISTRY), path
    if c.method in kd.TEACHER_FREE:
      continue
    # The student restores the checkpoint the teacher config writes, into an optimizer state
    # built from the student's optimizer block: both must agree.
    teacher = teachers[c.dataset].get_config(c.teacher.name)
    assert c.teacher_workdir == teacher.workdir, path
    assert c.optimizer == teacher.optimizer and c.num_classes == teacher.num_classes, path


def _shrunk_embedded_config(workdir):
  c = kd_embedded.get_config()
  c.dataset = "digits"
  c.teacher.name, c.teacher.kwargs = "mlp", {"hidden": (64,)}
  c.student.kwargs = {"hidden": (16,)}
  c.methods = ("kd",)  # one method keeps the compile count (the cost here) at 2 runs
  c.seeds = 2
  c.train.update({"steps": 300, "chunk_steps": 300, "progress": False})
  c.loss.dkd_warmup_epochs = 1.0
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
    teacher = kd.load_teacher(student_config, training.make_mesh(dict(student_config.mesh)))
    assert not np.allclose(teacher.stem.bn.mean[...], 0.0)
    assert not np.allclose(teacher.stem.bn.var[...], 1.0)
    student_metrics = kd.run(_shrunk_tfds_config("dkd", tmp_path))
  for metrics in (teacher_metrics, student_metrics):
    assert 0.0 <= metrics["accuracy"] <= 1.0
  assert os.path.isdir(tmp_path / "teacher" / "checkpoints" / "2")
  records = [json.loads(line) for line in open(tmp_path / "dkd" / "metrics.jsonl")]
  train_records = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_records] == [1, 2]
  assert all(np.isfinite(r["loss"]) and "dkd" in r for r in train_records)
