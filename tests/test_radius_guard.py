"""Tests for logitlab.radius_guard (optax transform) and the NNX logits_fn helper."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import logitlab
from logitlab.models import small


def _problem(seed=0, batch=16, dim=6, classes=5):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, batch))
  params = {"w1": jnp.asarray(rng.normal(size=(dim, 8)) * 0.5, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(8, classes)) * 0.5, jnp.float32)}
  logits_fn = lambda p: jnp.tanh(x @ p["w1"]) @ p["w2"]
  loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(logits_fn(p), y).mean()
  return params, logits_fn, loss_fn, x


def independent_ratio(logits_fn, params, step):
  """r of a step from the full Jacobian (jacfwd) times the flattened step: no jax.jvp call."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  step_flat, _ = jax.flatten_util.ravel_pytree(step)
  jac = jax.jacfwd(lambda f: logits_fn(unravel(f)))(flat)  # [B, K, P]
  a = np.asarray(jac, np.float64) @ np.asarray(step_flat, np.float64)
  return (a.max(-1) - a.min(-1)).max() / np.pi


@pytest.mark.parametrize("form", ["wrapper", "chain_after"])
@pytest.mark.parametrize("max_ratio", [0.5, 1.0])
def test_applied_step_satisfies_post_condition(form, max_ratio):
  params, logits_fn, loss_fn, _ = _problem()
  lr = 50.0  # a spike: Adam's step is far outside the radius
  tx = (logitlab.radius_guard(optax.adam(lr), max_ratio=max_ratio) if form == "wrapper" else
        optax.chain(optax.adam(lr), logitlab.radius_guard(max_ratio=max_ratio)))
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params, logits_fn=logits_fn)
    r = independent_ratio(logits_fn, params, updates)
    assert r <= max_ratio * (1 + 1e-5), r
    assert r >= max_ratio * (1 - 1e-4)  # it was capped, not zeroed
    params = optax.apply_updates(params, updates)
  metrics = logitlab.guard_metrics(state)
  assert int(metrics["guard/num_capped"]) == 3 and int(metrics["guard/num_mismatched"]) == 0
  assert float(metrics["guard/ratio_proposed"]) > max_ratio
  np.testing.assert_allclose(metrics["guard/ratio"], r, rtol=1e-4)  # r of the applied step


def test_small_steps_pass_through_unchanged():
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  plain, _ = optax.adam(1e-4).update(grads, optax.adam(1e-4).init(params), params)
  tx = logitlab.radius_guard(optax.adam(1e-4))
  guarded, state = tx.update(grads, tx.init(params), params, logits_fn=logits_fn)
  chex.assert_trees_all_close(guarded, plain)
  assert float(state.scale) == 1.0 and int(state.num_capped) == 0


def _scaled_adam(lr):
  return optax.chain(optax.scale_by_adam(), optax.scale(-lr))


_PLACEMENTS = {  # name -> (transform, whether the applied step is the guard's output)
    "wrapper": (lambda: logitlab.radius_guard(optax.adam(50.0), on_mismatch="ignore"), True),
    "after_adam": (lambda: optax.chain(optax.adam(50.0),
                                       logitlab.radius_guard(on_mismatch="ignore")), True),
    "inject_hyperparams": (lambda: optax.chain(optax.adam(50.0), optax.inject_hyperparams(
        logitlab.radius_guard, static_args=("on_mismatch",))(max_ratio=1.0,
                                                             on_mismatch="ignore")), True),
    "multisteps": (lambda: optax.MultiSteps(
        logitlab.radius_guard(optax.adam(50.0), on_mismatch="ignore"), 2), True),
    "before_adam": (lambda: optax.chain(logitlab.radius_guard(on_mismatch="ignore"),
                                        optax.adam(50.0)), False),
    "after_adam_then_weight_decay": (lambda: optax.chain(
        optax.scale_by_adam(), logitlab.radius_guard(on_mismatch="ignore"),
        optax.add_decayed_weights(0.5), optax.scale(-50.0)), False),
    "after_adam_then_lr": (lambda: optax.chain(
        optax.scale_by_adam(), logitlab.radius_guard(on_mismatch="ignore"),
        optax.scale(-50.0)), False),
    "after_adam_then_schedule": (lambda: optax.chain(
        optax.scale_by_adam(), logitlab.radius_guard(on_mismatch="ignore"),
        optax.scale_by_schedule(lambda n: -50.0 / (1.0 + n))), False),
    "wrapper_then_weight_decay": (lambda: optax.chain(
        logitlab.radius_guard(_scaled_adam(50.0), on_mismatch="ignore"),
        optax.add_decayed_weights(0.5)), False),
}


