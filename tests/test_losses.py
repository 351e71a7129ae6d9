"""Distillation losses against independent float64 NumPy references, plus the properties
the papers state (KD = TCKD + (1 - p_t) NCKD, standardization invariance, NKD target
independence, bounded DHKD gradient) and the numerics contract (1e4, bf16, masks, jit)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import losses

N, C = 6, 7


# ----------------------------------------------------------------- float64 references
def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  shifted = z - z.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_kl(log_p, log_q):
  p = np.exp(log_p)
  return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), -1)


def np_without_target(z, y):
  """Row-wise deletion of the target column: [N, C] -> [N, C - 1]."""
  return np.stack([np.delete(row, t) for row, t in zip(np.asarray(z, np.float64), y)])


def ref_cross_entropy(z, y, smoothing=0.0):
  target = (1 - smoothing) * np.eye(z.shape[-1])[y] + smoothing / z.shape[-1]
  return -np.sum(target * np_log_softmax(z), -1)


def ref_kd(zs, zt, T):
  return T**2 * np_kl(np_log_softmax(zt / T), np_log_softmax(zs / T))


def ref_tckd(zs, zt, y, T):
  def binary(z):
    """[log p_t, log(1 - p_t)], the second as the log of the non-target mass (no 1 - 1)."""
    log_p = np_log_softmax(z / T)
    log_p_non = np_without_target(log_p, y)
    top = log_p_non.max(-1)
    log_mass_non = top + np.log(np.exp(log_p_non - top[:, None]).sum(-1))
    return np.stack([log_p[np.arange(len(y)), y], log_mass_non], -1)
  return T**2 * np_kl(binary(zt), binary(zs))


def ref_nckd(zs, zt, y, T):
  return T**2 * np_kl(np_log_softmax(np_without_target(zt, y) / T),
                      np_log_softmax(np_without_target(zs, y) / T))


def ref_nkd(zs, zt, y, T, gamma):
  rows = np.arange(len(y))
  q_t = np.exp(np_log_softmax(zt))[rows, y]
  target = -q_t * np_log_softmax(zs)[rows, y]
  q_hat = np.exp(np_log_softmax(np_without_target(zt, y) / T))
  non_target = -T**2 * np.sum(q_hat * np_log_softmax(np_without_target(zs, y) / T), -1)
  return target + gamma * non_target


def ref_zipf(zs, za, y, log_probs=False):
  out = np.zeros(zs.shape, np.float64)
  for n, t in enumerate(y):
    w = np.exp(np_log_softmax(za[n]))
    s = np_log_softmax(zs[n]) if log_probs else np.exp(np_log_softmax(zs[n]))
    score = w / (1 - w[t] + 1e-6) + s / (1 - s[t] + 1e-6)
    order = sorted(range(zs.shape[-1]), key=lambda i: (-score[i], i))
    for k, cls in enumerate(order):
      out[n, cls] = 1.0 / (k + 1)
    out[n, t] = 0.0
    out[n] /= out[n].sum()
  return out


def ref_uskd(zs, za, y, alpha, beta, mu):
  rows = np.arange(len(y))
  log_p = np_log_softmax(zs)
  p_t_sq = np.exp(log_p[rows, y])**2
  soft_target = p_t_sq + 1 - p_t_sq.mean()
  zipf = np_without_target(ref_zipf(zs, za, y), y)
  non_target = -np.sum(zipf * np_log_softmax(np_without_target(zs, y)), -1)
  return (ref_cross_entropy(zs, y).mean() + alpha * np.mean(-soft_target * log_p[rows, y])
          + beta * non_target.mean() + mu * ref_cross_entropy(za, y, 0.1).mean())


def ref_binary_kl(za, zt, T):
  """T^2 sum_k KL(Bern(1/2) || Bern(sigmoid((za - zt) / T))), written from the definition."""
  s = 1 / (1 + np.exp(-(np.asarray(za, np.float64) - zt) / T))
  return T**2 * np.sum(0.5 * np.log(0.5 / s) + 0.5 * np.log(0.5 / (1 - s)), -1)


def ref_standardize(z):
  z = np.asarray(z, np.float64)
  return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


@pytest.fixture
def batch(rng):
  zs = (3 * rng.normal(size=(N, C))).astype(np.float32)
  zt = (3 * rng.normal(size=(N, C))).astype(np.float32)
  y = rng.integers(0, C, size=N).astype(np.int32)
  return zs, zt, y


# Per-example (reduction="none") form of every [N, C]-in loss, with its reference.
PER_EXAMPLE = {
    "cross_entropy": (lambda zs, zt, y, **kw: losses.cross_entropy(zs, y, label_smoothing=0.1,
                                                                   **kw),
                      lambda zs, zt, y: ref_cross_entropy(zs, y, 0.1)),
    "kd": (lambda zs, zt, y, **kw: losses.kd(zs, zt, temperature=3.0, **kw),
           lambda zs, zt, y: ref_kd(zs, zt, 3.0)),
    "tckd": (lambda zs, zt, y, **kw: losses.tckd(zs, zt, y, temperature=3.0, **kw),
             lambda zs, zt, y: ref_tckd(zs, zt, y, 3.0)),
    "nckd": (lambda zs, zt, y, **kw: losses.nckd(zs, zt, y, temperature=3.0, **kw),
             lambda zs, zt, y: ref_nckd(zs, zt, y, 3.0)),
    "dkd": (lambda zs, zt, y, **kw: losses.dkd(zs, zt, y, alpha=0.5, beta=6.0, temperature=3.0,
                                               **kw),
            lambda zs, zt, y: 0.5 * ref_tckd(zs, zt, y, 3.0) + 6.0 * ref_nckd(zs, zt, y, 3.0)),
    "nkd": (lambda zs, zt, y, **kw: losses.nkd(zs, zt, y, temperature=3.0, gamma=3.5, **kw),
            lambda zs, zt, y: ref_nkd(zs, zt, y, 3.0, 3.5)),
    "binary_kl_norm": (lambda zs, zt, y, **kw: losses.binary_kl_norm(zs, zt, temperature=2.0,
                                                                     **kw),
                       lambda zs, zt, y: ref_binary_kl(zs, zt, 2.0)),
    "standardized_kd": (lambda zs, zt, y, **kw: losses.with_standardized_logits(losses.kd)(
        zs, zt, temperature=2.0, **kw),
                        lambda zs, zt, y: ref_kd(ref_standardize(zs), ref_standardize(zt), 2.0)),
}
# Losses returning (total, parts) means.
TOTALS = {
    "uskd": lambda zs, zt, y, **kw: losses.uskd(zs, zt, y, alpha=0.1, beta=0.1, mu=0.1, **kw)[0],
    "dhkd": lambda zs, zt, y, **kw: losses.dhkd(zs, zt, y, aux_logits=zs, gamma=1.0, alpha=2.0,
                                                **kw)[0],
}
ALL_MEANS = {**{k: f for k, (f, _) in PER_EXAMPLE.items()}, **TOTALS}
# Jitted once per test: eager dispatch of the many small ops is slower than one compile.
PER_EXAMPLE = {k: (jax.jit(f, static_argnames="reduction"), ref)
               for k, (f, ref) in PER_EXAMPLE.items()}
ALL_MEANS = {k: jax.jit(f) for k, f in ALL_MEANS.items()}


# ------------------------------------------------------------------- values vs reference
@pytest.mark.parametrize("name", sorted(PER_EXAMPLE))
def test_per_example_matches_float64_reference(name, batch):
  loss_fn, ref_fn = PER_EXAMPLE[name]
  got = loss_fn(*batch, reduction="none")
  assert got.shape == (N,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_fn(*batch), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(loss_fn(*batch), ref_fn(*batch).mean(), rtol=2e-5, atol=2e-5)


def test_uskd_matches_reference(batch):
  zs, za, y = batch
  total, parts = losses.uskd(zs, za, y, alpha=0.1, beta=0.2, mu=0.3)
  np.testing.assert_allclose(total, ref_uskd(zs, za, y, 0.1, 0.2, 0.3), rtol=2e-5)
  assert set(parts) == {"ce", "target", "non_target", "weak"}


@pytest.mark.parametrize("log_probs", [False, True])
def test_uskd_zipf_labels_match_reference(batch, log_probs):
  zs, za, y = batch
  got = losses.uskd_zipf_labels(zs, za, y,
                                student_rank_scores="log_probs" if log_probs else "probs")
  np.testing.assert_allclose(got, ref_zipf(zs, za, y, log_probs), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(got)[np.arange(N), y] == 0)


def test_uskd_rank_quirk_changes_labels(rng):
  # With log-softmax student scores the student term dominates, so the order differs from
  # the paper's probability form when the aux head and the student disagree.
  zs = np.array([[5.0, 0.0, 1.0, 2.0]], np.float32)
  za = np.array([[5.0, 4.0, 0.0, 0.0]], np.float32)
  y = np.array([0], np.int32)
  probs = losses.uskd_zipf_labels(zs, za, y, student_rank_scores="probs")
  quirk = losses.uskd_zipf_labels(zs, za, y, student_rank_scores="log_probs")
  assert np.argmax(probs[0]) == 1 and np.argmax(quirk[0]) == 3


def test_uskd_target_soft_labels_batch_mean_is_one(batch):
  zs, _, y = batch
  soft = losses.uskd_target_soft_labels(zs, y)
  p_t = np.exp(np_log_softmax(zs))[np.arange(N), y]
  np.testing.assert_allclose(soft, p_t**2 + 1 - np.mean(p_t**2), rtol=1e-6)
  np.testing.assert_allclose(np.mean(soft), 1.0, rtol=1e-6)


def test_standardize_matches_reference(batch):
  np.testing.assert_allclose(losses.standardize(batch[0]), ref_standardize(batch[0]), rtol=1e-5,
                             atol=1e-6)


def test_standardize_constant_rows_give_zeros_and_finite_gradients(batch):
  zs = batch[0].copy()
  zs[1] = 5.0  # a constant row: zero std
  out, grad = jax.value_and_grad(lambda z: jnp.sum(losses.standardize(z) * batch[1]))(zs)
  np.testing.assert_array_equal(np.asarray(losses.standardize(zs))[1], 0.0)
  assert np.all(np.isfinite(grad)) and np.isfinite(out)


# ----------------------------------------------------------------------- paper identities
def test_kd_equals_tckd_plus_weighted_nckd(batch):
  zs, zt, y = batch
  T = 4.0
  p_t = np.exp(np_log_softmax(zt / T))[np.arange(N), y]
  kd = losses.kd(zs, zt, temperature=T, reduction="none")
  decomposed = (losses.tckd(zs, zt, y, temperature=T, reduction="none")
                + (1 - p_t) * losses.nckd(zs, zt, y, temperature=T, reduction="none"))
  np.testing.assert_allclose(kd, decomposed, rtol=1e-5, atol=1e-6)


def test_standardized_losses_invariant_to_shift_and_scale(batch, rng):
  zs, zt, y = batch
  scale_s, scale_t = rng.uniform(0.1, 10, (2, N, 1)).astype(np.float32)
  shift_s, shift_t = rng.normal(0, 100, (2, N, 1)).astype(np.float32)
  for loss in (functools.partial(losses.kd, temperature=2.0),
               functools.partial(losses.dkd, labels=y, temperature=2.0)):
    standardized = losses.with_standardized_logits(loss)
    np.testing.assert_allclose(
        standardized(scale_s * zs + shift_s, scale_t * zt + shift_t, reduction="none"),
        standardized(zs, zt, reduction="none"), rtol=1e-4, atol=1e-5)
  # ...while the raw loss is not invariant (the property can fail).
  assert not np.allclose(losses.kd(scale_s * zs, zt), losses.kd(zs, zt), rtol=1e-3)


def test_nkd_non_target_ignores_target_logits(batch, rng):
  zs, zt, y = batch
  bump = np.eye(C, dtype=np.float32)[y] * rng.normal(0, 20, (N, 1)).astype(np.float32)
  base = losses.nkd_non_target(zs, zt, y, temperature=2.0, reduction="none")
  np.testing.assert_allclose(
      losses.nkd_non_target(zs + bump, zt - bump, y, temperature=2.0, reduction="none"), base,
      rtol=1e-6)
  grad = jax.jit(jax.grad(lambda z: losses.nkd_non_target(z, zt, y, temperature=2.0)))(zs)
  assert np.all(np.asarray(grad)[np.arange(N), y] == 0)
  assert np.all(np.abs(np.asarray(grad)).sum(-1) > 0)


def test_dhkd_total_is_weighted_sum_of_head_losses(batch, rng):
  head1, teacher, y = batch
  head2 = rng.normal(size=(N, C)).astype(np.float32)
  total, parts = losses.dhkd(head1, teacher, y, aux_logits=head2, gamma=0.5, alpha=2.0,
                             temperature=3.0)
  want_ce, want_bkl = ref_cross_entropy(head1, y).mean(), ref_binary_kl(head2, teacher, 3.0).mean()
  np.testing.assert_allclose([parts["ce"], parts["binary_kl"]], [want_ce, want_bkl], rtol=1e-5)
  np.testing.assert_allclose(total, 0.5 * want_ce + 2.0 * want_bkl, rtol=1e-5)
  # Each head gets only its own loss's gradient: CE never reaches head 2.
  grad_head2 = jax.grad(lambda h2: losses.dhkd(head1, teacher, y, aux_logits=h2,
                                               alpha=0.0)[0])(head2)
  assert np.all(np.asarray(grad_head2) == 0)


def test_binary_kl_norm_gradient_is_bounded():
  T = 2.0
  gaps = np.array([[-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4]], np.float32)
  grad = jax.jit(jax.grad(
      lambda z: losses.binary_kl_norm(z, jnp.zeros_like(z), temperature=T)))(gaps)
  np.testing.assert_allclose(grad, T / 2 * np.tanh(gaps / (2 * T)), rtol=1e-6, atol=1e-7)
  assert np.all(np.abs(grad) <= T / 2)
  # Log-cosh form stays finite and linear in the gap far out: T^2 (|x| - log 2), x = gap/2T.
  value = losses.binary_kl_norm(np.float32([[1e4]]), np.float32([[-1e4]]), temperature=T)
  np.testing.assert_allclose(value, T**2 * (2e4 / (2 * T) - np.log(2)), rtol=1e-6)


def test_project_conflicting_removes_opposing_component(rng):
  ce = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=2).astype(
      np.float32)}
  flat_ce = np.concatenate([ce["w"].ravel(), ce["b"]])
  conflicting = jax.tree.map(lambda g: -g + 0.1, ce)
  projected = losses.project_conflicting(conflicting, ce)
  flat_kd = np.concatenate([conflicting["w"].ravel(), conflicting["b"]])
  expected = flat_kd - flat_kd @ flat_ce / (flat_ce @ flat_ce) * flat_ce
  np.testing.assert_allclose(np.concatenate([projected["w"].ravel(), projected["b"]]), expected,
                             rtol=1e-5, atol=1e-6)
  aligned = jax.tree.map(lambda g: 2 * g, ce)
  chex.assert_trees_all_equal(losses.project_conflicting(aligned, ce), aligned)


def test_dkd_warmup():
  np.testing.assert_allclose([losses.dkd_warmup(e, 20) for e in (0, 5, 20, 100)],
                             [0.0, 0.25, 1.0, 1.0])
  assert losses.dkd_warmup(3, 0) == 1.0


# ---------------------------------------------------------------------- numerics contract
@pytest.mark.parametrize("name", sorted(ALL_MEANS))
def test_finite_values_and_gradients_at_1e4(name, batch):
  zs, zt, y = batch
  big_s, big_t = 1e4 * np.sign(zs), -1e4 * np.sign(zt)
  value, grad = jax.value_and_grad(ALL_MEANS[name])(jnp.asarray(big_s), big_t, y)
  assert np.isfinite(value) and np.all(np.isfinite(grad)), (value, grad)


@pytest.mark.parametrize("name", ["kd", "nckd", "tckd", "nkd"])
def test_large_logits_are_accurate(name, batch):
  zs, zt, y = batch
  loss_fn, ref_fn = PER_EXAMPLE[name]
  np.testing.assert_allclose(loss_fn(1e3 * zs, 1e3 * zt, y, reduction="none"),
                             ref_fn(1e3 * zs, 1e3 * zt, y), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("name", sorted(ALL_MEANS))
def test_bf16_inputs_give_float32_close_to_float32(name, batch):
  zs, zt, y = (jnp.asarray(batch[0], jnp.bfloat16), jnp.asarray(batch[1], jnp.bfloat16),
               batch[2])
  got = ALL_MEANS[name](zs, zt, y)
  assert got.dtype == jnp.float32
  want = ALL_MEANS[name](zs.astype(jnp.float32), zt.astype(jnp.float32), y)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_MEANS))
def test_masked_examples_do_not_change_the_loss(name, batch, rng):
  zs, zt, y = batch
  where = np.array([True, False, True, True, False, True])
  garbage_s, garbage_t = zs.copy(), zt.copy()
  garbage_s[~where] = rng.normal(0, 1e3, size=(2, C))
  garbage_t[~where] = rng.normal(0, 1e3, size=(2, C))
  loss = ALL_MEANS[name]
  masked = loss(garbage_s, garbage_t, y, where=where)
  np.testing.assert_allclose(masked, loss(zs[where], zt[where], y[where]), rtol=1e-5)
  assert loss(zs, zt, y, where=np.zeros(N, bool)) == 0.0


@pytest.mark.parametrize("name", sorted(PER_EXAMPLE))
def test_leading_dims_mask_weights_and_none_reduction(name, rng):
  zs = rng.normal(size=(2, 3, C)).astype(np.float32)
  zt = rng.normal(size=(2, 3, C)).astype(np.float32)
  y = rng.integers(0, C, (2, 3)).astype(np.int32)
  where = np.array([[True, True, False], [False, True, True]])
  weights = rng.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
  loss_fn, ref_fn = PER_EXAMPLE[name]
  ref = ref_fn(zs.reshape(6, C), zt.reshape(6, C), y.ravel()).reshape(2, 3)
  per_example = loss_fn(zs, zt, y, where=where, weights=weights, reduction="none")
  # float32 KL has absolute error ~1e-7 T^2 (differences of O(1) terms): atol 1e-5.
  np.testing.assert_allclose(per_example, np.where(where, weights * ref, 0.0), rtol=2e-5,
                             atol=1e-5)
  np.testing.assert_allclose(loss_fn(zs, zt, y, where=where, weights=weights),
                             np.sum(where * weights * ref) / where.sum(), rtol=2e-5)
  np.testing.assert_allclose(loss_fn(zs, zt, y, where=where[:, :1], reduction="sum"),
                             np.sum(where[:, :1] * ref), rtol=2e-5)


# The PER_EXAMPLE losses are checked against the references under jit (above) and eagerly
# in the identity/property tests; here the composite losses.
@pytest.mark.parametrize("name", sorted(TOTALS))
def test_jit_matches_eager(name, batch):
  jitted = ALL_MEANS[name]
  np.testing.assert_allclose(jitted(*batch), jitted.__wrapped__(*batch), rtol=1e-6)


def test_vmap_over_a_leading_axis(batch):
  zs, zt, y = batch
  per_row = jax.jit(jax.vmap(lambda a, b, t: losses.dkd(a[None], b[None], t[None])))(zs, zt, y)
  np.testing.assert_allclose(per_row, losses.dkd(zs, zt, y, reduction="none"), rtol=1e-5)


# ---------------------------------------------------------------------------- errors
def test_errors_name_the_argument(batch):
  zs, zt, y = batch
  with pytest.raises(ValueError, match="teacher_logits"):
    losses.kd(zs, zt[:, :-1])
  with pytest.raises(ValueError, match="labels"):
    losses.dkd(zs, zt, y[:-1])
  with pytest.raises(ValueError, match="labels"):  # float labels are soft labels [N, C]
    losses.nkd(zs, zt, y.astype(np.float32))
  with pytest.raises(ValueError, match="aux_logits"):
    losses.uskd(zs, zt[:3], y)
  with pytest.raises(ValueError, match="aux_logits"):
    losses.dhkd(zs, zt, y, aux_logits=zs[:, :3])
  with pytest.raises(ValueError, match="where"):
    losses.kd(zs, zt, where=np.ones(N + 1, bool))
  with pytest.raises(ValueError, match="reduction"):
    losses.kd(zs, zt, reduction="avg")
  with pytest.raises(TypeError, match="student_logits"):
    losses.kd(y, zt)
  with pytest.raises(ValueError, match="student_rank_scores"):
    losses.uskd_zipf_labels(zs, zt, y, student_rank_scores="logits")
  with pytest.raises(ValueError, match="temperature"):
    losses.dkd(zs, zt, y, temperature=0.0)
  with pytest.raises(ValueError, match="ddof"):
    losses.standardize(zs[:, :1])


# ------------------------------------------------------ one out-of-range label policy
def _strong(zs, zt):
  return dict(strong_student_logits=0.5 * zs, strong_teacher_logits=zt[::-1])


# name -> (labels, mask) -> per-example values (or a scalar for batch-coupled losses)
_LABELLED = {
    "cross_entropy": lambda zs, zt, y, m: losses.cross_entropy(zs, y, where=m, reduction="none"),
    "kd": lambda zs, zt, y, m: losses.kd(zs, zt, y, where=m, reduction="none"),
    "tckd": lambda zs, zt, y, m: losses.tckd(zs, zt, y, where=m, reduction="none"),
    "nckd": lambda zs, zt, y, m: losses.nckd(zs, zt, y, where=m, reduction="none"),
    "dkd": lambda zs, zt, y, m: losses.dkd(zs, zt, y, where=m, reduction="none"),
    "nkd": lambda zs, zt, y, m: losses.nkd(zs, zt, y, where=m, reduction="none"),
    "nkd_target": lambda zs, zt, y, m: losses.nkd_target(zs, zt, y, where=m, reduction="none"),
    "nkd_non_target": lambda zs, zt, y, m: losses.nkd_non_target(zs, zt, y, where=m,
                                                                 reduction="none"),
    "uskd": lambda zs, zt, y, m: losses.uskd(zs, zt, y, where=m, reduction="none")[0],
    "uskd_target_soft_labels": lambda zs, zt, y, m: losses.uskd_target_soft_labels(
        zs, y, where=m),
    "dhkd": lambda zs, zt, y, m: losses.dhkd(zs, zt, y, aux_logits=zt[::-1], where=m,
                                             reduction="none")[0],
    "binary_kl_norm": lambda zs, zt, y, m: losses.binary_kl_norm(zs, zt, y, where=m,
                                                                 reduction="none"),
    "ctkd": lambda zs, zt, y, m: losses.ctkd(zs, zt, y, temperature_param=jnp.float32(0.2),
                                             grad_scale=-1.0, where=m, reduction="none"),
    "mlkd": lambda zs, zt, y, m: losses.mlkd(zs, zt, y, where=m, **_strong(zs, zt))[0],
}


@pytest.mark.parametrize("name", sorted(_LABELLED))
def test_out_of_range_labels_follow_one_policy(name, batch):
  """Eager: ValueError naming `labels` and the range. Under jit: NaN for that example
  (the whole value for batch-coupled MLKD), finite elsewhere; never a wrapped class or a
  finite wrong value. A masked-out example's label (padding) is never checked."""
  zs, zt, y = batch
  fn = _LABELLED[name]
  y_bad = y.copy()
  for bad in (-1, C):
    y_bad[2] = bad
    with pytest.raises(ValueError, match=rf"`labels` must be class indices in \[0, {C}\)"):
      fn(zs, zt, y_bad, None)
  y_bad[2], y_bad[4] = -1, C
  out = np.asarray(jax.jit(lambda labels: fn(zs, zt, labels, None))(y_bad))
  if name == "mlkd":
    assert np.isnan(out)
  else:
    bad_rows = np.isin(np.arange(N), [2, 4])
    assert np.all(np.isnan(out[bad_rows])) and np.all(np.isfinite(out[~bad_rows]))
  mask = ~np.isin(np.arange(N), [2, 4])
  masked, want = np.asarray(fn(zs, zt, y_bad, mask)), np.asarray(fn(zs, zt, y, mask))
  if name == "uskd_target_soft_labels":  # soft labels, not a loss: masked rows undefined
    masked, want = masked[mask], want[mask]
  np.testing.assert_allclose(masked, want, rtol=1e-6, atol=1e-7)


