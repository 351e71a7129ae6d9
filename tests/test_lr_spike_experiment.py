"""The README's main job (`experiments.lr_spike`) on a shrunk grid."""

import jax.numpy as jnp
import numpy as np

from experiments import lr_spike
from experiments.configs import lr_spike as lr_spike_config
from logitlab import datasets


def test_guard_survives_a_spike_that_kills_adam_and_clipping():
  config = lr_spike_config.get_config()
  config.update(architectures="mlp", spike_factors="1,10000", seeds=1, steps=60, spike_step=20,
                batch_size=128)
  data = tuple(jnp.asarray(a) for a in datasets.digits())
  results = {("mlp", m): lr_spike.run_grid(config, data, "mlp", m)
             for m in ("adam", "clip", "guard")}
  acc = {m: float(results[("mlp", m)]["test_acc"][1, 0]) for m in ("adam", "clip", "guard")}
  assert acc["guard"] > 0.85, acc
  assert acc["adam"] < 0.6 and acc["clip"] < 0.6, acc
  # Without a spike the guard hardly binds: same accuracy as plain Adam within 3 points.
  no_spike = {m: float(results[("mlp", m)]["test_acc"][0, 0]) for m in ("adam", "guard")}
  assert abs(no_spike["guard"] - no_spike["adam"]) < 0.03, no_spike
  # The spike step's proposal is far outside the convergence disc; unguarded runs take it.
  assert float(np.asarray(results[("mlp", "adam")]["ratios"])[1, 0, config.spike_step]) > 100
  rows = lr_spike.summarize(config, results)
  assert [r[:2] for r in rows] == [["mlp", "adam"], ["mlp", "clip"], ["mlp", "guard"]]
  assert rows[0][3].endswith("(1/1)") and rows[2][3].endswith("(0/1)")  # divergent counts
