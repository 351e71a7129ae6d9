"""Loop features a big_vision/MaxText user expects: throughput metrics in the logs and
TensorBoard with the hyperparameters, and initialising parameters from another run."""
import os

import jax
import numpy as np
import optax
import pytest

from logitlab import training
from logitlab.training import metrics as metrics_lib
from test_training_faults import Net, _train


def test_throughput_metrics_and_hparams_in_tensorboard(tmp_path):
  _train(tmp_path / "run", steps=4, log_every=2, config={"optimizer": {"lr": 0.01}})
  records = training.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records] == [2, 4]
  for r in records:  # the first interval starts after the compiling step 1
    assert r["perf/step_time_s"] > 0
    np.testing.assert_allclose(r["perf/examples_per_s"] * r["perf/step_time_s"], 8, rtol=1e-6)
    assert r["perf/tflops_per_device"] > 0  # XLA's cost analysis on CPU
    assert "perf/mfu" not in r  # CPU: no peak FLOP/s known
  tags = _event_tags(tmp_path / "run" / "tb")
  assert "perf/step_time_s" in tags and "perf/examples_per_s" in tags
  assert any(t.startswith("config") for t in tags) and "_hparams_/experiment" in tags


def _event_tags(logdir) -> set[str]:
  """Summary tags of every TFRecord event file under ``logdir`` (no TensorBoard needed)."""
  import struct
  from tensorboardX.proto import event_pb2
  tags = set()
  for root, _, files in os.walk(logdir):
    for name in files:
      data = open(os.path.join(root, name), "rb").read()
      offset = 0
      while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        tags.update(v.tag for v in event.summary.value)
        offset += 12 + length + 4
  return tags


def test_peak_flops_table_and_mfu():
  class Device:
    device_kind = "TPU v5 lite"
  assert metrics_lib.peak_flops(Device()) == 197e12
  assert metrics_lib.peak_flops(jax.devices()[0]) is None  # cpu
  throughput = metrics_lib.Throughput(examples_per_step=8, flops_per_step=1e12,
                                      peak_flops_per_device=2e12)
  throughput.start(0)
  out = throughput.measure(4)
  np.testing.assert_allclose(out["perf/mfu"], 0.5 / out["perf/step_time_s"], rtol=1e-6)


def test_init_from_another_runs_checkpoint_takes_params_only(tmp_path):
  source = _train(tmp_path / "source", steps=2)  # adam
  result = _train(tmp_path / "finetune", steps=1, tx=optax.sgd(0.0), seed=7,
                  init_from=str(tmp_path / "source" / "checkpoints"))
  # SGD with lr 0 keeps the loaded params: they are the source's, not seed 7's init.
  for a, b in zip(jax.tree.leaves(source.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(a, b)
  assert int(result.state.step) == 1
  with pytest.raises(FileNotFoundError, match="initialize from"):
    _train(tmp_path / "other", steps=1, init_from=str(tmp_path / "empty"))


def test_bf16_compute_with_float32_master_state(tmp_path):
  import jax.numpy as jnp
  from test_training_faults import PoisonedBatches, _loss_fn
  mesh = training.make_mesh({"data": 2}, jax.devices()[:2])
  graphdef, state, shardings = training.create_train_state(Net, optax.adam(1e-2), mesh)
  step = training.make_train_step(graphdef, optax.adam(1e-2), _loss_fn, shardings, mesh,
                                  compute_dtype=jnp.bfloat16)
  batch = training.put_batch(next(PoisonedBatches()), mesh)
  text = step.lower(state, batch).as_text()
  assert "bf16" in text and "dot_general" in text
  reference = training.make_train_step(graphdef, optax.adam(1e-2), _loss_fn, shardings, mesh)
  _, ref_metrics = reference(jax.tree.map(jnp.copy, state), batch)
  new_state, metrics = step(state, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))
  assert metrics["loss"].dtype == jnp.float32
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-2)
  assert float(metrics["loss"]) != float(ref_metrics["loss"])  # bf16 did change the math