def test_soft_labels_are_checked_by_the_same_policy(batch):
  zs, zt, _ = batch
  soft = np.full((N, C), 1.0 / C, np.float32)
  soft[1, 0] += 0.5  # row sums to 1.5
  with pytest.raises(ValueError, match="`labels` must be probability vectors"):
    losses.cross_entropy(zs, soft)
  out = jax.jit(lambda s: losses.cross_entropy(zs, s, reduction="none"))(soft)
  assert np.isnan(out[1]) and np.all(np.isfinite(np.delete(np.asarray(out), 1)))
  with pytest.raises(ValueError, match="same shape"):
    losses.nkd(zs, zt, soft[:, :-1])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_soft_labels_match_reference(smoothing, batch, rng):
  zs, _, y = batch
  lam = rng.uniform(size=(N, 1))
  soft = (lam * np.eye(C)[y] + (1 - lam) * np.eye(C)[(y + 3) % C]).astype(np.float32)
  target = (1 - smoothing) * soft.astype(np.float64) + smoothing / C
  want = -np.sum(target * np_log_softmax(zs), -1)
  got = losses.cross_entropy(zs, soft, label_smoothing=smoothing, reduction="none")
  np.testing.assert_allclose(got, want, rtol=2e-5)
  # One-hot soft labels equal integer labels.
  np.testing.assert_allclose(losses.cross_entropy(zs, np.eye(C, dtype=np.float32)[y]),
                             losses.cross_entropy(zs, y), rtol=1e-6)


