"""Tests for logitlab.second_order (arXiv 2506.13710) against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from logitlab import second_order as so
from logitlab.second_order import curvature


def _sigmoid(t):
  return 1.0 / (1.0 + np.exp(-t))


def _softmax(z):
  """float64 softmax over the last axis."""
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _logistic_data(rng, n=48, d=4):
  features = rng.normal(size=(n, d))
  w_true = rng.normal(size=d)
  # Label noise keeps the classes overlapping, so a finite unique optimum exists.
  labels = (features @ w_true + 0.8 * rng.normal(size=n) > 0).astype(np.float64)
  return features, labels


def _dense(curvature_fn, params, *data):
  dense_fn = jax.jit(lambda p, *d: curvature.dense_matrix(curvature_fn(p, *d), p))
  return np.asarray(dense_fn(params, *data), np.float64)


def _run(solver, params, data, num_steps):
  update = jax.jit(solver.update)
  states = [solver.init(params, *data)]
  for _ in range(num_steps):
    states.append(update(states[-1], *data))
  return states


# ---------------------------------------------------------------- curvature operators


def test_logistic_curvatures_match_numpy(rng):
  features, labels = _logistic_data(rng)
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels), l2=0.1)
  w = rng.normal(size=features.shape[1])
  signs = 2 * labels - 1
  t = signs * (features @ w)
  n, d = features.shape
  loss = np.log1p(np.exp(-t))
  dloss = -_sigmoid(-t)  # l'(t)
  hess_np = features.T @ (features * (_sigmoid(t) * _sigmoid(-t))[:, None]) / n + 0.1 * np.eye(d)
  fisher_np = features.T @ (features * (dloss**2)[:, None]) / n + 0.1 * np.eye(d)
  nfisher_np = features.T @ (features * (dloss**2 / loss)[:, None]) / n + 0.1 * np.eye(d)
  w32 = jnp.asarray(w, jnp.float32)
  for name, expected in [("hessian", hess_np), ("gauss_newton", hess_np), ("fisher", fisher_np),
                         ("normalized_fisher", nfisher_np)]:
    np.testing.assert_allclose(_dense(problem.curvatures[name], w32, *problem.data), expected,
                               rtol=1e-4, atol=1e-5, err_msg=name)
  # l'^2 / l >= l'': the normalized Fisher upper-bounds the Hessian.
  assert np.linalg.eigvalsh(nfisher_np - hess_np).min() > -1e-10
  assert np.linalg.eigvalsh(
      _dense(problem.curvatures["normalized_fisher"], w32, *problem.data) - hess_np).min() > -1e-4


def test_softmax_gauss_newton_and_fisher_match_numpy(rng):
  n, d, c = 20, 3, 4
  features = rng.normal(size=(n, d))
  labels = rng.integers(0, c, size=n)
  problem = so.problems.softmax_regression(jnp.asarray(features, jnp.float32),
                                           jnp.asarray(labels), c)
  w = rng.normal(size=(d, c))
  logits = features @ w
  probs = _softmax(logits)
  one_hot = np.eye(c)[labels]
  # ravel of W [d, C] is row-major: index j * C + k, matching np.kron(a, .).
  gn_np = sum(np.kron(np.outer(a, a), np.diag(p) - np.outer(p, p))
              for a, p in zip(features, probs)) / n
  fisher_np = sum(np.outer(np.kron(a, p - y), np.kron(a, p - y))
                  for a, p, y in zip(features, probs, one_hot)) / n
  w32 = jnp.asarray(w, jnp.float32)
  np.testing.assert_allclose(_dense(problem.curvatures["gauss_newton"], w32, *problem.data),
                             gn_np, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_dense(problem.curvatures["hessian"], w32, *problem.data),
                             gn_np, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_dense(problem.curvatures["fisher"], w32, *problem.data),
                             fisher_np, rtol=1e-4, atol=1e-6)


def test_matrix_free_gauss_newton_on_pytree_params(rng):
  """J^T H_z J v through jvp/vjp on {'kernel', 'bias'} equals the dense NumPy matrix."""
  n, d, c = 16, 3, 5
  features = rng.normal(size=(n, d))
  labels = rng.integers(0, c, size=n)

  def model_fn(params, x, y):
    return x @ params["kernel"] + params["bias"]

  def loss_fn(z, x, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))

  params = {"kernel": jnp.asarray(rng.normal(size=(d, c)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}
  data = (jnp.asarray(features, jnp.float32), jnp.asarray(labels))
  matvec = curvature.gauss_newton(model_fn, loss_fn)(params, *data)
  vec = {"kernel": jnp.asarray(rng.normal(size=(d, c)), jnp.float32),
         "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}
  got = ravel_pytree(matvec(vec))[0]
  # ravel_pytree orders dict keys: bias [C] first, then kernel [d, C] row-major.
  augmented = np.c_[np.ones(n), features]  # bias acts like a ones feature
  logits = features @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])
  probs = _softmax(logits)
  gn_np = sum(np.kron(np.outer(a, a), np.diag(p) - np.outer(p, p))
              for a, p in zip(augmented, probs)) / n
  expected = gn_np @ np.asarray(ravel_pytree(vec)[0], np.float64)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_weighted_gauss_newton_is_hessian_plus_outer_gradient(rng):
  m, d, mu = 30, 6, 0.5
  matrix, offsets = rng.normal(size=(m, d)), rng.normal(size=m)
  problem = so.problems.logsumexp(jnp.asarray(matrix, jnp.float32),
                                  jnp.asarray(offsets, jnp.float32), mu)
  x = rng.normal(size=d)
  pi = _softmax((matrix @ x - offsets) / mu)
  grad = matrix.T @ pi
  hess_np = matrix.T @ (np.diag(pi) - np.outer(pi, pi)) @ matrix / mu
  wgn_np = matrix.T @ (matrix * pi[:, None]) / mu
  np.testing.assert_allclose(wgn_np, hess_np + np.outer(grad, grad) / mu, atol=1e-12)
  x32 = jnp.asarray(x, jnp.float32)
  hess = _dense(problem.curvatures["hessian"], x32, *problem.data)
  wgn = _dense(problem.curvatures["weighted_gauss_newton"], x32, *problem.data)
  np.testing.assert_allclose(hess, hess_np, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(wgn, hess_np + np.outer(grad, grad) / mu, rtol=1e-4, atol=1e-5)


def test_nonlinear_equations_curvatures_match_paper_formulas(rng):
  m, d, p = 10, 4, 4.0
  matrix, offsets = rng.normal(size=(m, d)), rng.normal(size=m)
  problem = so.problems.nonlinear_equations(jnp.asarray(matrix, jnp.float32),
                                            jnp.asarray(offsets, jnp.float32), p)
  x = rng.normal(size=d)
  u = matrix @ x - offsets
  norm = np.linalg.norm(u)
  jtu = matrix.T @ u
  inexact_np = norm**(p - 2) * matrix.T @ matrix + (p - 2) * norm**(p - 4) * np.outer(jtu, jtu)
  fisher_term_np = (p - 2) * norm**(p - 4) * np.outer(jtu, jtu)
  x32 = jnp.asarray(x, jnp.float32)
  for name, expected in [("hessian", inexact_np), ("gauss_newton", inexact_np),
                         ("fisher_term", fisher_term_np)]:
    np.testing.assert_allclose(_dense(problem.curvatures[name], x32, *problem.data), expected,
                               rtol=1e-4, atol=1e-3, err_msg=name)


def test_rosenbrock_gauss_newton_matches_numpy(rng):
  d = 5
  x = rng.normal(size=d)
  jac = np.zeros((2 * (d - 1), d))
  for i in range(d - 1):
    jac[i, i], jac[i, i + 1] = -20 * x[i], 10.0
    jac[d - 1 + i, i] = -1.0
  problem = so.problems.rosenbrock()
  np.testing.assert_allclose(
      _dense(problem.curvatures["gauss_newton"], jnp.asarray(x, jnp.float32)),
      2 * jac.T @ jac, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- solver properties


def _check_accepted_steps(states, metric=None):
  """Monotone f, ||dx||_B <= gamma and the acceptance inequality on every accepted step."""
  metric = np.eye(ravel_pytree(states[0].params)[0].size) if metric is None else metric
  num_accepted = 0
  for old, new in zip(states[:-1], states[1:]):
    x_old = np.asarray(ravel_pytree(old.params)[0], np.float64)
    x_new = np.asarray(ravel_pytree(new.params)[0], np.float64)
    dx = x_new - x_old
    if not bool(new.accepted):
      np.testing.assert_array_equal(dx, 0.0)
      continue
    num_accepted += 1
    gamma = float(new.step_gamma)
    assert float(new.value) <= float(old.value)
    assert np.sqrt(dx @ metric @ dx) <= gamma * (1 + 1e-4) + 1e-7
    lam = float(old.grad_norm) / (gamma + 1e-8)
    assert float(old.value) - float(new.value) >= float(new.grad_norm)**2 / (8 * lam) - 1e-7
  return num_accepted


@pytest.mark.parametrize("linear_solver", ["cholesky", "cg"])
def test_monotone_decrease_and_step_bound_logistic(rng, linear_solver):
  features, labels = _logistic_data(rng)
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels))
  solver = so.gradient_normalized_newton(problem.value_fn,
                                         problem.curvatures["normalized_fisher"],
                                         linear_solver=linear_solver, gamma_init=10.0)
  states = _run(solver, jnp.zeros(features.shape[1]), problem.data, 15)
  assert _check_accepted_steps(states) >= 10
  assert float(states[-1].value) < 0.7 * float(states[0].value)


@pytest.mark.parametrize("linear_solver", ["cholesky", "cg"])
def test_monotone_and_step_bound_with_metric_on_rosenbrock(rng, linear_solver):
  """||dx||_B <= gamma with B != I; CG solves the B-regularized system too."""
  d = 6
  metric = np.diag(rng.uniform(0.5, 2.0, size=d))
  problem = so.problems.rosenbrock()
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["gauss_newton"],
                                         metric=jnp.asarray(metric, jnp.float32),
                                         linear_solver=linear_solver)
  states = _run(solver, jnp.full((d,), -1.2), problem.data, 60)
  assert _check_accepted_steps(states, metric) >= 30
  assert float(states[-1].value) < 1e-3 * float(states[0].value)


def test_indefinite_hessian_trials_are_rejected_not_fatal():
  """Exact Rosenbrock Hessian is indefinite at x0: Cholesky NaNs must only shrink gamma."""
  problem = so.problems.rosenbrock()
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["hessian"],
                                         gamma_init=100.0)
  states = _run(solver, jnp.array([-1.2, 1.0, -1.2, 1.0]), (), 40)
  assert all(np.isfinite(float(s.value)) for s in states)
  assert np.all(np.diff([float(s.value) for s in states]) <= 0)
  assert float(states[-1].value) < float(states[0].value)


def test_step_solves_regularized_newton_system(rng):
  """dx = -(H + lambda I)^{-1} g with lambda = ||g||/(gamma+eps), and the Lipschitz variant."""
  m, d = 40, 5
  matrix, offsets = rng.normal(size=(m, d)), rng.normal(size=m)
  problem = so.problems.logsumexp(jnp.asarray(matrix, jnp.float32),
                                  jnp.asarray(offsets, jnp.float32))
  x0 = rng.normal(size=d)

  def numpy_step(lam):
    pi = _softmax(matrix @ x0 - offsets)
    grad = matrix.T @ pi
    wgn = matrix.T @ (matrix * pi[:, None])
    return -np.linalg.solve(wgn + lam * np.eye(d), grad), np.linalg.norm(grad)

  for lipschitz in [None, 3.0]:
    solver = so.gradient_normalized_newton(
        problem.value_fn, problem.curvatures["weighted_gauss_newton"], hessian_lipschitz=lipschitz)
    state = solver.init(jnp.asarray(x0, jnp.float32), *problem.data)
    new = jax.jit(solver.update)(state, *problem.data)
    assert bool(new.accepted)
    grad_norm = numpy_step(1.0)[1]
    if lipschitz is None:
      lam = grad_norm / (float(new.step_gamma) + 1e-8)
    else:
      lam = np.sqrt(lipschitz * grad_norm / 2)
      np.testing.assert_allclose(float(new.step_gamma), np.sqrt(2 * grad_norm / lipschitz),
                                 rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.params) - x0, numpy_step(lam)[0], rtol=1e-3,
                               atol=1e-5)


def test_converges_to_lbfgs_optimum_on_logistic_regression(rng):
  features, labels = _logistic_data(rng, n=80, d=5)
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels), l2=1e-2)
  value_fn = lambda w: problem.value_fn(w, *problem.data)
  opt = optax.lbfgs()
  w_ref = jnp.zeros(features.shape[1])
  opt_state = opt.init(w_ref)
  value_and_grad = optax.value_and_grad_from_state(value_fn)

  @jax.jit
  def lbfgs_step(w, opt_state):
    value, grad = value_and_grad(w, state=opt_state)
    updates, opt_state = opt.update(grad, opt_state, w, value=value, grad=grad, value_fn=value_fn)
    return optax.apply_updates(w, updates), opt_state

  for _ in range(60):
    w_ref, opt_state = lbfgs_step(w_ref, opt_state)
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["normalized_fisher"])
  state = _run(solver, jnp.zeros(features.shape[1]), problem.data, 25)[-1]
  np.testing.assert_allclose(state.params, w_ref, atol=2e-3)
  np.testing.assert_allclose(float(state.value), float(value_fn(w_ref)), rtol=1e-5)
  assert float(state.grad_norm) < 1e-4


def test_update_is_jitted_once_across_data_and_iterations(rng):
  features, labels = _logistic_data(rng)
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels))
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["fisher"],
                                         linear_solver="cg")
  update = jax.jit(solver.update)
  state = solver.init(jnp.zeros(features.shape[1]), *problem.data)
  for _ in range(3):
    state = update(state, *problem.data)
  other = so.problems.logistic_regression(jnp.asarray(features[::-1], jnp.float32),
                                          jnp.asarray(labels[::-1]))
  state = update(state, *other.data)
  assert update._cache_size() == 1


def test_optax_transform_matches_solver_under_jit(rng):
  """Same iterates as the solver; unknown extras ignored; one compilation; dtype kept."""
  features, labels = _logistic_data(rng, n=32, d=3)
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels))
  value_fn = lambda w: problem.value_fn(w, *problem.data)
  tx = so.scale_by_gradient_normalized_newton(linear_solver="cholesky", gamma_init=0.5)

  @jax.jit
  def step(w, opt_state):
    updates, opt_state = tx.update(jax.grad(value_fn)(w), opt_state, w, value_fn=value_fn,
                                   unused_extra=1.0)
    return optax.apply_updates(w, updates), opt_state

  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["hessian"],
                                         gamma_init=0.5)
  states = _run(solver, jnp.zeros(3), problem.data, 4)
  w, opt_state = jnp.zeros(3), tx.init(jnp.zeros(3))
  for state in states[1:]:
    w, opt_state = step(w, opt_state)
    np.testing.assert_allclose(w, state.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt_state.gamma, state.gamma, rtol=1e-6)
  assert w.dtype == jnp.float32
  assert step._cache_size() == 1


# ---------------------------------------------------------------- numerics and validation


def test_mask_equals_subset_and_bf16_inputs(rng):
  features, labels = _logistic_data(rng)
  where = np.arange(len(labels)) < 30
  w = jnp.asarray(rng.normal(size=features.shape[1]), jnp.float32)
  masked = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                           jnp.asarray(labels), where=jnp.asarray(where))
  subset = so.problems.logistic_regression(jnp.asarray(features[:30], jnp.float32),
                                           jnp.asarray(labels[:30]))
  np.testing.assert_allclose(masked.value_fn(w, *masked.data), subset.value_fn(w, *subset.data),
                             rtol=1e-6)
  for name in ["fisher", "normalized_fisher", "gauss_newton"]:
    np.testing.assert_allclose(_dense(masked.curvatures[name], w, *masked.data),
                               _dense(subset.curvatures[name], w, *subset.data), rtol=1e-5,
                               atol=1e-7)
  bf16 = so.problems.logistic_regression(jnp.asarray(features, jnp.bfloat16), jnp.asarray(labels))
  value = bf16.value_fn(w, *bf16.data)
  assert value.dtype == jnp.float32
  solver = so.gradient_normalized_newton(bf16.value_fn, bf16.curvatures["hessian"])
  state = solver.init(w.astype(jnp.bfloat16), *bf16.data)
  assert state.params.dtype == jnp.float32
  assert np.isfinite(float(jax.jit(solver.update)(state, *bf16.data).value))


def test_stable_at_large_logits():
  """Margins of +-1e4: loss, curvature and one step stay finite."""
  features = jnp.array([[1e4, 0.0], [0.0, -1e4], [1e4, 1e4]], jnp.float32)
  labels = jnp.array([1.0, 1.0, 0.0])
  problem = so.problems.logistic_regression(features, labels)
  w = jnp.ones(2)
  np.testing.assert_allclose(float(problem.value_fn(w, *problem.data)), (1e4 + 2e4) / 3, rtol=1e-6)
  for name in problem.curvatures:
    assert np.all(np.isfinite(_dense(problem.curvatures[name], w, *problem.data))), name
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["normalized_fisher"])
  state = jax.jit(solver.update)(solver.init(w, *problem.data), *problem.data)
  assert np.isfinite(float(state.value)) and float(state.value) <= 1e4
  softmax = so.problems.softmax_regression(features, jnp.array([0, 1, 1]), 2)
  assert np.isfinite(float(softmax.value_fn(jnp.eye(2), *softmax.data)))


def test_argument_errors_name_the_argument():
  with pytest.raises(ValueError, match="labels"):
    so.problems.logistic_regression(jnp.ones((4, 2)), jnp.ones(3))
  with pytest.raises(ValueError, match="linear_solver"):
    so.gradient_normalized_newton(lambda x: x, lambda x: x, linear_solver="lu")
  with pytest.raises(ValueError, match="metric"):
    so.gradient_normalized_newton(lambda x: x, lambda x: x, metric=jnp.ones((2, 3)))
  with pytest.raises(TypeError, match="features"):
    so.problems.softmax_regression(jnp.ones((4, 2), jnp.int32), jnp.zeros(4, jnp.int32), 2)
  with pytest.raises(ValueError, match=r"`offsets` must have shape \[m\] = \(5,\)"):
    so.problems.nonlinear_equations(jnp.ones((5, 3)), jnp.ones(4))
  with pytest.raises(ValueError, match=r"`matrix` must have shape \[m, d\]"):
    so.problems.logsumexp(jnp.ones((5, 3, 2)), jnp.ones(5))
  square = lambda x: jnp.sum(x**2)
  solver = so.gradient_normalized_newton(square, curvature.hessian(square), metric=jnp.eye(4))
  with pytest.raises(ValueError, match=r"`metric` must have shape \[d, d\] with d = 3"):
    solver.init(jnp.ones(3))


# ---------------------------------------------------------------- paper-scale runs (slow)


def _scan(solver, params, data, num_steps):
  def step(state, _):
    state = solver.update(state, *data)
    return state, state.value

  return jax.jit(lambda s: jax.lax.scan(step, s, length=num_steps))(solver.init(params, *data))


@pytest.mark.slow
def test_normalized_fisher_reaches_zero_loss_on_separable_breast_cancer():
  """The paper's f* ~ 0 regime: loss -> 0 (linear tail) with the Fisher approximation."""
  from sklearn.datasets import load_breast_cancer
  features, labels = load_breast_cancer(return_X_y=True)
  features = (features - features.mean(0)) / features.std(0)
  features = np.c_[features, np.ones(len(features))].astype(np.float32)
  problem = so.problems.logistic_regression(jnp.asarray(features), jnp.asarray(labels))
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["normalized_fisher"])
  _, values = _scan(solver, jnp.zeros(features.shape[1]), problem.data, 300)
  values = np.asarray(values)
  assert np.all(np.diff(values) <= 0)
  assert values[-1] < 1e-12


