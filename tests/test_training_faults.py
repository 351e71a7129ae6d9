"""Faults of the training core, in process: divergence, damaged checkpoints, unwritable
storage, changed configs, invalid settings. Signals and multi-process preemption run
subprocesses: tests/test_training_resume.py.
"""
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from logitlab import losses, training
from logitlab.training import integrity, run_config

NUM_FEATURES, NUM_CLASSES, BATCH = 6, 3, 8


class Net(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, hidden: int = 8):
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"),
                                 eager_sharding=False)
    self.hidden = nnx.Linear(NUM_FEATURES, hidden, kernel_init=init, rngs=rngs)
    self.out = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


class PoisonedBatches:
  """Deterministic batches; the batch used by step ``poison_at`` carries ``poison=1``, which
  the loss turns into NaN. Batches whose seed is in ``drop`` are left out of the stream."""

  def __init__(self, poison_at: int = 0, drop=()):
    self.position, self.poison_at, self.drop = 0, poison_at, drop

  def __next__(self):
    seed = self.position + sum(d <= self.position for d in self.drop)
    rng = np.random.default_rng(seed)
    self.position += 1
    x = rng.normal(size=(BATCH, NUM_FEATURES)).astype(np.float32)
    return {"x": x, "y": (x[:, :NUM_CLASSES]).argmax(-1).astype(np.int32),
            "poison": np.full((BATCH,), float(self.position == self.poison_at), np.float32)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def _loss_fn(model, batch, rng):
  del rng
  loss = losses.cross_entropy(model(batch["x"]), batch["y"])
  return loss + jnp.where(batch["poison"].max() > 0, jnp.nan, 0.0), {}


def _train(workdir, *, steps=4, poison_at=0, drop=(), model_fn=Net, **kwargs):
  kwargs = {"checkpoint_every": 2, "log_every": 1, **kwargs}
  return training.train(model_fn=model_fn, tx=kwargs.pop("tx", optax.adam(1e-2)),
                        loss_fn=_loss_fn, train_data=PoisonedBatches(poison_at, drop),
                        mesh=training.make_mesh({"data": 2}, jax.devices()[:2]),
                        workdir=str(workdir), num_steps=steps, progress=False, **kwargs)


def _finite(tree):
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


# --- divergence ------------------------------------------------------------------------------

def test_nonfinite_loss_stops_naming_the_step_and_never_saves_nonfinite_state(tmp_path):
  with pytest.raises(training.Diverged, match="at step 5") as error:
    _train(tmp_path / "run", steps=10, poison_at=5, checkpoint_every=2, log_every=4,
           keep_checkpoints=2)
  assert error.value.step == 5
  checkpointer = training.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  assert checkpointer.all_steps() == [2, 4]  # keep-2 kept the newest finite ones; 6 never saved
  graphdef, abstract, _ = training.abstract_train_state(
      Net, optax.adam(1e-2), training.make_mesh({"data": 2}, jax.devices()[:2]))
  state, data = checkpointer.restore(abstract)
  assert int(state.step) == 4 and data == {"position": 4} and _finite(state)
  checkpointer.close()
  records = training.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records] == [4]  # log_every=4: no step-8 record of a halted run
  del graphdef


def test_skip_mode_drops_nonfinite_steps_counts_them_and_finishes(tmp_path):
  with pytest.warns(UserWarning, match="1 step\\(s\\) with non-finite values skipped"):
    result = _train(tmp_path / "skip", steps=6, poison_at=3, on_nonfinite="skip")
  records = training.read_jsonl(str(tmp_path / "skip" / "metrics.jsonl"))
  assert [r["nonfinite_steps"] for r in records] == [0, 0, 1, 1, 1, 1]
  assert np.isnan(records[2]["loss"]) and _finite(result.state)
  assert int(result.state.step) == 6 and int(result.state.nonfinite_steps) == 1
  # The skipped step changed nothing (Adam's count included): the result equals 5 steps on
  # the stream with that batch (seed 2) left out.
  reference = _train(tmp_path / "ref", steps=5, drop=(2,))
  for a, b in zip(jax.tree.leaves((reference.state.params, reference.state.opt_state)),
                  jax.tree.leaves((result.state.params, result.state.opt_state))):
    np.testing.assert_array_equal(a, b)


def test_checkpointer_refuses_nonfinite_state(tmp_path):
  checkpointer = training.Checkpointer(str(tmp_path / "ckpt"), save_interval_steps=1,
                                       async_save=False)
  with pytest.raises(training.Diverged, match=r"step 3.*\['w'\]"):
    checkpointer.save(3, {"w": jnp.array([1.0, jnp.inf]), "n": jnp.arange(2)}, {"position": 3})
  assert checkpointer.all_steps() == []
  checkpointer.close()