@pytest.mark.parametrize("placement", sorted(_PLACEMENTS))
def test_every_placement_caps_the_applied_step_or_reports_it(placement):
  """Correct placements: r(applied) <= 1 and the metrics give that r. Others: the step is not
  capped (r of the applied step >> 1) and every step after the first is reported."""
  make, correct = _PLACEMENTS[placement]
  params, logits_fn, loss_fn, _ = _problem()
  tx = make()
  state = tx.init(params)
  step = jax.jit(lambda p, st: tx.update(jax.grad(loss_fn)(p), st, p, logits_fn=logits_fn))
  ratios = []
  for _ in range(4):
    updates, state = step(params, state)
    ratios.append(independent_ratio(logits_fn, params, updates))
    params = optax.apply_updates(params, updates)
  metrics = logitlab.guard_metrics(state)
  applied = [r for r in ratios if r > 0]  # MultiSteps applies every 2nd call
  if correct:
    assert max(applied) <= 1.0 + 1e-5 and int(metrics["guard/num_mismatched"]) == 0
    np.testing.assert_allclose(metrics["guard/ratio"], applied[-1], rtol=1e-4)
    np.testing.assert_allclose(metrics["guard/applied_factor"], 1.0, atol=1e-3)
  else:
    assert max(applied) > 2.0  # the misplaced guard does not cap the step
    assert int(metrics["guard/num_mismatched"]) == 3  # steps 2, 3, 4 check steps 1, 2, 3
    assert abs(float(metrics["guard/applied_factor"]) - 1.0) > 0.1
  if placement == "after_adam_then_lr":
    np.testing.assert_allclose(metrics["guard/applied_factor"], -50.0, rtol=1e-3)


def test_misplaced_guard_raises_by_default_eager_and_poisons_under_jit():
  """Eager: RadiusGuardPlacementError. Under jit (cannot raise): a warning naming the cause
  and a NaN update for the step, never a silently uncapped step."""
  params, logits_fn, loss_fn, _ = _problem()
  tx = optax.chain(logitlab.radius_guard(), optax.adam(50.0))  # the spelling of issue 12
  for jit in (False, True):
    state = tx.init(params)
    step = lambda p, st: tx.update(jax.grad(loss_fn)(p), st, p, logits_fn=logits_fn)
    step = jax.jit(step) if jit else step
    updates, state = step(params, state)  # the first step cannot be checked yet
    assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))
    moved = optax.apply_updates(params, updates)
    if not jit:
      with pytest.raises(logitlab.RadiusGuardPlacementError,
                         match="radius_guard: the parameters moved by"):
        step(moved, state)
      continue
    with pytest.warns(logitlab.RadiusGuardPlacementWarning, match="returned a NaN update"):
      updates, state = jax.block_until_ready(step(moved, state))
    assert all(np.isnan(u).all() for u in jax.tree.leaves(updates))
    assert int(logitlab.guard_metrics(state)["guard/num_mismatched"]) == 1
  warn = optax.chain(logitlab.radius_guard(on_mismatch="warn"), optax.adam(50.0))
  state = warn.init(params)
  updates, state = warn.update(jax.grad(loss_fn)(params), state, params, logits_fn=logits_fn)
  with pytest.warns(logitlab.RadiusGuardPlacementWarning):
    warn.update(jax.grad(loss_fn)(params), state, optax.apply_updates(params, updates),
                logits_fn=logits_fn)


@pytest.mark.parametrize("on_mismatch", ["raise", "warn"])
def test_placement_check_adds_no_effect_to_the_jitted_step(on_mismatch):
  """An effect (e.g. ``jax.debug.callback``) takes a jitted train step off JAX's C++ dispatch
  path (~20 us per argument leaf per step); the host report must be effect-free."""
  params, logits_fn, loss_fn, _ = _problem()
  tx = logitlab.radius_guard(optax.adam(1e-2), on_mismatch=on_mismatch)
  step = lambda p, st: tx.update(jax.grad(loss_fn)(p), st, p, logits_fn=logits_fn)
  assert not jax.make_jaxpr(step)(params, tx.init(params)).effects


@pytest.mark.parametrize("kwargs, match", [
    ({"max_ratio": 0.0}, "`max_ratio`"), ({"max_ratio": -1.0}, "`max_ratio`"),
    ({"max_ratio": float("nan")}, "`max_ratio`"), ({"temperature": 0.0}, "`temperature`"),
    ({"temperature": -2.0}, "`temperature`"), ({"on_mismatch": "maybe"}, "`on_mismatch`")])
