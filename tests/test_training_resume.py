"""Subprocess tests of the training core: SIGKILL, SIGINT and SIGTERM + resume, and 2-process
jax.distributed (also preempted through Orbax's preemption sync point).

Every run is ``python -m experiments.train_classifier`` (embedded digits, sharded over a
``data=2, fsdp=2`` mesh). The reference is one uninterrupted single-process run on 4 CPU devices.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from logitlab import datasets, training
from logitlab.training import read_jsonl

REPO = Path(__file__).resolve().parent.parent
STEPS, CHECKPOINT_EVERY, KILL_AT = 12, 4, 10
ARGS = [f"--config.train.steps={STEPS}", "--config.train.log_every=1",
        f"--config.train.checkpoint_every={CHECKPOINT_EVERY}", "--config.train.eval_every=-1",
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.train.global_batch_size=32"]


def _launch(workdir, *extra, devices=4, compilation_cache=None):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  if compilation_cache:
    # Later runs load the executables the first one compiled (same programs, so same bits).
    env.update(JAX_COMPILATION_CACHE_DIR=str(compilation_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train_classifier", *ARGS,
       f"--config.workdir={workdir}", *extra],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=300):
  output, _ = process.communicate(timeout=timeout)
  return process.returncode, output


def _train_records(workdir):
  return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


def _expected_data_order(steps=STEPS):
  """``data/labels`` per step of the launcher's digits stream (seed 0, batch 32), in process."""
  x, y, _, _ = datasets.digits()
  batches = training.ResumableBatches(training.ArraySource(image=x, label=y),
                                      global_batch_size=32, seed=0, num_threads=1)
  return [float(training.batch_checksum(next(batches)["label"])) for _ in range(steps)]


def _final_state(workdir):
  """The step-STEPS checkpoint as NumPy arrays (restored onto one device: a new topology)."""
  path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return jax.device_get(checkpointer.restore(path, target))


@pytest.fixture(scope="module")
def reference_and_killed(tmp_path_factory):
  """Runs the uninterrupted reference, then a run SIGKILLed after step KILL_AT."""
  root = tmp_path_factory.mktemp("runs")
  code, output = _finish(_launch(root / "reference", compilation_cache=root / "xla_cache"))
  assert code == 0, output[-3000:]
  killed_code, killed_output = _finish(_launch(root / "resumed", f"--stop_after={KILL_AT}",
                                               compilation_cache=root / "xla_cache"))
  return root, killed_code, killed_output


def test_killed_run_resumes_bit_for_bit(reference_and_killed):
  root, killed_code, killed_output = reference_and_killed
  assert killed_code == -9, killed_output[-3000:]  # SIGKILL, no cleanup ran
  assert not (root / "resumed" / "checkpoints" / str(STEPS)).exists()
  code, output = _finish(_launch(root / "resumed", compilation_cache=root / "xla_cache"))
  assert code == 0, output[-3000:]
  resumed_from = int(re.search(r"resumed from step (\d+)", output).group(1))
  # A mid-run checkpoint was restored (the one at 8, or 4 if 8 was still being written).
  assert CHECKPOINT_EVERY <= resumed_from < KILL_AT
  reference, resumed = _train_records(root / "reference"), _train_records(root / "resumed")
  assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
  # The data order is the designed one in both runs (checksums of each step's labels), so the
  # resumed run re-read the batches of steps resumed_from+1.. and nothing else.
  expected_order = _expected_data_order()
  assert len(set(expected_order)) > STEPS // 2  # the checksum does tell batches apart
  assert [r["data/labels"] for r in reference] == expected_order
  assert [r["data/labels"] for r in resumed] == expected_order
  # Bit for bit: same data order, RNG and optimizer state after the restart.
  assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
  assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in reference]
  final_reference, final_resumed = _final_state(root / "reference"), _final_state(root / "resumed")
  assert jax.tree.structure(final_reference) == jax.tree.structure(final_resumed)
  for a, b in zip(jax.tree.leaves(final_reference), jax.tree.leaves(final_resumed)):
    np.testing.assert_array_equal(a, b)
  assert int(final_resumed["step"]) == STEPS


def _assert_matches_reference(root, workdir):
  reference, resumed = _train_records(root / "reference"), _train_records(workdir)
  assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
  assert [r["data/labels"] for r in resumed] == _expected_data_order()
  assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
  for a, b in zip(jax.tree.leaves(_final_state(root / "reference")),
                  jax.tree.leaves(_final_state(workdir))):
    np.testing.assert_array_equal(a, b)


def test_sigint_finishes_step_saves_exits_75_and_resumes_bit_for_bit(reference_and_killed,
                                                                       tmp_path):
  """SIGINT arrives during step 6's hook: step 7 is the last one, saved, exit code 75."""
  root = reference_and_killed[0]
  code, output = _finish(_launch(tmp_path / "run", "--stop_after=6", "--stop_signal=INT",
                                 compilation_cache=root / "xla_cache"))
  assert code == training.EXIT_PREEMPTED == 75, output[-3000:]
  assert "SIGINT: saved step 7, exiting with code 75" in output
  checkpoints = sorted(int(p) for p in os.listdir(tmp_path / "run" / "checkpoints"))
  assert checkpoints[-1] == 7 and checkpoints[-2] == 4  # off the every-4 interval
  assert [r["step"] for r in _train_records(tmp_path / "run")] == list(range(1, 8))
  code, output = _finish(_launch(tmp_path / "run", compilation_cache=root / "xla_cache"))
  assert code == 0 and "resumed from step 7" in output, output[-3000:]
  _assert_matches_reference(root, tmp_path / "run")