@pytest.mark.slow
def test_weighted_gauss_newton_cg_on_paper_size_logsumexp(rng):
  """A 1000 x 1000, mu = 1 (the paper's size), matrix-free: f - f* < 1e-4 in 60 steps."""
  n = 1000
  matrix, offsets = rng.uniform(-1, 1, size=(n, n)), rng.uniform(-1, 1, size=n)
  matrix = matrix - _softmax(-offsets) @ matrix  # grad f(0) = 0, so x* = 0
  problem = so.problems.logsumexp(jnp.asarray(matrix, jnp.float32),
                                  jnp.asarray(offsets, jnp.float32))
  f_star = float(problem.value_fn(jnp.zeros(n), *problem.data))
  solver = so.gradient_normalized_newton(
      problem.value_fn, problem.curvatures["weighted_gauss_newton"], linear_solver="cg")
  _, values = _scan(solver, jnp.asarray(rng.uniform(-1, 1, size=n), jnp.float32), problem.data, 60)
  assert float(values[-1]) - f_star < 1e-4


def _float32_batch(seed, n=64, d=5):
  r = np.random.default_rng(seed)
  x = r.normal(size=(n, d)).astype(np.float32)
  y = (x @ r.normal(size=d) + 0.5 * r.normal(size=n) > 0).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def test_float32_stall_keeps_gamma_and_recovers_on_a_new_batch():
  """Issue 16. In float32 the acceptance test cannot pass once the loss is at round-off; the
  old rule halved gamma 40 times per iteration down to exactly 0.0, and the optax transform,
  which carries gamma across batches, then never moved again (1.92 on a new batch for 10
  steps, where a fresh optimizer reaches 0.27). Now gamma stays >= gamma_min, a stalled
  iteration keeps its starting gamma, and training on the new batch matches a fresh start."""
  tx = so.scale_by_gradient_normalized_newton(linear_solver="cholesky")

  @jax.jit
  def step(w, opt_state, x, y):
    problem = so.problems.logistic_regression(x, y)
    value_fn = lambda p: problem.value_fn(p, *problem.data)
    updates, opt_state = tx.update(jax.grad(value_fn)(w), opt_state, w, value_fn=value_fn)
    return optax.apply_updates(w, updates), opt_state, value_fn(w)

  first, second = _float32_batch(0), _float32_batch(1)
  w, opt_state = jnp.zeros(5, jnp.float32), tx.init(jnp.zeros(5))
  stalled = 0
  for _ in range(80):
    w, opt_state, _ = step(w, opt_state, *first)
    stalled += int(~opt_state.accepted)
    assert float(opt_state.gamma) >= 1e-9
  assert stalled > 10  # the first batch did reach round-off (the regime under test)
  continued = [float(step_out[2]) for step_out in _steps(step, w, opt_state, second, 10)]
  fresh = [float(step_out[2]) for step_out in _steps(step, jnp.zeros(5, jnp.float32),
                                                     tx.init(jnp.zeros(5)), second, 10)]
  assert continued[-1] <= fresh[-1] * (1 + 1e-3) + 1e-6
  assert continued[-1] < 0.5 * continued[0]


