"""The placement check's one-pass fingerprints (logitlab/guard_placement.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import guard_placement


def _tree(rng, dtype=jnp.float32):
  return {"w": jnp.asarray(rng.normal(size=(5, 3, 2)), dtype),
          "b": jnp.asarray(rng.normal(size=7), dtype), "s": jnp.asarray(rng.normal(), dtype), "n": jnp.arange(4)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_step_fingerprints_equal_separate_passes(dtype):
  rng = np.random.default_rng(0)
  params, proposal = _tree(rng, dtype), _tree(rng, dtype)
  got = jax.jit(guard_placement.step_fingerprints)(params, proposal)
  want_params = guard_placement.fingerprint(params)
  np.testing.assert_allclose(got.params.value, want_params.value, rtol=1e-6)
  np.testing.assert_allclose(got.params.bound, want_params.bound, rtol=1e-6)
  np.testing.assert_allclose(got.update, guard_placement.fingerprint(proposal).value, rtol=1e-6)
  assert bool(got.proposal_finite)
  # the weights are not degenerate: a different tree gives a different fingerprint
  assert abs(float(got.update) - float(got.params.value)) > 1e-3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_step_fingerprints_flag_any_non_finite_entry(bad):
  rng = np.random.default_rng(1)
  params, proposal = _tree(rng), _tree(rng)
  for leaf in ("w", "b", "s"):
    broken = dict(proposal)
    broken[leaf] = proposal[leaf].at[(0,) * proposal[leaf].ndim].set(bad)
    assert not bool(guard_placement.step_fingerprints(params, broken)
                    .proposal_finite), leaf


def test_step_fingerprints_fall_back_when_leaves_differ():
  rng = np.random.default_rng(2)
  params = _tree(rng)
  proposal = {"w": params["w"], "b": jnp.full(7, jnp.nan)}  # fewer leaves than params
  got = guard_placement.step_fingerprints(params, proposal)
  assert not bool(got.proposal_finite)
  np.testing.assert_allclose(got.params.value, guard_placement.fingerprint(params).value)


def test_hash_weights_are_compile_time_constants_in_minus_one_one():
  w = guard_placement._hash_uniform(4096, 3)
  assert isinstance(w, np.ndarray) and w.dtype == np.float32
  assert w.min() >= -1 and w.max() < 1 and abs(w.mean()) < 0.05