def test_train_step_stop_mode_freezes_state_on_nonfinite_step():
  mesh = training.make_mesh({"data": 2}, jax.devices()[:2])
  graphdef, state, shardings = training.create_train_state(Net, optax.sgd(0.1), mesh)
  step = training.make_train_step(graphdef, optax.sgd(0.1), _loss_fn, shardings, mesh)
  data = PoisonedBatches(poison_at=2)
  state, _ = step(state, training.put_batch(next(data), mesh))
  before = jax.device_get(state)
  for _ in range(2):  # the poisoned batch, then a clean one: both leave the state frozen
    state, metrics = step(state, training.put_batch(next(data), mesh))
  after = jax.device_get(state)
  assert int(after.step) == 1 and int(after.nonfinite_steps) == 2
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(a, b)
  assert metrics["nonfinite_steps"] == 2


# --- damaged checkpoints ---------------------------------------------------------------------

def _three_checkpoints(directory):
  rng = np.random.default_rng(0)
  trees = {s: {"w": jnp.asarray(rng.normal(size=(64, 64)).astype(np.float32)),
               "b": jnp.arange(4, dtype=jnp.int32) + s} for s in (1, 2, 3)}
  checkpointer = training.Checkpointer(str(directory), save_interval_steps=1, async_save=False)
  for s, tree in trees.items():
    checkpointer.save(s, tree, {"position": s}, config={"seed": 0})
  checkpointer.close()
  return trees


def _largest_array_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "state")
           for f in names if "/d/" in os.path.join(root, f) + "/"]
  return max(files, key=os.path.getsize)


def _flip_bytes(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(8)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0x5A for b in chunk))


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)


def _bad_json(step_dir):
  with open(step_dir / "data" / "metadata", "w") as f:
    f.write('{"position": ')


def _no_state(step_dir):
  import shutil
  shutil.rmtree(step_dir / "state")


def _abstract(trees):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trees[3])


@pytest.mark.parametrize("damage, reason", [
    (_flip_bytes, "checksum mismatch in 1 array\\(s\\): \\['w'\\]"),
    (_truncate, "step 3"), (_bad_json, "step 3"), (_no_state, "step 3")])
def test_damaged_newest_checkpoint_falls_back_to_previous_with_warning(tmp_path, damage, reason):
  trees = _three_checkpoints(tmp_path / "ckpt")
  damage(tmp_path / "ckpt" / "3")
  checkpointer = training.Checkpointer(str(tmp_path / "ckpt"))
  with pytest.warns(UserWarning, match=f"step 3 .*is damaged.*3.damaged") as caught:
    restored = checkpointer.restore_latest_intact(_abstract(trees))
  assert any(__import__("re").search(reason, str(w.message)) for w in caught)
  assert restored.step == 2 and restored.data == {"position": 2}
  assert restored.config == {"seed": 0}
  for a, b in zip(jax.tree.leaves(trees[2]), jax.tree.leaves(restored.state)):
    np.testing.assert_array_equal(a, b)
  assert (tmp_path / "ckpt" / "3.damaged").is_dir() and checkpointer.all_steps() == [1, 2]
  # Training continues: step 3 can be saved again.
  assert checkpointer.save(3, trees[3], {"position": 3}, force=True)
  checkpointer.close()


def test_flipped_bytes_would_restore_silently_without_checksums(tmp_path):
  """Why checksums: Orbax alone reads the flipped bytes back as different values."""
  trees = _three_checkpoints(tmp_path / "ckpt")
  _flip_bytes(tmp_path / "ckpt" / "3")
  import orbax.checkpoint as ocp
  raw = ocp.StandardCheckpointer().restore(tmp_path / "ckpt" / "3" / "state", _abstract(trees))
  assert not np.array_equal(raw["w"], trees[3]["w"])  # no error, wrong values


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
  trees = _three_checkpoints(tmp_path / "ckpt")
  for step, damage in ((1, _no_state), (2, _bad_json), (3, _flip_bytes)):
    damage(tmp_path / "ckpt" / str(step))
  checkpointer = training.Checkpointer(str(tmp_path / "ckpt"))
  with pytest.warns(UserWarning), pytest.raises(training.CheckpointCorruptError,
                                                match="No intact checkpoint(.|\n)*step 1"):
    checkpointer.restore_latest_intact(_abstract(trees))
  with pytest.raises(training.CheckpointCorruptError, match="step 2"):
    checkpointer.restore(_abstract(trees), step=2)
  checkpointer.close()


@pytest.mark.parametrize("axis_types", ["explicit", "auto"])
def test_checksums_are_sharding_independent_and_detect_one_changed_word(axis_types):
  mesh = training.make_mesh({"data": 2, "fsdp": 4}, axis_types=axis_types)
  x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
  tree = {"x": x, "h": x.astype(jnp.bfloat16), "i": np.arange(8, dtype=np.int64),
          "k": np.array([True, False])}
  sharded = dict(tree, x=jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("fsdp", "data"))))
  assert integrity.inspect_tree(tree) == integrity.inspect_tree(sharded)
  changed = dict(tree, x=x.copy())
  changed["x"][3, 5] = np.nextafter(changed["x"][3, 5], np.float32(np.inf))
  swapped = dict(tree, x=x[::-1].copy())
  assert integrity.compare(integrity.inspect_tree(tree)[0],
                           integrity.inspect_tree(changed)[0]) == ["['x']"]
  assert integrity.compare(integrity.inspect_tree(tree)[0],
                           integrity.inspect_tree(swapped)[0]) == ["['x']"]