def _steps(step, w, opt_state, data, num):
  outs = []
  for _ in range(num):
    w, opt_state, loss = step(w, opt_state, *data)
    outs.append((w, opt_state, loss))
  return outs


@pytest.mark.parametrize("linear_solver", ["cholesky", "cg"])
def test_fixed_gamma_mode_and_solve_diagnostics(rng, linear_solver):
  """``adaptive_search=False`` (the reference's fixed-gamma mode): one solve per iteration at
  gamma_init, always taken. The state reports the CG iterations and the relative residual of
  the last solve (Cholesky: 0 iterations, residual at round-off)."""
  features, labels = _logistic_data(rng, n=40, d=4)
  problem = so.problems.logistic_regression(jnp.asarray(features), jnp.asarray(labels))
  solver = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["hessian"],
                                         gamma_init=0.3, adaptive_search=False,
                                         linear_solver=linear_solver, cg_tol=1e-6)
  states = _run(solver, jnp.zeros(4), problem.data, 5)
  for state in states[1:]:
    assert bool(state.accepted) and int(state.num_solves) == 1
    assert float(state.gamma) == pytest.approx(0.3)
    assert float(state.step_norm) <= 0.3 * (1 + 1e-6)
    assert float(state.cg_residual) < 1e-5
    if linear_solver == "cg":
      assert 1 <= int(state.cg_iterations) <= 10 * 4
    else:
      assert int(state.cg_iterations) == 0
  capped = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["hessian"],
                                         linear_solver="cg", cg_maxiter=1)
  state = jax.jit(capped.update)(capped.init(jnp.zeros(4), *problem.data), *problem.data)
  assert int(state.cg_iterations) == 1 and float(state.cg_residual) > 1e-6