def test_kd_accepts_labels_and_standardized_wrapper_defaults_to_ls_temperature(batch):
  zs, zt, y = batch
  np.testing.assert_allclose(losses.kd(zs, zt, y), losses.kd(zs, zt), rtol=1e-7)
  wrapped = losses.with_standardized_logits(losses.kd)
  want = ref_kd(ref_standardize(zs), ref_standardize(zt), 2.0).mean()
  np.testing.assert_allclose(wrapped(zs, zt, y), want, rtol=1e-5)
  np.testing.assert_allclose(wrapped(zs, zt, temperature=4.0),
                             ref_kd(ref_standardize(zs), ref_standardize(zt), 4.0).mean(),
                             rtol=1e-5)


def test_binary_kl_norm_official_clamp_option():
  """``sigmoid_eps=1e-8`` is the official float32 computation (BinaryKLNorm.py:15-19):
  equal to the exact loss for moderate gaps, zero gradient below gap / T = -18.4, and an
  infinite loss above about +17.3 T (1 - 1e-8 rounds to 1 in float32); the default is exact
  and finite everywhere."""
  T = 2.0
  gaps = np.array([[-3.0, -0.5, 0.0, 0.7, 4.0]], np.float32)
  zeros = np.zeros_like(gaps)
  np.testing.assert_allclose(losses.binary_kl_norm(gaps, zeros, temperature=T, sigmoid_eps=1e-8),
                             ref_binary_kl(gaps, zeros, T).mean(), rtol=1e-5)
  far_below = np.array([[-40.0 * T]], np.float32)
  grad = lambda eps: jax.grad(lambda z: losses.binary_kl_norm(
      z, jnp.zeros_like(z), temperature=T, sigmoid_eps=eps))(far_below)
  assert float(grad(1e-8)[0, 0]) == 0.0 and float(grad(None)[0, 0]) < -0.9 * T / 2
  far_above = np.array([[20.0 * T]], np.float32)
  assert np.isinf(losses.binary_kl_norm(far_above, np.zeros_like(far_above), temperature=T,
                                        sigmoid_eps=1e-8))
  assert np.isfinite(losses.binary_kl_norm(far_above, np.zeros_like(far_above), temperature=T))


def test_mlkd_masked_rows_leave_every_term(batch):
  """Masked rows leave the KD means, both medians and the correlation matrices: the loss
  equals the loss of the valid rows alone."""
  zs, zt, y = batch
  mask = np.arange(N) % 3 != 1
  full, _ = losses.mlkd(zs, zt, y, where=mask, **_strong(zs, zt))
  kept, _ = losses.mlkd(zs[mask], zt[mask], y[mask],
                        strong_student_logits=(0.5 * zs)[mask],
                        strong_teacher_logits=zt[::-1][mask])
  np.testing.assert_allclose(full, kept, rtol=1e-5)
  with pytest.raises(ValueError, match="weights"):
    losses.mlkd(zs, zt, y, weights=np.ones(N), **_strong(zs, zt))
