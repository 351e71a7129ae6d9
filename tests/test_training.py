"""Tests of the shared training core (logitlab.training), in process on 8 forced CPU devices.

The kill-and-resume and multi-process tests need subprocesses: tests/test_training_resume.py.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from jax.sharding import PartitionSpec as P

from logitlab import losses, training
from logitlab.radius_guard import radius_guard
from logitlab.training import data as data_lib

NUM_FEATURES, NUM_CLASSES = 12, 5


def _annotated(axes):
  return nnx.with_partitioning(nnx.initializers.lecun_normal(), axes, eager_sharding=False)


class TinyNet(nnx.Module):
  """Dense -> BatchNorm -> ReLU -> Dense, kernels annotated with logical axes."""

  def __init__(self, rngs: nnx.Rngs, hidden: int = 16):
    # No bias before BatchNorm: the loss does not depend on it, so its gradient is rounding
    # noise that Adam would amplify into device-count-dependent steps.
    self.hidden = nnx.Linear(NUM_FEATURES, hidden, kernel_init=_annotated(("embed", "mlp")),
                             use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(hidden, NUM_CLASSES, kernel_init=_annotated(("mlp", "embed")),
                           rngs=rngs)

  def __call__(self, x, *, train: bool = True):
    return self.head(jax.nn.relu(self.norm(self.hidden(x), use_running_average=not train)))


class Softmax(nnx.Module):
  """Multinomial logistic regression (for the float64 reference test)."""

  def __init__(self, rngs: nnx.Rngs):
    self.out = nnx.Linear(NUM_FEATURES, NUM_CLASSES, kernel_init=_annotated(("embed", "vocab")),
                          rngs=rngs)

  def __call__(self, x, *, train: bool = True):
    del train
    return self.out(x)


def _dataset(n=96, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
  y = (x[:, :NUM_CLASSES] * 2 + 0.5 * rng.normal(size=(n, NUM_CLASSES))).argmax(-1)
  return x, y.astype(np.int32)


def _loss_fn(model, batch, rng):
  del rng
  logits = model(batch["image"], train=True)
  return losses.cross_entropy(logits, batch["label"]), {}


def _train(tmp_path, name, mesh, *, model_fn=TinyNet, tx=None, steps=5, extra_args_fn=None,
           batch=32, **kwargs):
  x, y = _dataset()
  result = training.train(
      model_fn=model_fn, tx=tx or optax.adam(3e-2), loss_fn=_loss_fn,
      train_data=training.ResumableBatches(training.ArraySource(image=x, label=y),
                                           global_batch_size=batch, seed=1, num_threads=1),
      mesh=mesh, workdir=str(tmp_path / name), num_steps=steps, log_every=1,
      checkpoint_every=kwargs.pop("checkpoint_every", 1000), extra_args_fn=extra_args_fn,
      progress=False, **kwargs)
  records = training.read_jsonl(str(tmp_path / name / "metrics.jsonl"))
  return result, records


# --- mesh -----------------------------------------------------------------------------------

def test_make_mesh_axes_sizes_and_auto_types():
  mesh = training.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(training.make_mesh().shape)["data"] == jax.device_count()
  explicit = training.make_mesh({"data": 2, "fsdp": 4}, axis_types="explicit")
  assert all(t == jax.sharding.AxisType.Explicit for t in explicit.axis_types)
  with pytest.raises(ValueError, match="`axis_types`"):
    training.make_mesh({"data": 8}, axis_types="manual")


@pytest.mark.parametrize("shape, match", [
    ({"data": 3}, "needs 3 devices"), ({"data": -1, "fsdp": -1}, "at most one"),
    ({"model": 8}, "unknown mesh axes"), ({"data": -1, "fsdp": 3}, "not divisible")])
def test_make_mesh_rejects_bad_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    training.make_mesh(shape)


@pytest.mark.parametrize("axis_types", ["explicit", "auto"])
def test_put_batch_shards_leading_axis(axis_types):
  mesh = training.make_mesh({"data": 2, "fsdp": 4}, axis_types=axis_types)
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  placed = training.put_batch({"x": x}, mesh)["x"]
  assert placed.sharding.spec == P(("data", "fsdp"))
  assert len(placed.addressable_shards) == 8 and placed.addressable_shards[0].data.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(placed), x)
  with pytest.raises(ValueError, match=r"`local_batch` leaf \['x'\].*divisible by data x fsdp = 8"):
    training.put_batch({"x": x[:12]}, mesh)


# --- sharded state and step -----------------------------------------------------------------

@pytest.mark.parametrize("axis_types", ["explicit", "auto"])
def test_sharded_init_follows_logical_rules_and_optimizer_state_inherits(axis_types):
  mesh = training.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, axis_types=axis_types)
  _, state, _ = training.create_train_state(TinyNet, optax.adam(1e-3), mesh)
  assert state.params["hidden"]["kernel"].get_value().sharding.spec == P("fsdp", "tensor")
  # (16, 5): 5 classes do not split over fsdp=2, so that dimension is replicated.
  assert state.params["head"]["kernel"].get_value().sharding.spec == P("tensor")
  assert state.params["head"]["bias"].get_value().sharding.spec == P()
  adam_state = state.opt_state[0]
  assert adam_state.mu["hidden"]["kernel"].get_value().sharding.spec == P("fsdp", "tensor")
  assert adam_state.count.sharding.spec == P()
  # Each device holds a quarter of the (12, 16) kernel: FSDP x tensor.
  shard = state.params["hidden"]["kernel"].get_value().addressable_shards[0].data
  assert shard.shape == (6, 8)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  one = training.make_mesh({"data": 1}, devices=jax.devices()[:1])
  return _train(tmp_path_factory.mktemp("one"), "one", one)


@pytest.mark.parametrize("shape,axis_types", [({"data": 8}, "auto"), ({"fsdp": 8}, "explicit")])
def test_same_losses_on_one_and_eight_devices(tmp_path, shape, axis_types, single_device_run):
  result_1, records_1 = single_device_run
  result_8, records_8 = _train(tmp_path, "eight", training.make_mesh(shape, axis_types=axis_types))
  losses_1 = [r["loss"] for r in records_1]
  losses_8 = [r["loss"] for r in records_8]
  assert len(losses_1) == 5 and losses_1[-1] < losses_1[0]
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5, atol=2e-6)
  leaves_1 = jax.tree.leaves(jax.device_get(result_1.state))
  leaves_8 = jax.tree.leaves(jax.device_get(result_8.state))
  for a, b in zip(leaves_1, leaves_8):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis_types", ["explicit", "auto"])
def test_train_step_matches_float64_reference_with_data_order(tmp_path, axis_types):
  """Softmax regression + SGD: W <- W - lr * X^T (softmax(XW + b) - onehot(y)) / B."""
  lr, steps, batch = 0.5, 3, 16
  mesh = training.make_mesh({"data": 2, "fsdp": 4}, axis_types=axis_types)
  result, records = _train(tmp_path, "sgd", mesh, model_fn=Softmax, tx=optax.sgd(lr),
                           steps=steps, batch=batch)
  init = nnx.state(Softmax(nnx.Rngs(0)), nnx.Param)
  w = np.asarray(init["out"]["kernel"].get_value(), np.float64)
  b = np.asarray(init["out"]["bias"].get_value(), np.float64)
  x, y = _dataset()
  order = training.ResumableBatches(training.ArraySource(image=x, label=y),
                                    global_batch_size=batch, seed=1, num_threads=1)
  expected_losses = []
  for _ in range(steps):
    bx = next(order)
    xb, yb = bx["image"].astype(np.float64), bx["label"]
    z = xb @ w + b
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    expected_losses.append(-np.mean(np.log(p[np.arange(batch), yb])))
    residual = (p - np.eye(NUM_CLASSES)[yb]) / batch
    w, b = w - lr * xb.T @ residual, b - lr * residual.sum(0)
  np.testing.assert_allclose([r["loss"] for r in records], expected_losses, rtol=1e-5)
  params = jax.device_get(result.state.params)
  np.testing.assert_allclose(params["out"]["kernel"].get_value(), w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(params["out"]["bias"].get_value(), b, rtol=1e-4, atol=1e-6)
  assert int(result.state.step) == steps


_EXPLICIT, _AUTO = jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto


@pytest.fixture(scope="module")
def guarded_single_device_run(tmp_path_factory):
  one = training.make_mesh({"data": 1}, devices=jax.devices()[:1])
  return _train(tmp_path_factory.mktemp("g1"), "g1", one, tx=radius_guard(optax.sgd(5.0)),
                extra_args_fn=_guard_extra_args, steps=3)[1]


def _guard_extra_args(ctx):
  return {"logits_fn": lambda p: ctx.to_model(p)(ctx.batch["image"], train=False)}


# The jax.make_mesh default (Explicit), the library default (Auto) and a mixed mesh.
@pytest.mark.parametrize("axis_types", ["explicit", "auto", (_EXPLICIT, _EXPLICIT, _AUTO)])
def test_radius_guard_extra_args_sharded_match_single_device(tmp_path, axis_types,
                                                             guarded_single_device_run):
  """Batch on (data, fsdp), TinyNet's kernels on (fsdp, tensor), BatchNorm, the guard."""
  records_1 = guarded_single_device_run
  mesh = training.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, axis_types=axis_types)
  _, records_8 = _train(tmp_path, "g8", mesh, tx=radius_guard(optax.sgd(5.0)),
                        extra_args_fn=_guard_extra_args, steps=3)
  # The guard's r and capped count reach the logs; lr 5 is far past the radius: every step capped.
  assert [r["opt/num_capped"] for r in records_8] == [1.0, 2.0, 3.0]
  assert all(r["opt/ratio_proposed"] > 1.0 for r in records_8)
  assert all(r["opt/ratio"] <= 1.0 + 1e-5 for r in records_8)  # r of the applied step
  assert all(r["opt/num_mismatched"] == 0.0 for r in records_8)
  for key in ("loss", "opt/ratio_proposed", "opt/ratio"):
    np.testing.assert_allclose([r[key] for r in records_8], [r[key] for r in records_1],
                               rtol=1e-5)


