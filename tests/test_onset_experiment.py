"""The onset experiment on a shrunk grid: deterministic, and onsets as distributions."""
import json

import jax.numpy as jnp
import numpy as np

from experiments import onset
from experiments.configs import onset as onset_config
from logitlab import datasets


def _config():
  config = onset_config.get_config()
  config.update(architectures="mlp", directions="gradient,random", seeds="0,1",
                train_steps="20,30", num_r=13, temperatures="0.5,2",
                temperature_arch="mlp")
  return config


def test_onsets_are_deterministic_and_reported_over_seeds_and_lengths():
  x, y, _, _ = datasets.digits()
  data = (jnp.asarray(x[:256]), jnp.asarray(y[:256]))
  first = onset.run(_config(), data)
  second = onset.run(_config(), data)
  for key, value in first["onsets"].items():
    assert value.shape == (2, 2), key  # [lengths, seeds]
    np.testing.assert_array_equal(value, second["onsets"][key])
  for key in ("onset_r", "onset_tau"):
    assert first["temperature"][key].shape == (2, 2, 2)  # [lengths, seeds, temperatures]
    np.testing.assert_array_equal(first["temperature"][key], second["temperature"][key])
  # Seeds differ (independent initializations and random directions), so the distribution
  # is not one value repeated.
  random = first["onsets"]["mlp/random"]
  assert len({float(v) for v in random.ravel()}) > 1 or np.all(np.isfinite(random))
  assert onset.summary(np.array([1.0, 2.0, np.inf])) == "1.5 [1, 2] (1 none)"
  text = json.dumps(onset.to_json({"config": _config().to_dict(), **first}))
  assert '"inf"' in text or "Infinity" not in text