def test_sigterm_from_outside_mid_run_saves_and_exits_within_seconds(reference_and_killed,
                                                                     tmp_path):
  """The scheduler's SIGTERM at an arbitrary moment of a long run (checkpoints every 1000)."""
  root = reference_and_killed[0]
  workdir = tmp_path / "long"
  process = _launch(workdir, "--config.train.steps=100000", "--config.train.log_every=1",
                    "--config.train.checkpoint_every=1000", compilation_cache=root / "xla_cache")
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and len(read_jsonl(str(metrics))) >= 3):
    assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:]
    time.sleep(0.05)
  signalled = time.time()
  process.send_signal(signal.SIGTERM)
  code, output = _finish(process, timeout=120)
  exit_seconds = time.time() - signalled
  assert code == 75, output[-3000:]
  stopped = int(re.search(r"SIGTERM: saved step (\d+)", output).group(1))
  assert stopped >= 3 and stopped == _train_records(workdir)[-1]["step"]
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints"))[-1] == stopped
  with open(workdir / "checkpoints" / str(stopped) / "data" / "metadata") as f:
    assert json.load(f) == {"position": stopped}  # the data position saved with it
  assert exit_seconds < 60, exit_seconds
  print(f"SIGTERM -> exit 75 with checkpoint {stopped} on disk in {exit_seconds:.2f} s")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # 2 more interpreters (~20 s CPU); passes here, see docs/scaling.md
def test_two_processes_match_single_process(reference_and_killed, tmp_path):
  """jax.distributed on localhost: 2 processes x 2 CPU devices = the 4-device reference mesh;
  each process loads only its half of every global batch."""
  root = reference_and_killed[0]
  coordinator = f"--coordinator=localhost:{_free_port()}"
  processes = [_launch(tmp_path / "multi", coordinator, "--num_processes=2",
                       f"--process_id={i}", devices=2) for i in range(2)]
  for process in processes:
    code, output = _finish(process)
    assert code == 0, output[-3000:]
  reference, multi = _train_records(root / "reference"), _train_records(tmp_path / "multi")
  assert [r["step"] for r in multi] == list(range(1, STEPS + 1))
  # Each global batch, assembled from the two hosts' halves, is the single-process batch in
  # the same row order.
  assert [r["data/labels"] for r in multi] == _expected_data_order()
  # Same global batches and math; only the cross-process reduction order may differ.
  np.testing.assert_allclose([r["loss"] for r in multi], [r["loss"] for r in reference],
                             rtol=1e-5)
  for a, b in zip(jax.tree.leaves(_final_state(root / "reference")),
                  jax.tree.leaves(_final_state(tmp_path / "multi"))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # 4 more interpreters (~40 s CPU): python -m pytest -m slow -k preempt
def test_two_processes_preempted_by_sigterm_on_one_host_stop_together_and_resume(
    reference_and_killed, tmp_path):
  """SIGTERM to process 1 only: JAX's preemption service + Orbax's sync point make both
  processes stop after the same step, save it, and exit 75; the 2-process resume finishes.

  The sync point is a step a little after the signal (the notice travels through the
  coordinator while training goes on), so the run is longer than the reference's 12 steps;
  a notice whose sync point lies past the last step simply lets the run finish (exit 0).
  """
  root, steps = reference_and_killed[0], 40

  def launch(*extra):
    coordinator = f"--coordinator=localhost:{_free_port()}"
    return [_launch(tmp_path / "multi", coordinator, "--num_processes=2",
                    f"--process_id={i}", f"--config.train.steps={steps}",
                    *(extra if i == 1 else ()), devices=2)
            for i in range(2)]

  results = [_finish(p) for p in launch("--stop_after=6", "--stop_signal=TERM")]
  assert [code for code, _ in results] == [75, 75], results[0][1][-2000:] + results[1][1][-2000:]
  stopped = int(re.search(r"preemption notice: saved step (\d+)", results[0][1]).group(1))
  assert 6 < stopped < steps
  assert sorted(int(p) for p in os.listdir(tmp_path / "multi" / "checkpoints"))[-1] == stopped
  results = [_finish(p) for p in launch()]
  assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
  assert f"resumed from step {stopped}" in results[0][1]
  multi = _train_records(tmp_path / "multi")
  assert [r["step"] for r in multi] == list(range(1, steps + 1))
  assert [r["data/labels"] for r in multi] == _expected_data_order(steps)
  # A constant learning rate: the first 12 steps are the reference's.
  np.testing.assert_allclose([r["loss"] for r in multi[:STEPS]],
                             [r["loss"] for r in _train_records(root / "reference")], rtol=1e-5)
