"""Every logit-space API under Explicit, Auto and mixed mesh axis types (issue 12, point 1).

`jax.make_mesh` creates Explicit axes by default, where an ambiguous sharding is a type error
at trace time rather than something the partitioner resolves. Each test places the batch on
`("data", "fsdp")` and the classes / parameters on `fsdp` and `tensor` of a 2x2x2 mesh of the
8 forced CPU devices (tests/conftest.py) and compares with one device (rtol 1e-5). "mixed" is
data and fsdp Explicit with tensor Auto (batch typed, model axes propagated).
The training step on these meshes: tests/test_training.py (parametrized over the same modes).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import logitlab
from logitlab import distill_chunked, ghosts, losses, training

E, A = AxisType.Explicit, AxisType.Auto
MODES = {"explicit": (E, E, E), "auto": (A, A, A), "mixed": (E, E, A)}
ROWS = P(("data", "fsdp"))


@pytest.fixture(params=sorted(MODES))
def mesh(request):
  return training.make_mesh({"data": 2, "fsdp": 2, "tensor": 2},
                            axis_types=MODES[request.param])


def _put(mesh, tree, specs):
  return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)


def _assert_close(got, want, rtol=1e-5, atol=1e-7):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


# --- logitlab.losses and logitlab.ghosts on [B, C] logits --------------------------------------

_FNS = {  # (student, second logits, labels, mask) -> scalar; every loss family, every radius
    "cross_entropy": lambda s, t, y, m: losses.cross_entropy(s, y, where=m, label_smoothing=0.1),
    "soft_cross_entropy": lambda s, t, y, m: losses.soft_cross_entropy(
        s, jax.nn.softmax(t), where=m),
    "kd": lambda s, t, y, m: losses.kd(s, t, where=m),
    "dkd": lambda s, t, y, m: losses.dkd(s, t, y, where=m),
    "nkd": lambda s, t, y, m: losses.nkd(s, t, y, where=m),
    "uskd": lambda s, t, y, m: losses.uskd(s, t, y, where=m)[0],
    "dhkd": lambda s, t, y, m: losses.dhkd(s, t, y, aux_logits=0.5 * s + t, where=m)[0],
    "standardized_kd": lambda s, t, y, m: losses.with_standardized_logits(losses.kd)(
        s, t, where=m),
    "kd_with_labels": lambda s, t, y, m: losses.kd(s, t, y, where=m),
    "uskd_soft_labels": lambda s, t, y, m: losses.uskd(
        s, t, jax.nn.softmax(3.0 * t[::-1]), where=m, student_rank_scores="log_probs")[0],
    "nkd_soft_labels": lambda s, t, y, m: losses.nkd(s, t, jax.nn.softmax(3.0 * t[::-1]),
                                                     where=m),
    "mlkd": lambda s, t, y, m: losses.mlkd(s, t, y, strong_student_logits=0.5 * s,
                                           strong_teacher_logits=t[::-1], where=m)[0],
    "ctkd": lambda s, t, y, m: losses.ctkd(s, t, y, temperature_param=jnp.float32(0.3),
                                           grad_scale=-0.5, where=m),
    "logit_spread": lambda s, t, y, m: ghosts.logit_spread(s, where=m).sum(),
    "radius": lambda s, t, y, m: jnp.sum(1.0 / ghosts.radius(s, where=m, temperature=2.0)),
    "top2_radius": lambda s, t, y, m: jnp.sum(1.0 / ghosts.top2_radius(t, s, y)),
    "normalized_step": lambda s, t, y, m: ghosts.normalized_step(s, where=m).ratio,
}


def _logit_problem():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 16, 8)).astype(np.float32) * 2
  labels = rng.integers(0, 8, 16).astype(np.int32)
  mask = rng.random(16) < 0.8
  return student, teacher, labels, mask


@functools.cache
def _logit_reference():
  args = _logit_problem()
  out = {n: jax.jit(jax.value_and_grad(f))(*args) for n, f in _FNS.items()}
  out["binding_index"] = jax.jit(lambda s, m: ghosts.normalized_step(s, where=m).binding_index)(
      args[0], args[3])
  return out


def test_losses_and_radii_match_one_device(mesh):
  """Logits split over the batch (data, fsdp) and the classes (tensor): value and gradient."""
  student, teacher, labels, mask = _logit_problem()
  logits, rows = P(("data", "fsdp"), "tensor"), ROWS
  args = _put(mesh, (student, teacher, labels, mask), (logits, logits, rows, rows))
  reference = _logit_reference()
  for name, fn in _FNS.items():
    value, grad = jax.jit(jax.value_and_grad(fn))(*args)
    assert grad.sharding.num_devices == 8
    _assert_close((value, grad), reference[name])
  index = jax.jit(lambda s, m: ghosts.normalized_step(s, where=m).binding_index)(
      args[0], args[3])
  assert int(index) == int(reference["binding_index"])


# --- logitlab.distill_chunked --------------------------------------------------------------

def _distill_problem():
  rng = np.random.default_rng(1)
  b, t, d, v, k = 4, 7, 8, 16, 3
  hs, ht = rng.normal(size=(2, b, t, d)).astype(np.float32)
  ws, wt = rng.normal(size=(2, d, v)).astype(np.float32)
  mask = rng.random((b, t)) > 0.3
  top_vals, top_ids = jax.lax.top_k(rng.normal(size=(b, t, v)).astype(np.float32), k)
  return ws, hs, ht, wt, mask, np.asarray(top_vals), np.asarray(top_ids)


def _distill_losses(ws, hs, ht, wt, mask, top_vals, top_ids):
  full = dict(teacher_hidden=ht, teacher_logits_fn=lambda h: h @ wt, chunk_size=3)
  return (
      distill_chunked.chunked_distill_loss(hs, lambda h: h @ ws, mask, divergence="jsd", **full)
      + distill_chunked.chunked_distill_loss(hs, lambda w, h: h @ w, mask, student_params=ws,
                                             **full)
      + distill_chunked.chunked_distill_loss(hs, lambda h: h @ ws, mask, chunk_size=3,
                                             teacher_topk_logits=top_vals,
                                             teacher_topk_ids=top_ids))


@functools.cache
def _distill_reference():
  return jax.jit(jax.value_and_grad(_distill_losses, (0, 1)))(*_distill_problem())


def test_distill_chunked_matches_one_device(mesh):
  """Hidden states split over the batch, the vocabulary projection over tensor."""
  vocab, rows = P(None, "tensor"), ROWS
  args = _put(mesh, _distill_problem(), (vocab, rows, rows, vocab, rows, rows, rows))
  got = jax.jit(jax.value_and_grad(_distill_losses, (0, 1)))(*args)
  _assert_close(got, _distill_reference(), rtol=1e-5, atol=1e-6)


# --- logitlab.radius_guard -------------------------------------------------------------------

PARAM_SPECS = {"w1": P("fsdp", "tensor"), "w2": P("tensor", "fsdp")}


def _guard_problem():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(16, 8)).astype(np.float32)
  y = rng.integers(0, 8, 16).astype(np.int32)
  params = {"w1": rng.normal(size=(8, 8)).astype(np.float32) * 0.5,
            "w2": rng.normal(size=(8, 8)).astype(np.float32) * 0.5}
  return params, x, y


def _guarded_step(params, x, y, *, gather):
  """FSDP-style model: parameters are gathered before use (`jax.sharding.reshard`, the
  spelling that is valid under Explicit and Auto axes alike)."""
  def logits_fn(p):
    return jnp.tanh(x @ gather(p["w1"])) @ gather(p["w2"])

  loss = lambda p: losses.cross_entropy(logits_fn(p), y)
  tx = logitlab.radius_guard(optax.adam(30.0))
  grads = jax.grad(loss)(params)
  updates, state = tx.update(grads, tx.init(params), params, logits_fn=logits_fn)
  metrics = logitlab.guard_metrics(state)
  return updates, metrics["guard/ratio"], metrics["guard/num_capped"]


def test_radius_guard_matches_one_device(mesh):
  params, x, y = _guard_problem()
  want = jax.jit(functools.partial(_guarded_step, gather=lambda w: w))(params, x, y)
  assert int(want[2]) == 1  # the spike is capped
  replicate = NamedSharding(mesh, P())
  step = functools.partial(_guarded_step, gather=lambda w: jax.sharding.reshard(w, replicate))
  args = _put(mesh, (params, x, y), (PARAM_SPECS, ROWS, ROWS))
  got = jax.jit(step)(*args)
  _assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_misplaced_guard_reports_on_the_mesh(mesh):
  """The placement report (a host callback inside `lax.cond`) fires from a sharded step and
  the step's update is NaN (an exception there would hang the other devices)."""
  params, x, y = _guard_problem()
  replicate = NamedSharding(mesh, P())
  gather = lambda w: jax.sharding.reshard(w, replicate)
  logits_fn = lambda p, x: jnp.tanh(x @ gather(p["w1"])) @ gather(p["w2"])
  tx = optax.chain(logitlab.radius_guard(), optax.adam(30.0))  # the guard before Adam

  @jax.jit
  def step(p, state, x, y):
    grads = jax.grad(lambda p: losses.cross_entropy(logits_fn(p, x), y))(p)
    updates, state = tx.update(grads, state, p, logits_fn=lambda p: logits_fn(p, x))
    return optax.apply_updates(p, updates), state

  params, x, y = _put(mesh, (params, x, y), (PARAM_SPECS, ROWS, ROWS))
  params, state = step(params, tx.init(params), x, y)  # step 1 cannot be checked
  with pytest.warns(logitlab.RadiusGuardPlacementWarning, match="radius_guard: the parameters"):
    params, state = jax.block_until_ready(step(params, state, x, y))
  assert all(np.isnan(np.asarray(p)).all() for p in jax.tree.leaves(params))