def test_optimizer_scalars_names_and_skips_counts():
  params = {"w": jnp.ones((3,))}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9))
  scalars = training.optimizer_scalars(tx.init(params))
  assert set(scalars) == {"opt/1/hyperparams/learning_rate", "opt/1/hyperparams/momentum"}
  np.testing.assert_allclose(scalars["opt/1/hyperparams/learning_rate"], 0.1)


# --- checkpointing --------------------------------------------------------------------------

@pytest.mark.parametrize("axis_types", ["explicit", "auto"])
def test_checkpointer_roundtrip_exact_and_keeps_n(tmp_path, axis_types):
  mesh = training.make_mesh({"data": 2, "fsdp": 4}, axis_types=axis_types)
  tx = optax.adam(1e-2)
  graphdef, state, shardings = training.create_train_state(TinyNet, tx, mesh, seed=3)
  state = state.replace(step=state.step + 7, rng=state.rng + 1)
  checkpointer = training.Checkpointer(str(tmp_path / "ckpt"), save_interval_steps=2,
                                       max_to_keep=2)
  for step in (2, 3, 4, 6):
    checkpointer.save(step, state, {"position": step})
  checkpointer.wait()
  assert sorted(checkpointer.manager.all_steps()) == [4, 6]  # 3 is off-interval, 2 evicted
  _, abstract, _ = training.abstract_train_state(TinyNet, tx, mesh, seed=3)
  restored, data_state = checkpointer.restore(abstract)
  checkpointer.close()
  assert data_state == {"position": 6}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    # Explicit meshes type an eager result `P(None,)` where the abstract state says `P()`.
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  del graphdef, shardings