def test_bad_configuration_raises_naming_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    logitlab.radius_guard(optax.adam(1.0), **kwargs)


def test_traced_bad_hyperparameter_gives_nan_update_and_wrong_mask_raises():
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  tx = optax.inject_hyperparams(logitlab.radius_guard)(max_ratio=1.0)
  state = tx.init(params)
  state.hyperparams["max_ratio"] = jnp.asarray(0.0)
  with pytest.raises(ValueError, match="`max_ratio`"):  # eager: concrete, raises
    tx.update(grads, state, params, logits_fn=logits_fn)
  updates, _ = jax.jit(lambda st: tx.update(grads, st, params, logits_fn=logits_fn))(state)
  assert all(np.all(np.isnan(np.asarray(u))) for u in jax.tree.leaves(updates))
  guard = logitlab.radius_guard(optax.adam(1.0))
  with pytest.raises(ValueError, match="`logits_mask`"):  # [B, 1] for [B, K] logits
    guard.update(grads, guard.init(params), params, logits_fn=logits_fn,
                 logits_mask=jnp.ones((16, 1), bool))


def test_chain_form_passes_a_nan_proposal_on_and_apply_if_finite_recovers():
  """Stage form: a NaN gradient is not hidden as a zero step (Adam's moments before the guard
  would stay NaN and freeze training); optax.apply_if_finite skips it with every state kept."""
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  nan_grads = jax.tree.map(lambda g: g * jnp.nan, grads)
  chain = optax.chain(optax.adam(1.0), logitlab.radius_guard())
  updates, state = chain.update(nan_grads, chain.init(params), params, logits_fn=logits_fn)
  assert all(np.all(np.isnan(np.asarray(u))) for u in jax.tree.leaves(updates))
  assert int(logitlab.guard_metrics(state)["guard/num_skipped"]) == 1

  safe = optax.apply_if_finite(chain, max_consecutive_errors=3)
  state = safe.init(params)
  for g in (nan_grads, grads, grads):
    updates, state = safe.update(g, state, params, logits_fn=logits_fn)
    params = optax.apply_updates(params, updates)
  assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))
  assert float(np.abs(np.asarray(updates["w1"])).max()) > 0  # training goes on
  adam_state = state.inner_state[0][0]
  assert np.all(np.isfinite(np.asarray(adam_state.mu["w1"])))
  assert int(state.total_notfinite) == 1


def test_logits_jvp_form_matches_logits_fn_form():
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  tx = logitlab.radius_guard(optax.adam(10.0))
  via_fn, _ = tx.update(grads, tx.init(params), params, logits_fn=logits_fn)
  _, jvp = jax.linearize(logits_fn, params)
  via_jvp, _ = tx.update(grads, tx.init(params), params, logits_jvp=jvp)
  chex.assert_trees_all_close(via_fn, via_jvp, rtol=1e-5)


def test_jit_does_not_recompile_and_ignores_unknown_extra_args():
  params, logits_fn, loss_fn, x = _problem()
  traces = []
  tx = logitlab.radius_guard(optax.adam(1.0))

  @jax.jit
  def step(params, state, x):
    traces.append(1)
    fn = lambda p: jnp.tanh(x @ p["w1"]) @ p["w2"]
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params, logits_fn=fn,
                               some_other_arg=jnp.ones(3))
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state, x)
  assert len(traces) == 1


def test_missing_logits_argument_raises_clear_error():
  params, _, loss_fn, _ = _problem()
  tx = logitlab.radius_guard(optax.sgd(1.0))
  with pytest.raises(ValueError, match="logits_fn"):
    tx.update(jax.grad(loss_fn)(params), tx.init(params), params)


def test_non_finite_tangent_skips_step_and_keeps_inner_state():
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  tx = logitlab.radius_guard(optax.adam(1.0))
  state = tx.init(params)
  bad_fn = lambda p: logits_fn(p) * jnp.sqrt(-1.0 + 0 * p["w1"].sum())  # NaN tangent
  updates, new_state = tx.update(grads, state, params, logits_fn=bad_fn)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
  assert int(new_state.num_skipped) == 1 and float(new_state.scale) == 0.0
  chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
  nan_grads = jax.tree.map(lambda g: g * jnp.nan, grads)
  updates, new_state = tx.update(nan_grads, state, params, logits_fn=logits_fn)
  assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))
  assert int(new_state.num_skipped) == 1


