"""logitlab.batched_radius: r over micro-batches (guarded accumulation) and whole datasets."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import logitlab
from logitlab import batched_radius


def _data(n=37, dim=6, classes=5, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, dim)) * rng.uniform(0.2, 3.0, size=(n, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, n))
  params = {"w1": jnp.asarray(rng.normal(size=(dim, 8)) * 0.5, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(8, classes)) * 0.5, jnp.float32)}
  return params, x, y


def logits_fn(p, x):
  return jnp.tanh(x @ p["w1"]) @ p["w2"]


def _loss(p, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()


def independent_ratio(params, step, x):
  """max over examples of the spread of J(x) step from the full Jacobian, float64."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = jax.jacfwd(lambda f: logits_fn(unravel(f), x))(flat)  # [N, K, P]
  a = np.asarray(jac, np.float64) @ np.asarray(jax.flatten_util.ravel_pytree(step)[0], np.float64)
  return (a.max(-1) - a.min(-1)) / np.pi  # per example


def test_dataset_ratio_equals_the_full_batch_value_with_padding_and_mask():
  params, x, y = _data()
  step = jax.tree.map(lambda g: -3.0 * g, jax.grad(_loss)(params, x, y))
  per_example = independent_ratio(params, step, x)
  got = batched_radius.dataset_ratio(logits_fn, params, step, x, batch_size=8)  # 37 = 4x8 + 5
  np.testing.assert_allclose(got.ratio, per_example.max(), rtol=1e-5)
  np.testing.assert_allclose(got.spread / np.pi, per_example, rtol=1e-4, atol=1e-7)
  assert int(got.binding_index) == int(per_example.argmax())
  mask = np.arange(37) % 3 != 0
  masked = batched_radius.dataset_ratio(logits_fn, params, step, x, batch_size=8, where=mask,
                                        temperature=2.0)
  np.testing.assert_allclose(masked.ratio, per_example[mask].max() / 2, rtol=1e-5)


def test_minibatch_cap_is_not_the_whole_data_cap():
  """Fig. 6 of the paper: a step capped at r = 1 on a minibatch has r > 1 on the data."""
  params, x, y = _data(n=64, seed=5)
  mini = slice(0, 16)
  tx = logitlab.radius_guard(optax.adam(10.0))
  step, _ = tx.update(jax.grad(_loss)(params, x[mini], y[mini]), tx.init(params), params,
                      logits_fn=lambda p: logits_fn(p, x[mini]))
  on_minibatch = batched_radius.dataset_ratio(logits_fn, params, step, x[mini], batch_size=16)
  on_data = batched_radius.dataset_ratio(logits_fn, params, step, x, batch_size=16)
  np.testing.assert_allclose(on_minibatch.ratio, 1.0, rtol=1e-5)
  np.testing.assert_allclose(on_data.ratio, independent_ratio(params, step, x).max(), rtol=1e-5)
  assert float(on_data.ratio) > 1.05


def test_accumulated_update_is_capped_on_every_micro_batch():
  """MultiSteps(radius_guard(adam), k) caps only against the last micro-batch; the guard with
  `logits_spread=microbatch_spread_fn(...)` caps against all k (same Adam direction)."""
  params, x, y = _data(n=48, seed=2)
  k = 3
  micro_x, micro_y = x.reshape(k, 16, -1), y.reshape(k, 16)

  multi = optax.MultiSteps(logitlab.radius_guard(optax.adam(10.0)), k)
  state = multi.init(params)
  for i in range(k):
    last, state = multi.update(jax.grad(_loss)(params, micro_x[i], micro_y[i]), state, params,
                               logits_fn=lambda p, i=i: logits_fn(p, micro_x[i]))
  per_micro_last = [independent_ratio(params, last, micro_x[i]).max() for i in range(k)]
  assert per_micro_last[-1] <= 1.0 + 1e-5 and max(per_micro_last) > 1.05

  tx = logitlab.radius_guard(optax.adam(10.0))
  grads = jax.tree.map(lambda g: g.mean(0), jax.vmap(jax.grad(_loss), (None, 0, 0))(
      params, micro_x, micro_y))
  spread_fn = batched_radius.microbatch_spread_fn(logits_fn, params, micro_x)
  accumulated, state = jax.jit(lambda g: tx.update(g, tx.init(params), params,
                                                   logits_spread=spread_fn))(grads)
  per_micro = [independent_ratio(params, accumulated, micro_x[i]).max() for i in range(k)]
  np.testing.assert_allclose(max(per_micro), 1.0, rtol=1e-4)
  np.testing.assert_allclose(state.ratio, max(per_micro), rtol=1e-4)
  # Same direction as MultiSteps' Adam step, only a smaller scale.
  a, b = (jax.flatten_util.ravel_pytree(u)[0] for u in (accumulated, last))
  np.testing.assert_allclose(float(a @ b) / float(jnp.linalg.norm(a) * jnp.linalg.norm(b)), 1.0,
                             rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "`batch_size`"), ({"temperature": 0.0}, "`temperature`"),
    ({"where": np.ones(5, bool)}, "`where`")])
def test_dataset_ratio_rejects_bad_arguments(kwargs, match):
  params, x, _ = _data()
  kwargs = {"batch_size": 8, **kwargs}
  with pytest.raises(ValueError, match=match):
    batched_radius.dataset_ratio(logits_fn, params, params, x, **kwargs)
