"""FSDP shards every large parameter (and the optimizer state follows), exactly."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.fsdp_memory import measure
from logitlab import losses, training
from logitlab.training import mesh as mesh_lib


@pytest.mark.parametrize("name, num_classes", [("resnet18", 1000), ("deit_tiny", 1000)])
def test_fsdp8_per_device_bytes_within_0p9_of_ideal(name, num_classes):
  m = measure(name, num_classes, fsdp=8)
  for kind in ("params", "opt"):
    reduction = m[kind] / m[f"{kind}_rule"]
    assert reduction >= 0.9 * 8, (kind, reduction)
  if name == "resnet18":  # conv kernels: the logical names alone gave 1.04x
    assert m["params"] / m["params_names"] < 1.1


def test_fsdp_spec_rule():
  mesh = training.make_mesh({"fsdp": 4, "tensor": 2})
  P = jax.sharding.PartitionSpec
  spec = lambda s, shape, nbytes=4: mesh_lib.fsdp_spec(s, shape, nbytes, mesh, min_bytes=1024)
  assert spec(P(), (3, 3, 64, 64)) == P(None, None, None, "fsdp")   # ties: the last dim
  assert spec(P(), (3, 3, 128, 64)) == P(None, None, "fsdp")
  assert spec(P(), (3, 3, 3, 30)) == P()                            # nothing divisible / small
  assert spec(P(), (16,)) == P()                                    # below min_bytes
  assert spec(P("fsdp"), (64, 64)) == P("fsdp")
  # Already on tensor: left alone (consecutive P(.., fsdp, tensor) kernels hit the XLA bug).
  assert spec(P(None, None, None, "tensor"), (3, 3, 64, 64)) == P(None, None, None, "tensor")


class ConvNet(nnx.Module):
  """Two 64-channel 3x3 convs (147 KB kernels: over FSDP_MIN_BYTES) and a head."""

  def __init__(self, rngs: nnx.Rngs):
    conv = lambda cin, cout: nnx.Conv(cin, cout, (3, 3), rngs=rngs, kernel_init=(
        nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "conv_in",
                                                                "conv_out"),
                              eager_sharding=False)))
    self.conv1, self.conv2, self.conv3 = conv(3, 64), conv(64, 64), conv(64, 64)
    self.head = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.head(jax.nn.relu(self.conv3(x)).mean((1, 2)))


def _loss(model, batch, rng):
  del rng
  return losses.cross_entropy(model(batch["image"]), batch["label"]), {}


def _one_step(mesh):
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(8, 6, 6, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  # SGD: the update is the gradient (Adam would turn rounding-level gradients into +-lr).
  graphdef, state, shardings = training.create_train_state(ConvNet, optax.sgd(0.1), mesh)
  step = training.make_train_step(graphdef, optax.sgd(0.1), _loss, shardings, mesh)
  state, _ = step(state, training.put_batch(batch, mesh))
  return jax.device_get(state.params), shardings.params


@pytest.fixture(scope="module")
def one_device_update():
  return _one_step(training.make_mesh({"data": 1}, jax.devices()[:1]))[0]


@pytest.mark.parametrize("shape", [
    {"fsdp": 8},
    # The rule leaves tensor-sharded kernels alone here; with P(None, None, "fsdp", "tensor")
    # conv kernels this mesh gave wrong updates (the XLA issue). ~25 s of compilation.
    pytest.param({"data": 2, "fsdp": 2, "tensor": 2}, marks=pytest.mark.slow)])
def test_conv_kernels_sharded_over_fsdp_and_same_update_as_one_device(one_device_update, shape):
  params, shardings = _one_step(training.make_mesh(shape))
  spec = shardings["conv2"]["kernel"].value.spec
  P = jax.sharding.PartitionSpec
  assert spec == (P(None, None, None, "fsdp") if "tensor" not in shape
                  else P(None, None, None, "tensor"))
  for a, b in zip(jax.tree.leaves(one_device_update), jax.tree.leaves(params)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