def _official_ngm(f, grad, x0, num_iters, b_inv, gamma_0=1.0, eps=1e-8, gamma_min=1e-9):
  """NumPy port of grad_norm_smooth_gradient_method (epfml/grad-norm-smooth, src/methods.py,
  the inner adaptive search: lambda = ||g||_* / (gamma + eps), T = x - B^{-1} g / lambda,
  accept if f - f(T) >= ||g(T)||_*^2 / (8 lambda) then gamma = max(2 gamma, gamma_min), else
  halve; 40 trials)."""
  dual = lambda g: float(np.sqrt(g @ b_inv @ g))
  x, gamma, xs = np.array(x0, np.float64), gamma_0, []
  for _ in range(num_iters):
    g = grad(x)
    for _ in range(40):
      lam = dual(g) / (gamma + eps)
      t = x - b_inv @ g / lam
      if f(x) - f(t) >= dual(grad(t)) ** 2 / (8 * lam):
        gamma = max(2 * gamma, gamma_min)
        break
      gamma *= 0.5
    x = t
    xs.append(x.copy())
  return xs


def test_zero_curvature_is_the_official_normalized_gradient_method(rng):
  """``curvature.zero()`` + a metric B gives the reference NGM's iterates (float64 port)."""
  features, labels = _logistic_data(rng, n=40, d=3)
  metric = np.diag([2.0, 1.0, 0.5])
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels))
  solver = so.gradient_normalized_newton(problem.value_fn, curvature.zero(),
                                         metric=jnp.asarray(metric, jnp.float32))
  states = _run(solver, jnp.zeros(3), problem.data, 6)
  signs = 2 * labels - 1
  f = lambda w: float(np.mean(np.logaddexp(0.0, -signs * (features @ w))))
  grad = lambda w: -(features.T @ (signs * _sigmoid(-signs * (features @ w)))) / len(labels)
  reference = _official_ngm(f, grad, np.zeros(3), 6, np.linalg.inv(metric))
  for state, x in zip(states[1:], reference):
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=2e-4, atol=1e-5)


