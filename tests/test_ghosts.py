"""Tests for logitlab.ghosts against numerically located complex zeros."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import logitlab
from logitlab import ghosts


def nearest_zero_distance(z, integer_a, scale):
  """Distance from 0 to the nearest complex zero of F(t) = sum_j exp(z_j + t a_j).

  With a_j = scale * k_j (k_j integers) and w = exp(scale t), F is a polynomial in w
  (coefficients exp(z_j) at powers k_j - min k), so its zeros are exact: np.roots, then
  t = (log w + 2 pi i n) / scale for every branch n. Independent of the pi / Delta bound.
  """
  k = np.asarray(integer_a) - np.min(integer_a)
  coeffs = np.zeros(k.max() + 1, np.complex128)
  np.add.at(coeffs, k, np.exp(np.asarray(z, np.float64)))
  roots = np.roots(coeffs[::-1])  # highest power first
  branches = 2j * np.pi * np.arange(-3, 4)
  t = (np.log(roots.astype(np.complex128))[:, None] + branches[None, :]) / scale
  return np.min(np.abs(t))


@pytest.mark.parametrize("num_classes", [2, 3, 4, 6])
def test_radius_never_exceeds_nearest_complex_zero(num_classes, rng):
  for _ in range(20):
    z = rng.normal(scale=3.0, size=num_classes)
    k = rng.integers(-4, 5, size=num_classes)
    if k.max() == k.min():
      continue
    scale = float(rng.uniform(0.1, 3.0))
    a = scale * k
    bound = float(ghosts.radius(jnp.asarray(a[None], jnp.float32))[0])
    exact = nearest_zero_distance(z, k, scale)
    assert bound <= exact * (1 + 1e-4), (bound, exact)
    if num_classes == 2:
      gap_radius = float(ghosts.binary_radius(jnp.float32(z[0] - z[1]), jnp.float32(a[0] - a[1])))
      np.testing.assert_allclose(gap_radius, exact, rtol=1e-4)


def test_multiclass_bound_is_attained_by_two_symmetric_classes():
  # z = 0 for two classes: zeros at Delta t = i pi (2k+1), so the bound is tight.
  a = jnp.array([[1.5, -0.5]])
  np.testing.assert_allclose(ghosts.radius(a)[0], np.pi / 2.0, rtol=1e-6)
  np.testing.assert_allclose(nearest_zero_distance([0.0, 0.0], [3, -1], 0.5), np.pi / 2, rtol=1e-6)


def test_top2_radius_equals_binary_radius_for_two_classes(rng):
  logits = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
  tangent = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, 16))
  est = ghosts.top2_radius(logits, tangent, labels)
  y, c = np.asarray(labels), 1 - np.asarray(labels)
  zl, al = np.asarray(logits, np.float64), np.asarray(tangent, np.float64)
  rows = np.arange(16)
  ref = np.sqrt((zl[rows, y] - zl[rows, c])**2 + np.pi**2) / np.abs(al[rows, y] - al[rows, c])
  np.testing.assert_allclose(est, ref, rtol=1e-5)


def test_top2_radius_uses_runner_up_and_exceeds_multiclass_bound_for_confident_samples():
  logits = jnp.array([[10.0, 2.0, -1.0]])
  tangent = jnp.array([[1.0, -1.0, 5.0]])
  est = float(ghosts.top2_radius(logits, tangent, jnp.array([0]))[0])
  np.testing.assert_allclose(est, np.sqrt(8.0**2 + np.pi**2) / 2.0, rtol=1e-6)
  assert est > float(ghosts.radius(tangent)[0])


def test_temperature_scales_radius_and_normalized_step(rng):
  a = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  np.testing.assert_allclose(ghosts.radius(a, temperature=4.0), 4.0 * ghosts.radius(a), rtol=1e-6)
  r1 = ghosts.normalized_step(a).ratio
  np.testing.assert_allclose(ghosts.normalized_step(a, temperature=4.0).ratio, r1 / 4, rtol=1e-6)


def test_normalized_step_is_linear_and_reports_binding_example(rng):
  a = np.asarray(rng.normal(size=(6, 5)), np.float32)
  a[3] *= 10.0
  step = ghosts.normalized_step(jnp.asarray(a))
  ref = (a.max(-1) - a.min(-1)).max() / np.pi
  np.testing.assert_allclose(step.ratio, ref, rtol=1e-6)
  assert int(step.binding_index) == 3
  np.testing.assert_allclose(ghosts.normalized_step(jnp.asarray(2.5 * a)).ratio, 2.5 * ref,
                             rtol=1e-6)


def test_masks_exclude_examples_and_tokens(rng):
  a = np.asarray(rng.normal(size=(2, 4, 9)), np.float32)  # [B, T, V]
  a[1, 2] *= 1e3
  where = np.ones((2, 4), bool)
  where[1, 2] = False
  masked = ghosts.normalized_step(jnp.asarray(a), where=jnp.asarray(where))
  kept = a[where]
  np.testing.assert_allclose(masked.ratio, (kept.max(-1) - kept.min(-1)).max() / np.pi, rtol=1e-6)
  assert np.isinf(ghosts.radius(jnp.asarray(a), where=jnp.asarray(where))[1, 2])


def test_constant_shift_direction_has_infinite_radius():
  assert np.isinf(ghosts.radius(jnp.ones((1, 5)))[0])


def test_bf16_tangent_is_reduced_in_float32():
  a = jnp.array([[1000.0, 1001.0, -3.0]], jnp.bfloat16)
  r = ghosts.radius(a)
  assert r.dtype == jnp.float32
  np.testing.assert_allclose(r, np.pi / np.float32(a.astype(jnp.float32)[0].ptp()), rtol=1e-6)


def test_directional_logits_is_one_jvp_of_the_logits_fn(rng):
  w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  logits, tangent = logitlab.directional_logits(lambda p: jnp.tanh(x @ p), w, v)
  np.testing.assert_allclose(logits, jnp.tanh(x @ w), rtol=1e-6)
  np.testing.assert_allclose(tangent, (1 - jnp.tanh(x @ w)**2) * (x @ v), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="tangent"):
    ghosts.radius(jnp.float32(1.0))
  with pytest.raises(TypeError, match="tangent"):
    ghosts.radius(jnp.ones((3, 4), jnp.int32))
  with pytest.raises(ValueError, match="where"):
    ghosts.radius(jnp.ones((3, 4)), where=jnp.ones((5,), bool))
  with pytest.raises(ValueError, match="labels"):
    ghosts.top2_radius(jnp.ones((3, 4)), jnp.ones((3, 4)), jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="direction"):
    logitlab.directional_logits(lambda p: p["w"], {"w": jnp.ones(3)}, [jnp.ones(3)])


def test_jit_and_vmap():
  a = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_allclose(jax.jit(ghosts.radius)(a), ghosts.radius(a))
  np.testing.assert_allclose(jax.vmap(lambda t: ghosts.normalized_step(t).ratio)(a),
                             [ghosts.normalized_step(t).ratio for t in a])