def test_checkpoint_dir_apart_from_workdir_and_resume_from_it(tmp_path, capsys):
  """Pod layout: checkpoints in a shared ``checkpoint_dir``, logs in a local ``workdir``."""
  mesh = training.make_mesh({"data": 2, "fsdp": 4})
  checkpoints = str(tmp_path / "shared" / "ckpt")
  _train(tmp_path, "logs", mesh, steps=2, checkpoint_every=2, checkpoint_dir=checkpoints)
  assert sorted(os.listdir(checkpoints)) == ["1", "2"]  # Orbax always saves the first step
  assert not (tmp_path / "logs" / "checkpoints").exists()
  result, records = _train(tmp_path, "logs", mesh, steps=3, checkpoint_every=2,
                           checkpoint_dir=checkpoints, allow_config_changes=["loop.num_steps"])
  assert "resumed from step 2" in capsys.readouterr().out
  assert int(result.state.step) == 3 and [r["step"] for r in records] == [1, 2, 3]
  with pytest.raises(ValueError, match="local or mounted directory.*checkpoint_dir"):
    training.train(model_fn=TinyNet, tx=optax.sgd(0.1), loss_fn=_loss_fn, train_data=None,
                   mesh=mesh, workdir="gs://bucket/run", num_steps=1)  # before any I/O


