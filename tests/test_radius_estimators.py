"""Reference-code options of the radius guard: estimators, aggregations, radius stepping.

NumPy ports cite github piyush314/ghosts-of-softmax at commit 5a9638c.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import logitlab
from logitlab import ghosts
from logitlab import radius_estimators as re_


def _mlp(seed=0, n=48, d=6, h=16, k=5):
  rng = np.random.default_rng(seed)
  params = {"w1": jnp.asarray(rng.normal(size=(d, h)) / np.sqrt(d), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(h, k)) / np.sqrt(h), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  logits_fn = lambda p, x=x: jnp.tanh(x @ p["w1"]) @ p["w2"]
  step = jax.tree.map(lambda w: jnp.asarray(rng.normal(size=w.shape), jnp.float32) * 0.3, params)
  return params, x, logits_fn, step


def _exact_ratio(logits_fn, params, step, where=None):
  _, tangent = ghosts.directional_logits(logits_fn, params, step)
  return ghosts.normalized_step(tangent, where=where)


def test_finite_difference_is_close_to_the_exact_jvp():
  params, _, logits_fn, step = _mlp()
  est = re_.step_ratio_estimator(method="finite_difference", eps=1e-3)
  r, _ = est.ratio(step, est.init(), params, logits_fn=logits_fn)
  exact = _exact_ratio(logits_fn, params, step).ratio
  np.testing.assert_allclose(r, exact, rtol=1e-2)
  assert abs(float(r) / float(exact) - 1) > 1e-7  # an estimate: it differs from the JVP


def test_quantile_aggregation_is_the_quantile_of_valid_spreads_and_q1_is_the_max():
  params, _, logits_fn, step = _mlp(1)
  where = np.arange(48) % 3 != 0
  exact = _exact_ratio(logits_fn, params, step, where)
  spreads = np.asarray(exact.spread)[where]
  for q in (0.5, 0.9):
    est = re_.step_ratio_estimator(aggregate="quantile", quantile=q)
    r, _ = est.ratio(step, est.init(), params, logits_fn=logits_fn, logits_mask=where)
    np.testing.assert_allclose(r, np.quantile(spreads, q) / np.pi, rtol=1e-5)
    assert float(r) < float(exact.ratio)
  est = re_.step_ratio_estimator(aggregate="quantile", quantile=1.0)
  r, _ = est.ratio(step, est.init(), params, logits_fn=logits_fn, logits_mask=where)
  np.testing.assert_allclose(r, exact.ratio, rtol=1e-6)


def test_windowed_minimum_uses_the_smallest_radius_of_the_last_steps():
  params, _, logits_fn, step = _mlp(2)
  est = re_.step_ratio_estimator(window=3)
  state = est.init()
  rhos, got = [], []
  for scale in (1.0, 0.1, 0.5, 2.0, 0.3):  # a rescaled direction has the same rho per unit
    direction = jax.tree.map(lambda s: s * scale, step)
    direction = jax.tree.map(lambda s, w: s + 0.05 * scale * w, direction, params) if (
        scale == 0.5) else direction  # a different direction: a different radius
    r_now = float(_exact_ratio(logits_fn, params, direction).ratio)
    norm = float(re_.global_norm(direction))
    rhos.append(norm / r_now)
    r, state = est.ratio(direction, state, params, logits_fn=logits_fn)
    got.append(float(r))
    np.testing.assert_allclose(r, norm / min(rhos[-3:]), rtol=1e-5)
    assert float(r) >= r_now * (1 - 1e-6)


def _attention_model(seed=0, b=3, t=5, d=8):
  rng = np.random.default_rng(seed)
  params = {k: jnp.asarray(rng.normal(size=(d, d)) / np.sqrt(d), jnp.float32)
            for k in ("q", "k", "ffn")}
  params["out"] = jnp.asarray(rng.normal(size=(d, 4)) / np.sqrt(d), jnp.float32)
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  causal = jnp.tril(jnp.ones((t, t), bool))

  def logits_fn(p):
    att = jnp.einsum("btd,bsd->bts", x @ p["q"], x @ p["k"]) / np.sqrt(d)
    h = jax.nn.softmax(jnp.where(causal, att, -1e9), -1) @ x
    u = h @ p["ffn"]
    return {"logits": (jax.nn.relu(u) @ p["out"]).mean(1), "attention_logits": (att,),
            "attention_mask": causal, "ffn_preactivations": (u,)}
  step = jax.tree.map(lambda w: jnp.asarray(rng.normal(size=w.shape), jnp.float32) * 0.1, params)
  return params, logits_fn, step, causal


def test_attention_and_ffn_radii_against_a_numpy_port_of_the_reference():
  """tfmbottlenecks/run.py L201-220: rho_out, rho_attn = pi / max spread, rho_ffn = 1 %
  quantile of |u| / max(|du|, 1e-12), rho = min; here in units of the step (r = 1 / rho)."""
  params, logits_fn, step, causal = _attention_model()
  primal, tangent = jax.jvp(logits_fn, (params,), (step,))
  d_out = np.asarray(tangent["logits"], np.float64)
  d_att = np.asarray(tangent["attention_logits"][0], np.float64)
  u = np.asarray(primal["ffn_preactivations"][0], np.float64).ravel()
  du = np.asarray(tangent["ffn_preactivations"][0], np.float64).ravel()
  rho_out = np.pi / (d_out.max(-1) - d_out.min(-1)).max()
  masked_hi = np.where(causal, d_att, -np.inf).max(-1)
  masked_lo = np.where(causal, d_att, np.inf).min(-1)
  rho_attn = np.pi / (masked_hi - masked_lo).max()
  rho_ffn = np.quantile(np.abs(u) / np.maximum(np.abs(du), 1e-12), 0.01)
  est = re_.step_ratio_estimator(components=("output", "attention", "ffn"))
  r, state = est.ratio(step, est.init(), params, logits_fn=logits_fn)
  np.testing.assert_allclose(state.components, [1 / rho_out, 1 / rho_attn, 1 / rho_ffn],
                             rtol=1e-4)
  np.testing.assert_allclose(r, 1 / min(rho_out, rho_attn, rho_ffn), rtol=1e-4)
  only_out = re_.step_ratio_estimator(components=("output", "attention"))
  r2, _ = only_out.ratio(step, only_out.init(), params, logits_fn=logits_fn)
  np.testing.assert_allclose(r2, 1 / min(rho_out, rho_attn), rtol=1e-4)


def test_guard_with_all_components_on_the_digits_transformer_internals():
  """The guard's ratio_attention / ratio_ffn on TinyTransformer.internals equal a float64
  NumPy reduction of the JVP of Adam's proposal (recomputed outside the guard), and the step
  is capped by the maximum of the three components."""
  from flax import nnx
  from logitlab.models import small
  model = small.TinyTransformer(10, num_layers=2, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (32, 8, 8))
  y = jnp.arange(32) % 10
  params = nnx.state(model, nnx.Param)
  logits_fn = logitlab.nnx_logits_fn(model, x, forward=lambda m, x: m.internals(x))
  est = re_.step_ratio_estimator(components=("output", "attention", "ffn"))
  tx = logitlab.radius_guard(optax.adam(0.1), max_ratio=0.5, estimator=est)
  adam = optax.adam(0.1)

  @jax.jit  # one compilation: eager nnx forwards would dominate the test's time
  def run(params):
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(p)["logits"], y).mean())(params)
    updates, state = tx.update(grads, tx.init(params), params, logits_fn=logits_fn)
    proposal, _ = adam.update(grads, adam.init(params), params)
    primal, tangent = jax.jvp(logits_fn, (params,), (proposal,))
    return updates, logitlab.guard_metrics(state), proposal, primal, tangent

  updates, metrics, proposal, primal, tangent = run(params)
  f64 = lambda a: np.asarray(a, np.float64)
  d_att = np.stack([f64(t) for t in tangent["attention_logits"]])  # [layer, B, head, Q, K]
  r_attn = (d_att.max(-1) - d_att.min(-1)).max() / np.pi
  u = np.concatenate([f64(a).ravel() for a in primal["ffn_preactivations"]])
  du = np.concatenate([f64(a).ravel() for a in tangent["ffn_preactivations"]])
  r_ffn = 1 / np.quantile(np.abs(u) / np.maximum(np.abs(du), 1e-12), 0.01)
  d_out = f64(tangent["logits"])
  r_out = (d_out.max(-1) - d_out.min(-1)).max() / np.pi
  np.testing.assert_allclose(metrics["guard/ratio_attention"], r_attn, rtol=1e-3)
  np.testing.assert_allclose(metrics["guard/ratio_ffn"], r_ffn, rtol=1e-3)
  np.testing.assert_allclose(metrics["guard/ratio_output"], r_out, rtol=1e-3)
  r = max(r_out, r_attn, r_ffn)
  assert r > 0.5  # the cap binds: the applied step is the proposal scaled by 0.5 / r
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(proposal)):
    np.testing.assert_allclose(got, want * 0.5 / r, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("lr", [1e-4, 10.0])
def test_radius_stepping_scales_every_step_to_the_target_up_and_down(lr):
  params, _, logits_fn, step = _mlp(3)
  tx = logitlab.radius_guard(optax.sgd(lr), max_ratio=0.7, mode="radius_step")
  updates, state = tx.update(step, tx.init(params), params, logits_fn=logits_fn)
  applied = _exact_ratio(logits_fn, params, updates).ratio
  np.testing.assert_allclose(applied, 0.7, rtol=1e-5)
  assert (float(state.scale) > 1) == (lr < 1)  # scaled up for the tiny learning rate


def test_guard_with_an_estimator_reports_components_and_caps_with_the_estimate():
  params, _, logits_fn, step = _mlp(4)
  est = re_.step_ratio_estimator(method="finite_difference")
  tx = logitlab.radius_guard(optax.sgd(5.0), max_ratio=0.5, estimator=est)
  updates, state = jax.jit(lambda g: tx.update(g, tx.init(params), params,
                                               logits_fn=logits_fn))(step)
  metrics = logitlab.guard_metrics(state)
  np.testing.assert_allclose(metrics["guard/ratio_output"], metrics["guard/ratio_proposed"])
  np.testing.assert_allclose(_exact_ratio(logits_fn, params, updates).ratio, 0.5, rtol=1e-2)


def test_subsampled_jvp_ratio_never_exceeds_the_full_batch_ratio():
  params, x, logits_fn, step = _mlp(5, n=64)
  x_sub = re_.subsample_rows(0.125, x)
  assert x_sub.shape[0] == 8
  sub = _exact_ratio(lambda p: jnp.tanh(x_sub @ p["w1"]) @ p["w2"], params, step).ratio
  full = _exact_ratio(logits_fn, params, step).ratio
  assert float(sub) <= float(full) + 1e-7


def test_logit_spread_controller_against_a_numpy_port_of_rho_scaled_adam():
  """src/ghosts/control.py L25-28, L60-67 and radii.py L26-40, L50-58: rho = pi / (mean gap +
  1e-6), lr_eff = lr * max(min(rho, cap), floor)."""
  rng = np.random.default_rng(0)
  grads = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  for logit_scale, gap in ((0.3, "maxmin"), (30.0, "maxmin"), (5.0, "top2"), (1e4, "maxmin")):
    z = rng.normal(size=(6, 7)) * logit_scale
    if gap == "top2":
      top = np.sort(z, -1)[:, ::-1]
      mean_gap = (top[:, 0] - top[:, 1]).mean()
    else:
      mean_gap = (z.max(-1) - z.min(-1)).mean()
    rho = np.pi / (mean_gap + 1e-6)
    scale = max(min(rho, 1.0), 0.01)
    tx = re_.logit_spread_controller(optax.adam(1e-2), gap=gap)
    plain = optax.adam(1e-2)
    got, state = tx.update(grads, tx.init(grads), logits=jnp.asarray(z, jnp.float32))
    want, _ = plain.update(grads, plain.init(grads))
    np.testing.assert_allclose(state.rho, rho, rtol=1e-5)
    np.testing.assert_allclose(got["w"], scale * want["w"], rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="fd"), "`method`"), (dict(aggregate="mean"), "`aggregate`"),
    (dict(quantile=0.0), "`quantile`"), (dict(window=0), "`window`"),
    (dict(components=("ffn", "bogus")), "`components`"), (dict(eps=0.0), "`eps`"),
    (dict(ffn_quantile=1.0), "`ffn_quantile`"),
])
def test_estimator_rejects_bad_configuration(kwargs, match):
  with pytest.raises(ValueError, match=match):
    re_.step_ratio_estimator(**kwargs)


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match="`mode`"):
    logitlab.radius_guard(mode="target")
  with pytest.raises(ValueError, match="`fraction`"):
    re_.subsample_rows(0.0, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match="`rho_floor`"):
    re_.logit_spread_controller(optax.sgd(1.0), rho_cap=0.1, rho_floor=0.5)
  tx = re_.logit_spread_controller(optax.sgd(1.0))
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="`update\\(..., logits=z\\)`"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="`logits_mask`"):
    tx.update(params, tx.init(params), logits=jnp.ones((4, 3)), logits_mask=jnp.ones((4, 1)))