def _official_super_newton(f, grad, hess, x0, num_iters, h_0=1.0, alpha=1.0, h_min=1e-5):
  """NumPy port of super_newton (epfml/grad-norm-smooth, src/methods.py; identity B):
  lambda = H ||g||^alpha, dx = -(Hess + lambda I)^{-1} g, accept if <g_new, -dx> >=
  ||g_new||^2 / (4 lambda) then H = max(H / 4, H_min), else H *= 4; 40 trials."""
  x, h, xs = np.array(x0, np.float64), h_0, []
  for _ in range(num_iters):
    g, hs = grad(x), hess(x)
    for _ in range(40):
      lam = h * np.linalg.norm(g) ** alpha
      dx = np.linalg.solve(hs + lam * np.eye(len(x)), -g)
      g_new = grad(x + dx)
      if g_new @ -dx >= g_new @ g_new / (4 * lam):
        h = max(h * 0.25, h_min)
        break
      h *= 4
    x = x + dx
    xs.append(x.copy())
  return xs


def test_super_universal_newton_matches_the_official_code(rng):
  features, labels = _logistic_data(rng, n=40, d=3)
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels))
  solver = so.super_universal_newton(problem.value_fn, problem.curvatures["hessian"])
  update = jax.jit(solver.update)
  state = solver.init(jnp.zeros(3), *problem.data)
  signs = 2 * labels - 1
  f = lambda w: float(np.mean(np.logaddexp(0.0, -signs * (features @ w))))
  grad = lambda w: -(features.T @ (signs * _sigmoid(-signs * (features @ w)))) / len(labels)

  def hess(w):
    p = _sigmoid(features @ w)
    return features.T @ (features * (p * (1 - p))[:, None]) / len(labels)

  for x in _official_super_newton(f, grad, hess, np.zeros(3), 5):
    state = update(state, *problem.data)
    assert bool(state.accepted)
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=2e-4, atol=1e-5)