def test_inject_hyperparams_and_multisteps():
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  tx = optax.chain(optax.adam(20.0),
                   optax.inject_hyperparams(logitlab.radius_guard)(max_ratio=0.25))
  updates, state = tx.update(grads, tx.init(params), params, logits_fn=logits_fn)
  assert independent_ratio(logits_fn, params, updates) <= 0.25 * (1 + 1e-5)
  state[1].hyperparams["max_ratio"] = jnp.asarray(0.1)
  updates, _ = tx.update(grads, state, params, logits_fn=logits_fn)
  assert independent_ratio(logits_fn, params, updates) <= 0.1 * (1 + 1e-5)

  multi = optax.MultiSteps(logitlab.radius_guard(optax.adam(20.0), max_ratio=0.5), 2)
  state = multi.init(params)
  first, state = multi.update(grads, state, params, logits_fn=logits_fn)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(first))
  second, state = multi.update(grads, state, params, logits_fn=logits_fn)
  r = independent_ratio(logits_fn, params, second)
  assert 0.5 * (1 - 1e-4) <= r <= 0.5 * (1 + 1e-5)
  assert int(logitlab.guard_metrics(state)["guard/num_capped"]) == 1


def test_mask_and_temperature_are_respected():
  params, logits_fn, loss_fn, _ = _problem()
  grads = jax.grad(loss_fn)(params)
  mask = jnp.arange(16) < 8
  tx = logitlab.radius_guard(optax.adam(50.0), temperature=2.0)
  updates, _ = tx.update(grads, tx.init(params), params, logits_fn=logits_fn, logits_mask=mask)
  masked_fn = lambda p: logits_fn(p)[:8]
  # Temperature 2 doubles the radius: the capped step has r = 2 in units of T = 1.
  np.testing.assert_allclose(independent_ratio(masked_fn, params, updates), 2.0, rtol=1e-4)


def test_bf16_applied_step_obeys_the_cap_after_the_cast():
  """bf16 parameters, updates and logits: r of the returned (cast) update, measured from an
  independent float32 Jacobian at the same point, never exceeds max_ratio (it did by up to
  ~0.6 % on about half of the capped steps before issue 12)."""
  worst = 0.0
  for seed in range(3):
    params, logits_fn, loss_fn, _ = _problem(seed=seed)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    f32 = lambda t: jax.tree.map(lambda q: q.astype(jnp.float32), t)
    fn = lambda p: logits_fn(p).astype(jnp.bfloat16)
    tx = logitlab.radius_guard(optax.adam(50.0))
    step = jax.jit(lambda p, st: tx.update(jax.grad(lambda q: loss_fn(f32(q)))(p), st, p,
                                           logits_fn=fn))
    state = tx.init(params)
    for _ in range(6):
      updates, state = step(params, state)
      assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
      r = independent_ratio(logits_fn, f32(params), f32(updates))
      assert r <= 1.0, r
      assert float(state.ratio) <= 1.0 and r >= 0.45  # capped, at worst halved
      worst = max(worst, r)
      params = optax.apply_updates(params, updates)
  assert worst > 0.98  # the margin costs < 2 %


class _Count(nnx.Variable):
  """A custom Variable type (a call counter)."""


class _StatefulNet(nnx.Module):
  """Every kind of non-parameter write a forward can do: a custom Variable, BatchNorm
  statistics (train mode), Dropout drawing from an RNG stream, `sow`."""

  def __init__(self, rngs):
    self.hidden = nnx.Linear(6, 16, rngs=rngs)
    self.norm = nnx.BatchNorm(16, rngs=rngs)
    self.drop = nnx.Dropout(0.3, rngs=rngs)
    self.head = nnx.Linear(16, 5, rngs=rngs)
    self.calls = _Count(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    self.calls[...] += 1
    h = self.drop(jax.nn.relu(self.norm(self.hidden(x))))
    self.sow(nnx.Intermediate, "features", h)
    return self.head(h)


def _snapshot(model):
  """(graphdef, every Variable as a NumPy array, RNG keys as their key data)."""
  graphdef, state = nnx.split(model)
  as_np = lambda v: np.asarray(
      jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
  return graphdef, jax.tree.map(as_np, nnx.to_pure_dict(state))


def _stateful_problem():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 6)), jnp.float32)
  return _StatefulNet(nnx.Rngs(0)), x, jnp.arange(16) % 5