# --- data -----------------------------------------------------------------------------------

def _ids_source(n):
  return training.ArraySource(id=np.arange(n), x=np.arange(n, dtype=np.float32) * 10)


def test_resumable_batches_epochs_are_permutations_and_resume_exactly():
  batches = training.ResumableBatches(_ids_source(12), global_batch_size=4, seed=5,
                                      num_threads=1)
  seen = [next(batches)["id"] for _ in range(6)]
  epoch_1, epoch_2 = np.concatenate(seen[:3]), np.concatenate(seen[3:])
  assert sorted(epoch_1) == sorted(epoch_2) == list(range(12))
  assert not np.array_equal(epoch_1, epoch_2)  # a fresh permutation per epoch
  assert batches.get_state() == {"position": 6}
  resumed = training.ResumableBatches(_ids_source(12), global_batch_size=4, seed=5,
                                      num_threads=1)
  resumed.set_state({"position": 4})
  np.testing.assert_array_equal(next(resumed)["id"], seen[4])
  np.testing.assert_array_equal(next(resumed)["id"], seen[5])


def test_resumable_batches_host_sharding_partitions_each_global_batch():
  def host(p, count):
    return training.ResumableBatches(_ids_source(40), global_batch_size=8, seed=2,
                                     num_threads=1, process_index=p, process_count=count)
  single = host(0, 1)
  hosts = [host(p, 2) for p in range(2)]
  for _ in range(7):  # crosses an epoch boundary
    global_ids = next(single)["id"]
    local = [next(h)["id"] for h in hosts]
    assert all(len(ids) == 4 for ids in local)
    # Host p reads block p of the global batch: together, the single-host batch row for row.
    np.testing.assert_array_equal(np.concatenate(local), global_ids)
  with pytest.raises(ValueError, match="global_batch_size"):
    host(0, 3)


def test_eval_batches_pads_with_mask_and_splits_hosts():
  passes = [list(training.eval_batches(_ids_source(10), global_batch_size=4, num_threads=1,
                                       process_index=p, process_count=2)) for p in range(2)]
  # 10 examples -> 3 global batches of 4 (2 padding), each host reads 2 rows of each.
  assert [len(p) for p in passes] == [3, 3] and passes[0][0]["id"].shape == (2,)
  rows = [np.concatenate([p[i]["id"] for p in passes]) for i in range(3)]  # global batches
  np.testing.assert_array_equal(np.concatenate(rows), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
  ids = np.concatenate([b["id"][b["mask"]] for p in passes for b in p])
  assert sorted(ids) == list(range(10))
  assert sum(int((~b["mask"]).sum()) for p in passes for b in p) == 2


def test_image_augmentations_against_numpy():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
  out = data_lib.pad_crop_flip(image, np.random.default_rng(3))
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  candidates = [padded[t:t + 32, l:l + 32][:, ::f] for t in range(9) for l in range(9)
                for f in (1, -1)]
  assert any(np.array_equal(out, c) for c in candidates)
  mean, std = data_lib.NORMALIZATION["cifar10"]
  np.testing.assert_allclose(data_lib.normalize(image, mean, std),
                             (image / 255.0 - np.array(mean)) / np.array(std), atol=1e-5)
  tall = rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
  assert data_lib.random_resized_crop(tall, np.random.default_rng(1)).shape == (224, 224, 3)
  center = data_lib.resize_center_crop(tall)
  assert center.shape == (224, 224, 3)
  uniform = np.full((300, 200, 3), 77, np.uint8)  # resizing a constant image keeps it
  assert np.all(data_lib.resize_center_crop(uniform) == 77)


def test_mlkd_strong_view_is_randaugment_of_an_independent_crop():
  """``strong_view`` adds MLKD's strong image: its own crop + flip, then RandAugment(2, 10)
  (MLKD / LS mdistiller/dataset/cifar100.py:272-305, 321-342); deterministic in the rng."""
  from logitlab.training import randaugment
  image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
  transform = data_lib.image_transform("cifar100", train=True, strong_view=True)
  a = transform({"image": image, "label": 3}, np.random.default_rng(5))
  b = transform({"image": image, "label": 3}, np.random.default_rng(5))
  assert set(a) == {"image", "label", "image_strong"} and a["image_strong"].shape == (32, 32, 3)
  np.testing.assert_array_equal(a["image_strong"], b["image_strong"])
  assert not np.allclose(a["image"], a["image_strong"])
  # Every operation runs on a uint8 image and keeps its shape; Cutout paints the gray square.
  for op, low, high in randaugment.OPERATIONS:
    out = np.asarray(op(randaugment.Image.fromarray(image), (low + high) / 2))
    assert out.shape == image.shape and out.dtype == np.uint8
  cut = np.asarray(randaugment.cutout(randaugment.Image.fromarray(image), 0.25,
                                      np.random.default_rng(1)))
  assert np.sum(np.all(cut == randaugment.CUTOUT_COLOR, axis=-1)) >= 16
  with pytest.raises(ValueError, match="strong_view"):
    data_lib.image_transform("cifar100", train=False, strong_view=True)


def test_tfds_pipelines_with_mock_data():
  with tfds.testing.mock_data(num_examples=24):
    train = training.tfds_image_data("cifar100", "train", global_batch_size=8, train=True,
                                     seed=0, num_threads=1)
    first = [next(train) for _ in range(4)]
    assert first[0]["image"].shape == (8, 32, 32, 3) and first[0]["image"].dtype == np.float32
    assert set(first[0]) == {"image", "label"}
    again = training.tfds_image_data("cifar100", "train", global_batch_size=8, train=True,
                                     seed=0, num_threads=1)
    again.set_state({"position": 3})
    np.testing.assert_array_equal(next(again)["image"], first[3]["image"])
    imagenet = training.tfds_image_data("imagenet2012", "train", global_batch_size=2,
                                        train=True, num_threads=1)
    assert next(imagenet)["image"].shape == (2, 224, 224, 3)
    evaluation = list(training.tfds_image_data("imagenet2012", "validation",
                                               global_batch_size=16, train=False,
                                               num_threads=1))
    assert sum(int(b["mask"].sum()) for b in evaluation) == 24
    assert evaluation[0]["image"].shape == (16, 224, 224, 3)


def test_array_source_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match="leading axis"):
    training.ArraySource(x=np.zeros(3), y=np.zeros(4))