def _official_gradient_methods(f, grad, x0, num_iters, b, accelerated, l_0=1.0, l_min=1e-5):
  """NumPy port of gradient_method / fast_gradient_method (epfml/grad-norm-smooth,
  src/methods.py lines 378-468 / 471-570): T = y - B^{-1} g(y) / L, accept if
  f(T) <= f(y) + <g(y), T - y> + L/2 ||T - y||_B^2 then L = max(L/2, L_min), else L *= 2
  (30 trials); FGM: a = (1 + sqrt(1 + 4 A L)) / (2 L), y = (a v + A x) / (a + A),
  v = T + A/a (T - x), A += a (lines 541-564)."""
  b_inv = np.linalg.inv(b)
  x, v, big_a, lip, xs = np.array(x0, np.float64), np.array(x0, np.float64), 0.0, l_0, []
  for _ in range(num_iters):
    for _ in range(30):
      if accelerated:
        a = (1 + (1 + 4 * big_a * lip) ** 0.5) / (2 * lip)
        y = (a * v + big_a * x) / (a + big_a)
      else:
        y = x
      g = grad(y)
      t = y - b_inv @ g / lip
      if f(t) <= f(y) + g @ (t - y) + 0.5 * lip * (t - y) @ b @ (t - y):
        lip = max(lip * 0.5, l_min)
        break
      lip *= 2
    if accelerated:
      v = t + big_a / a * (t - x)
      big_a += a
    x = t
    xs.append(x.copy())
  return xs


@pytest.mark.parametrize("accelerated", [False, True])
def test_gradient_methods_match_the_official_code(rng, accelerated):
  """GM / FGM iterates with a metric B equal the float64 port of the reference."""
  features, labels = _logistic_data(rng, n=40, d=3)
  metric = np.diag([2.0, 1.0, 0.5])
  problem = so.problems.logistic_regression(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(labels))
  build = so.fast_gradient_method if accelerated else so.gradient_method
  solver = build(problem.value_fn, metric=jnp.asarray(metric, jnp.float32), l_init=5.0)
  states = _run(solver, jnp.zeros(3), problem.data, 12)
  signs = 2 * labels - 1
  f = lambda w: float(np.mean(np.logaddexp(0.0, -signs * (features @ w))))
  grad = lambda w: -(features.T @ (signs * _sigmoid(-signs * (features @ w)))) / len(labels)
  reference = _official_gradient_methods(f, grad, np.zeros(3), 12, metric, accelerated, l_0=5.0)
  lips = {float(s.lipschitz) for s in states}
  assert len(lips) > 2  # the line search both halved and doubled L
  for state, x in zip(states[1:], reference):
    assert bool(state.accepted)
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=2e-4, atol=1e-5)
  values = [float(s.value) for s in states]
  if not accelerated:
    assert all(b <= a for a, b in zip(values, values[1:]))