@pytest.mark.parametrize("eval_mode", [True, False])
def test_nnx_logits_fn_is_pure_and_leaves_the_model_bit_identical(eval_mode):
  model, x, _ = _stateful_problem()
  before = _snapshot(model)
  fn = logitlab.nnx_logits_fn(model, x, eval_mode=eval_mode)
  params = nnx.state(model, nnx.Param)
  first = fn(params)
  _, tangent = jax.jvp(fn, (params,), (params,))  # raised TraceContextError before issue 12
  chex.assert_trees_all_equal(fn(params), first)  # same snapshot, same dropout mask
  assert np.all(np.isfinite(np.asarray(tangent)))
  after = _snapshot(model)
  assert after[0] == before[0]  # no `sow` attribute added, still in train mode
  chex.assert_trees_all_equal(after[1], before[1])
  assert not model.norm.use_running_average and not model.drop.deterministic


@pytest.mark.parametrize("jit", [False, True])
def test_nnx_optimizer_update_with_stateful_model(jit):
  """The guard inside nnx.Optimizer.update, eager and under nnx.jit: the applied step obeys
  the post-condition (independent Jacobian in eval mode at the same state) and the update
  changes the parameters only."""
  model, x, y = _stateful_problem()
  opt = nnx.Optimizer(model, logitlab.radius_guard(optax.adam(5.0)), wrt=nnx.Param)

  def step(model, opt, x, y):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    grads = nnx.grad(loss)(model)  # train-mode forward: statistics, RNG count, counter move
    _, params_before, rest_before = nnx.as_pure(nnx.split(model, nnx.Param, ...))
    updates = opt.update(model, grads, logits_fn=logitlab.nnx_logits_fn(model, x))
    _, _, rest_after = nnx.as_pure(nnx.split(model, nnx.Param, ...))
    return updates, params_before, rest_before, rest_after

  updates, params_before, rest_before, rest_after = (nnx.jit(step) if jit else step)(
      model, opt, x, y)
  chex.assert_trees_all_equal(rest_after, rest_before)
  graphdef = nnx.graphdef(model)  # after the step: the gradient's forward sowed `features`

  def eval_logits(p):
    m = nnx.merge(graphdef, p, rest_before, copy=True)
    m.eval()
    return m(x)

  assert independent_ratio(eval_logits, params_before, updates) <= 1.0 + 1e-4
  assert int(logitlab.guard_metrics(opt.opt_state)["guard/num_capped"]) == 1


def test_linen_recipe_eval_and_train_mode():
  """docs/radius_guard.md: linen is functional; build logits_fn from the variables dict."""
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x)))
      h = nn.Dropout(0.3, deterministic=not train)(h)
      self.sow("intermediates", "features", h)
      return nn.Dense(5)(h)

  _, x, y = _stateful_problem()
  net = Net()
  variables = net.init({"params": jax.random.key(0)}, x, train=False)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  eval_fn = lambda p: net.apply({"params": p, **rest}, x, train=False)
  train_fn = lambda p: net.apply({"params": p, **rest}, x, train=True,
                                 mutable=["batch_stats", "intermediates"],
                                 rngs={"dropout": jax.random.key(1)})[0]
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(eval_fn(p), y).mean()
  tx = logitlab.radius_guard(optax.adam(5.0))
  for fn in (eval_fn, train_fn):
    updates, state = jax.jit(lambda p, fn=fn: tx.update(jax.grad(loss)(p), tx.init(p), p,
                                                        logits_fn=fn))(params)
    assert int(state.num_capped) == 1
    assert independent_ratio(fn, params, updates) <= 1.0 + 1e-4


def test_placement_report_under_vmap_over_seeds():
  """digits_trainer vmaps whole guarded runs over seeds: the report works per seed."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 16))
  logits_fn = lambda p: x @ p["w"]
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(logits_fn(p), y).mean()

  def second_update(tx, p):
    state = tx.init(p)
    u, state = tx.update(jax.grad(loss)(p), state, p, logits_fn=logits_fn)
    p = optax.apply_updates(p, u)
    u, state = tx.update(jax.grad(loss)(p), state, p, logits_fn=logits_fn)
    return u["w"], logitlab.guard_metrics(state)["guard/num_mismatched"]

  seeds = {"w": jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)}
  misplaced = optax.chain(logitlab.radius_guard(), optax.adam(50.0))
  with pytest.warns(logitlab.RadiusGuardPlacementWarning):
    u, count = jax.jit(jax.vmap(lambda p: second_update(misplaced, p)))(seeds)
  assert np.isnan(np.asarray(u)).all() and list(np.asarray(count)) == [1, 1]
  u, count = jax.jit(jax.vmap(
      lambda p: second_update(logitlab.radius_guard(optax.adam(50.0)), p)))(seeds)
  assert np.isfinite(np.asarray(u)).all() and list(np.asarray(count)) == [0, 0]