# --- metrics --------------------------------------------------------------------------------

def test_metrics_writer_jsonl_tensorboard_and_resume_truncation(tmp_path):
  writer = training.MetricsWriter(str(tmp_path), total_steps=4, progress=False)
  for step in range(1, 5):
    writer.write(step, {"loss": jnp.float32(1.0 / step)})
  writer.close()
  assert [r["step"] for r in training.read_jsonl(writer.path)] == [1, 2, 3, 4]
  assert os.listdir(tmp_path / "tb")
  resumed = training.MetricsWriter(str(tmp_path), total_steps=4, start_step=2, progress=False)
  resumed.write(3, {"loss": 0.5})
  resumed.close()
  records = training.read_jsonl(resumed.path)
  assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["loss"] == 0.5
  with open(resumed.path) as f:
    assert all(isinstance(json.loads(line)["time"], float) for line in f)


def test_batch_checksum_is_order_sensitive_and_exact():
  labels = np.array([3, 0, 7, 7, 1], np.int32)
  assert float(training.batch_checksum(labels)) == 3 * 1 + 7 * 3 + 7 * 4 + 1 * 5
  assert float(training.batch_checksum(labels[::-1])) != float(training.batch_checksum(labels))
  big = np.full(180, 999, np.int64)  # the documented exact range: sum < 2**24
  assert float(training.batch_checksum(big)) == 999 * 180 * 181 // 2
  with pytest.raises(ValueError, match="1-D integer"):
    training.batch_checksum(np.zeros((2, 3), np.int32))


def test_plot_runs_writes_png_and_skips_missing_keys(tmp_path):
  from experiments import plot_runs
  writer = training.MetricsWriter(str(tmp_path / "run"), total_steps=3, tensorboard=False,
                                  progress=False)
  writer.write(1, {"loss": 2.0})
  writer.write(2, {"loss": 1.0})
  writer.write(2, {"eval/accuracy": 0.5})
  writer.close()
  records = training.read_jsonl(writer.path)
  assert plot_runs.series(records, "loss") == ([1, 2], [2.0, 1.0])
  assert plot_runs.series(records, "eval/accuracy") == ([2], [0.5])
  out = plot_runs.plot_runs([str(tmp_path / "run")], ["loss", "eval/accuracy"],
                            str(tmp_path / "p.png"))
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