def test_gradient_method_fixed_l_and_stall_keeps_point(rng):
  features, labels = _logistic_data(rng, n=20, d=2)
  problem = so.problems.logistic_regression(jnp.asarray(features), jnp.asarray(labels))
  fixed = so.gradient_method(problem.value_fn, l_init=3.0, line_search=False)
  state = jax.jit(fixed.update)(fixed.init(jnp.zeros(2), *problem.data), *problem.data)
  g = np.asarray(fixed.init(jnp.zeros(2), *problem.data).grad)
  np.testing.assert_allclose(np.asarray(state.params), -g / 3.0, rtol=1e-5)
  assert float(state.lipschitz) == 3.0
  # NaN objective away from 0: every trial fails, the point and L stay.
  nan_away = lambda w: jnp.where(jnp.all(w == 0), jnp.sum((w - 1.0) ** 2), jnp.nan)
  stuck = so.fast_gradient_method(nan_away, max_search=3)
  state = jax.jit(stuck.update)(stuck.init(jnp.zeros(2)))
  assert not bool(state.accepted) and int(state.num_trials) == 3
  assert np.all(np.asarray(state.params) == 0) and float(state.lipschitz) == 1.0


def _official_rank_one_wsm(matrix, offsets, p, x0, num_iters, b, gamma_0=1.0, eps=1e-8,
                           gamma_min=1e-9):
  """NumPy port of grad_norm_smooth_for_rank_one with invert_backend="wsm" (epfml/grad-norm-
  smooth, src/methods.py lines 678-808; Sherman-Morrison at lines 760-779) on
  NonlinearEquationsOracle (src/oracles.py): alpha = (p-2)||u||^{p-4}, g0 = J^T u,
  dx = P^{-1}(-g) - alpha / (1 + alpha g0^T P^{-1} g0) P^{-1} g0 (g0^T P^{-1}(-g)),
  P = lambda B; the adaptive search of Algorithm 1."""
  b_inv = np.linalg.inv(b)
  f = lambda x: np.linalg.norm(matrix @ x - offsets) ** p / p
  grad = lambda x: np.linalg.norm(matrix @ x - offsets) ** (p - 2) * matrix.T @ (
      matrix @ x - offsets)
  dual = lambda g: float(np.sqrt(b_inv.dot(g).dot(g)))
  x, gamma, xs = np.array(x0, np.float64), gamma_0, []
  for _ in range(num_iters):
    g, u = grad(x), matrix @ x - offsets
    alpha, g0 = (p - 2) * np.linalg.norm(u) ** (p - 4), matrix.T @ u
    for _ in range(40):
      lam = dual(g) / (gamma + eps)
      pinv_g, pinv_g0 = b_inv.dot(-g) / lam, b_inv.dot(g0) / lam
      dx = pinv_g - alpha / (1.0 + alpha * g0.dot(pinv_g0)) * pinv_g0 * g0.dot(pinv_g)
      if f(x) - f(x + dx) >= dual(grad(x + dx)) ** 2 / (8 * lam):
        gamma = max(2 * gamma, gamma_min)
        break
      gamma *= 0.5
    x = x + dx
    xs.append(x.copy())
  return xs


def test_rank_one_woodbury_matches_the_official_wsm_backend(rng):
  """linear_solver="woodbury" on the rank-one Fisher term with B = A^T A + 1e-3 I follows the
  reference's wsm iterates and equals the Cholesky solve of the same curvature."""
  matrix, offsets = rng.normal(size=(6, 10)), rng.normal(size=6)
  metric = matrix.T @ matrix + 1e-3 * np.eye(10)
  problem = so.problems.nonlinear_equations(jnp.asarray(matrix), jnp.asarray(offsets), p=4.0)
  with jax.enable_x64():
    x0 = jnp.asarray(rng.normal(size=10))
    kwargs = dict(metric=jnp.asarray(metric))
    woodbury = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["fisher_term"],
                                             linear_solver="woodbury", **kwargs)
    dense = so.gradient_normalized_newton(problem.value_fn, problem.curvatures["fisher_term"],
                                          **kwargs)
    data = tuple(jnp.asarray(d, jnp.float64) for d in (matrix, offsets))
    states = _run(woodbury, x0, data, 8)
    dense_states = _run(dense, x0, data, 8)
    with pytest.raises(TypeError, match="`curvature_fn`"):
      so.gradient_normalized_newton(problem.value_fn, problem.curvatures["hessian"],
                                    linear_solver="woodbury").update(states[0], *data)
  reference = _official_rank_one_wsm(matrix, offsets, 4.0, np.asarray(x0), 8, metric)
  for state, dense_state, x in zip(states[1:], dense_states[1:], reference):
    assert bool(state.accepted) and float(state.cg_residual) < 1e-8
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.asarray(state.params), np.asarray(dense_state.params),
                               rtol=1e-6, atol=1e-8)
  assert float(states[-1].value) < 1e-2 * float(states[0].value)