# --- unwritable storage ----------------------------------------------------------------------

_UNWRITABLE = r"""
import os, shutil, sys
import jax.numpy as jnp
from logitlab import training
root = sys.argv[1]
try:  # the parent of the checkpoint directory is a regular file
  open(os.path.join(root, "file"), "w").close()
  training.Checkpointer(os.path.join(root, "file", "ckpt"))
except training.CheckpointStorageError as e:
  print("at start:", e, flush=True)
# Writable at start, gone before the first save (storage lost mid-run): the case that used to
# leave Orbax's background threads waiting 20 minutes, so that the process never exited.
checkpointer = training.Checkpointer(os.path.join(root, "ckpt"), save_interval_steps=1)
shutil.rmtree(os.path.join(root, "ckpt"))
open(os.path.join(root, "ckpt"), "w").close()
try:
  checkpointer.save(1, {"w": jnp.ones(3)}, {"position": 1})
except training.CheckpointStorageError as e:
  print("at save:", e, flush=True)
  sys.exit(3)
"""


def test_unwritable_checkpoint_dir_raises_clearly_and_process_exits(tmp_path):
  start = time.time()
  process = subprocess.run([sys.executable, "-c", _UNWRITABLE, str(tmp_path)],
                           capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(os.path.dirname(__file__)),
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert process.returncode == 3, process.stdout + process.stderr[-2000:]
  assert "at start: Checkpoint directory" in process.stdout
  assert "not writable" in process.stdout and "/file/ckpt" in process.stdout
  assert "at save: Cannot write checkpoint step 1" in process.stdout
  assert "Not a directory" in process.stdout
  assert time.time() - start < 60


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("log_every", 0), ("checkpoint_every", 0), ("keep_checkpoints", 0), ("steps", 0),
    ("eval_every", -1), ("seed", -1), ("log_every", 1.5), ("on_nonfinite", "ignore"),
    ("grad_accum_steps", 0)])
def test_every_loop_setting_is_validated_by_name(tmp_path, name, value):
  with pytest.raises(ValueError, match=f"`{'num_steps' if name == 'steps' else name}`"):
    _train(tmp_path / "bad", **{name: value})
  assert not (tmp_path / "bad").exists()  # rejected before any I/O


def test_config_stored_and_changed_config_refused_listing_fields(tmp_path):
  config = {"optimizer": {"learning_rate": 1e-2, "name": "adam"}, "train": {"batch": BATCH}}
  _train(tmp_path / "run", steps=2, config=config)
  stored = json.load(open(tmp_path / "run" / "config.json"))
  assert stored["optimizer.learning_rate"] == 1e-2 and stored["loop.seed"] == 0
  assert stored["state.params['hidden']['kernel'].value"] == "float32[6, 8]"
  checkpointer = training.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  assert checkpointer.read_config(2) == stored
  checkpointer.close()

  changed = {"optimizer": {"learning_rate": 3e-2, "name": "adam"}, "train": {"batch": 16}}
  with pytest.raises(training.ConfigMismatchError) as error:
    _train(tmp_path / "run", steps=4, config=changed, seed=1,
           model_fn=lambda rngs: Net(rngs, hidden=4))
  message = str(error.value)
  for field in ("optimizer.learning_rate: 0.01 -> 0.03", "train.batch: 8 -> 16",
                "loop.seed: 0 -> 1", "loop.num_steps: 2 -> 4",
                "state.params['hidden']['kernel'].value: 'float32[6, 8]' -> 'float32[6, 4]'"):
    assert field in message
  assert "optimizer.name" not in message
  # Allowed changes (more steps, a new learning rate) resume; the stored config follows.
  result = _train(tmp_path / "run", steps=4, config=dict(config, optimizer={
      "learning_rate": 3e-2, "name": "adam"}),
      allow_config_changes=["loop.num_steps", "optimizer.learning_rate"])
  assert int(result.state.step) == 4
  assert json.load(open(tmp_path / "run" / "config.json"))["optimizer.learning_rate"] == 3e-2


def test_run_config_flatten_and_patterns():
  import ml_collections
  c = ml_collections.ConfigDict({"a": {"b": (1, 2), "c": float("nan")}, "d": "x"})
  assert run_config.flatten(c) == {"a.b": [1, 2], "a.c": "nan", "d": "x"}
  assert run_config.check_resume({"a.b": 1, "m.x": 1}, {"a.b": 2, "m.x": 2},
                                 ["a.*", "m"]) == ["a.b", "m.x"]
  with pytest.raises(training.ConfigMismatchError, match="a.b: 1 -> <absent>"):
    run_config.check_resume({"a.b": 1}, {}, [])
