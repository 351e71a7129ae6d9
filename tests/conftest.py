"""Test configuration shared by the whole suite.

Eight host CPU devices are forced before JAX is imported so sharding tests (Mesh,
NamedSharding, fsdp) run in-process. Ordinary tests are unaffected: arrays live on
device 0 unless a test shards them.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def key():
  return jax.random.key(0)