def _official_cubic_newton(f, grad, hess, x0, num_iters, b, h_0=1.0, h_min=1e-5, tol=1e-8):
  """NumPy port of cubic_newton / cubic_newton_step (epfml/grad-norm-smooth, src/methods.py
  lines 294-375 / 236-291): T(r) = -(A + M r B)^{-1} g, phi(r) = r - ||T||_B, double r from 1
  while phi < -tol, then Newton on phi (50 steps each); M = H/2; accept if
  f(x + T) <= f(x) + <g,T> + T^T A T / 2 + M ||T||_B^3 / 3 then H = max(H/2, H_min), else
  H *= 2 (40 trials)."""
  x, h, xs, hs = np.array(x0, np.float64), h_0, [], []

  def step(g, a, m):
    def at(r):
      t = np.linalg.solve(a + m * r * b, -g)
      return t, np.sqrt(t @ b @ t)
    r = 1.0
    for _ in range(50):
      t, tn = at(r)
      if r - tn >= -tol:
        break
      r *= 2
    for _ in range(50):
      t, tn = at(r)
      if abs(r - tn) <= tol:
        return t, g @ t + 0.5 * t @ a @ t + m * tn**3 / 3
      bt = b @ t
      r -= (r - tn) / (1 + m / tn * np.linalg.solve(a + m * r * b, bt) @ bt)
    raise AssertionError("subproblem did not converge")

  for _ in range(num_iters):
    g, a = grad(x), hess(x)
    for _ in range(40):
      t, model = step(g, a, 0.5 * h)
      if f(x + t) <= f(x) + model:
        h = max(0.5 * h, h_min)
        break
      h *= 2
    x = x + t
    xs.append(x.copy())
    hs.append(h)
  return xs, hs


def test_cubic_newton_matches_the_official_code(rng):
  """Cubic Newton with a metric B: iterates and H_k equal the float64 port of the reference."""
  features, labels = _logistic_data(rng, n=40, d=3)
  metric = np.diag([2.0, 1.0, 0.5])
  problem = so.problems.logistic_regression(jnp.asarray(features), jnp.asarray(labels))
  signs = 2 * labels - 1
  f = lambda w: float(np.mean(np.logaddexp(0.0, -signs * (features @ w))))
  grad = lambda w: -(features.T @ (signs * _sigmoid(-signs * (features @ w)))) / len(labels)

  def hess(w):
    p = _sigmoid(features @ w)
    return features.T @ (features * (p * (1 - p))[:, None]) / len(labels)

  with jax.enable_x64():
    solver = so.cubic_newton(problem.value_fn, problem.curvatures["hessian"],
                             metric=jnp.asarray(metric), h_init=1e-3)
    data = tuple(jnp.asarray(d, jnp.float64) for d in problem.data)
    x0 = np.array([4.0, -4.0, 4.0])  # far out: small H overshoots, the search doubles H
    states = _run(solver, jnp.asarray(x0), data, 5)
  xs, hs = _official_cubic_newton(f, grad, hess, x0, 5, metric, h_0=1e-3)
  assert max(int(s.num_solves) for s in states) > 1  # the search doubled H at least once
  for state, x, h in zip(states[1:], xs, hs):
    assert bool(state.accepted)
    # Both stop the root finding at |phi(r)| <= 1e-8: iterates agree to ~1e-7.
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-6, atol=1e-6)
    assert float(state.h) == pytest.approx(h)
  values = [float(s.value) for s in states]
  assert all(b <= a for a, b in zip(values, values[1:])) and float(states[-1].grad_norm) < 1e-8


def test_cubic_newton_rejects_failed_subproblems_and_keeps_the_point():
  """An indefinite A makes A + M r B non-PD for small r: the NaN subproblem is a rejected
  trial, never a NaN iterate (the reference would accept a zero step)."""
  value_fn = lambda x: jnp.sum(x**2) - 3.0 * x[0] ** 2 + 0.25 * x[0] ** 4
  solver = so.cubic_newton(value_fn, curvature.hessian(value_fn), max_search=2)
  state = jax.jit(solver.update)(solver.init(jnp.array([0.1, 1.0])))
  assert np.all(np.isfinite(np.asarray(state.params)))
  assert float(state.value) <= float(value_fn(jnp.array([0.1, 1.0])))


def test_chebyshev_matches_the_reference_oracle(rng):
  """problems.chebyshev value / gradient and its gauss_newton curvature equal the reference's
  ChebyshevOracle.func / .grad and approx_hess_fn_chebyshev (epfml/grad-norm-smooth,
  src/oracles.py ChebyshevOracle; src/approximations.py lines 52-73), ported to NumPy."""
  n, p = 6, 4.0
  x = rng.uniform(size=n)
  u = np.r_[0.5 * (1 - x[0]), x[1:] - (2 * x[:-1] ** 2 - 1)]
  jac = np.zeros((n, n))
  jac[0, 0] = -0.5
  jac[np.arange(1, n), np.arange(1, n)] = 1.0
  jac[np.arange(1, n), np.arange(n - 1)] = -4.0 * x[:-1]
  norm = np.linalg.norm(u)
  jtu = jac.T @ u
  approx = norm ** (p - 2) * jac.T @ jac + (p - 2) * norm ** (p - 4) * np.outer(jtu, jtu)
  problem = so.problems.chebyshev(p)
  with jax.enable_x64():
    xj = jnp.asarray(x)
    value, grad = jax.value_and_grad(problem.value_fn)(xj)
    gn = _dense(problem.curvatures["gauss_newton"], xj)
    rank_one = _dense(problem.curvatures["fisher_term"], xj)
    at_solution = float(problem.value_fn(jnp.ones(n)))
  np.testing.assert_allclose(float(value), norm**p / p, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(grad), norm ** (p - 2) * jtu, rtol=1e-10)
  np.testing.assert_allclose(gn, approx, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(rank_one, (p - 2) * norm ** (p - 4) * np.outer(jtu, jtu),
                             rtol=1e-10, atol=1e-12)
  assert at_solution == 0.0
