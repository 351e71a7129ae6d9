"""Tests for logitlab.auctions: exactness vs brute force, IC / IR, reserves, cascade order."""
import itertools

import numpy as np
import pytest

from logitlab import auctions
from logitlab.auctions import brute_force
from logitlab.auctions import cascade
from logitlab.auctions import distributions
from logitlab.auctions import instances
from logitlab.auctions import mechanisms

IRREGULAR = distributions.bimodal_uniform(0.75, (0.0, 0.5), (0.5, 1.0))


def random_instance(rng, max_n=6, max_m=3, max_k=3, ctr_high=0.9):
  n, m, k = rng.integers(1, max_n + 1), rng.integers(1, max_m + 1), rng.integers(1, max_k + 1)
  return rng.uniform(size=n), rng.uniform(0.0, ctr_high, size=(n, m)), int(k)


def reference_click_probs(ctr, assignment):
  """pi_i = w_i / (1 + sum w), w = p / (1 - p), written out per ad in float64."""
  weights = [ctr[i, a] / (1 - ctr[i, a]) if a >= 0 else 0.0 for i, a in enumerate(assignment)]
  return np.array(weights) / (1.0 + sum(weights))


# ----------------------------------------------------------------------------- MNL model


def test_single_ad_gets_its_standalone_ctr():
  ctr = np.array([[0.3, 0.05]])
  np.testing.assert_allclose(auctions.mnl_click_probs(ctr, np.array([0])), [0.3])
  np.testing.assert_allclose(auctions.mnl_click_probs(ctr, np.array([1])), [0.05])


def test_click_probs_match_reference_and_batch(rng):
  ctr = rng.uniform(0, 0.9, size=(5, 3))
  batch = brute_force.all_matchings(5, 3, 3)
  got = auctions.mnl_click_probs(ctr, batch)
  want = np.stack([reference_click_probs(ctr, a) for a in batch])
  np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("signed_scores", [False, True])
def test_mnl_allocation_is_exact(rng, signed_scores):
  for _ in range(60):
    scores, ctr, k = random_instance(rng)
    if signed_scores:  # Virtual values can be negative.
      scores = 2 * scores - 1
    _, best = brute_force.mnl_brute_force(scores, ctr, k)
    allocation = auctions.mnl_allocation(scores, ctr, k)
    assert allocation.value == pytest.approx(best, abs=1e-12)
    assert auctions.mnl_objective(scores, ctr, allocation.assignment) == pytest.approx(
        best, abs=1e-12)
    assert auctions.mnl_allocation_lp(scores, ctr, k).value == pytest.approx(best, abs=1e-9)
    shown = allocation.assignment[allocation.assignment >= 0]
    assert len(shown) <= k and len(set(shown)) == len(shown)


def test_max_weight_matching_with_cardinality_is_exact(rng):
  for _ in range(40):
    n, m, k = rng.integers(1, 7), rng.integers(1, 5), int(rng.integers(1, 4))
    weights = rng.normal(size=(n, m))
    got = auctions.max_weight_matching(weights, k)
    candidates = brute_force.all_matchings(n, m, k)
    totals = [sum(weights[i, a] for i, a in enumerate(c) if a >= 0) for c in candidates]
    assert sum(weights[i, a] for i, a in enumerate(got) if a >= 0) == pytest.approx(max(totals))
    assert np.all(weights[got >= 0, got[got >= 0]] > 0)  # Only positive edges are used.


def test_max_weight_matching_prunes_exactly_at_scale(rng):
  # n >> K triggers the top-K-per-column pruning; compare with the unpruned LP optimum.
  scores, ctr = rng.uniform(size=300), rng.uniform(0, 0.3, size=(300, 6))
  exact = auctions.mnl_allocation(scores, ctr, 4)
  np.testing.assert_array_equal(exact.assignment, auctions.mnl_allocation_lp(scores, ctr, 4)
                                .assignment)


def test_allocation_stable_for_large_scores_and_ctr_near_one(rng):
  scores, ctr = rng.uniform(size=6), rng.uniform(0, 0.9, size=(6, 3))
  ctr[0, 0] = 1 - 1e-9  # MNL weight ~1e9.
  base = auctions.mnl_allocation(scores, ctr, 2)
  scaled = auctions.mnl_allocation(1e4 * scores, ctr, 2)
  np.testing.assert_array_equal(base.assignment, scaled.assignment)
  assert scaled.value == pytest.approx(1e4 * base.value, rel=1e-12)
  assert np.isfinite(base.click_probs).all()


def test_an_ad_enters_only_above_the_objective(rng):
  for _ in range(30):
    scores, ctr, k = random_instance(rng)
    scores = 2 * scores - 1
    allocation = auctions.mnl_allocation(scores, ctr, k)
    shown = allocation.assignment >= 0
    assert np.all(scores[shown] > allocation.value)


def test_bad_inputs_name_the_argument():
  with pytest.raises(ValueError, match="`ctr`"):
    auctions.mnl_allocation(np.ones(3), np.full((3, 2), 1.0), 1)
  with pytest.raises(ValueError, match=r"`ctr` must have shape \[n, m\]"):
    auctions.mnl_allocation(np.ones(3), np.full((2, 2), 0.1), 1)
  with pytest.raises(ValueError, match="`values`"):
    auctions.vcg(-np.ones(2), np.full((2, 2), 0.1), 1)
  with pytest.raises(ValueError, match="`continuation`"):
    auctions.cascade_allocation(np.ones(2), np.full((2, 2), 0.1), np.full((2, 3), 0.5), 1)


# ------------------------------------------------------------------------- distributions


def test_tabulated_uniform_recovers_closed_form():
  tab = distributions.Tabulated.from_cdf(lambda v: v, 0.0, 1.0)
  v = np.linspace(0, 1, 101)
  np.testing.assert_allclose(tab.virtual_value(v), 2 * v - 1, atol=1e-3)


def test_ironing_is_monotone_and_flattens_the_dip():
  # Density 1.5 on [0, 0.5) then 0.5 on [0.5, 1]: phi drops from 1/3 to 0 at 0.5.
  v = np.linspace(0.0, 1.0, 400)
  raw_cdf = np.where(v < 0.5, 1.5 * v, 0.75 + 0.5 * (v - 0.5))
  raw_phi = v - (1 - raw_cdf) / np.where(v < 0.5, 1.5, 0.5)
  assert np.any(np.diff(raw_phi) < -0.1)  # The raw virtual value really is non-monotone.
  ironed = IRREGULAR.virtual_value(v)
  assert np.all(np.diff(ironed) >= -1e-12)
  flat = ironed[(v > 0.45) & (v < 0.55)]
  assert np.ptp(flat) < 1e-9  # One ironing interval spans the dip.
  # Ironing preserves the mean virtual value int phi dF = low (= 0 here).
  samples = IRREGULAR.sample(np.random.default_rng(0), 200_000)
  assert abs(IRREGULAR.virtual_value(samples).mean()) < 5e-3


def test_threshold_value_is_the_generalized_inverse():
  for dist in [distributions.Uniform(), distributions.Exponential(2.0),
               IRREGULAR]:
    scores = np.linspace(-0.5, 0.6, 23)
    z = dist.threshold_value(scores)
    assert np.all(dist.virtual_value(z) >= scores - 1e-9)
    below = np.maximum(z - 1e-6, dist.low)
    assert np.all((dist.virtual_value(below) < scores) | (z == dist.low))


# ---------------------------------------------------------------------------- mechanisms


def utility_of_report(mechanism, values, bidder, report):
  reported = values.copy()
  reported[bidder] = report
  outcome = mechanism(reported)
  return values[bidder] * outcome.click_probs[bidder] - outcome.payments[bidder]


MECHANISMS = {
    "vcg": lambda ctr, k: (lambda v: auctions.vcg(v, ctr, k)),
    "myerson_uniform": lambda ctr, k: (lambda v: auctions.myerson(v, ctr, k,
                                                                 auctions.Uniform())),
    "myerson_ironed": lambda ctr, k: (lambda v: auctions.myerson(
        v, ctr, k, IRREGULAR)),
}


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_incentive_compatible_and_individually_rational(rng, name):
  deviations = np.linspace(0.0, 1.0, 11)
  for _ in range(3):
    n, m, k = int(rng.integers(2, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    values, ctr = rng.uniform(0, 1.0, size=n), rng.uniform(0.05, 0.8, size=(n, m))
    mechanism = MECHANISMS[name](ctr, k)
    outcome = mechanism(values)
    assert np.all(outcome.payments >= -1e-12)
    assert np.all(outcome.utilities(values) >= -1e-12)
    for bidder in range(n):
      truthful = outcome.utilities(values)[bidder]
      for report in deviations:
        assert utility_of_report(mechanism, values, bidder, report) <= truthful + 1e-10


def test_clarke_payments_equal_envelope_payments(rng):
  for _ in range(15):
    values, ctr, k = random_instance(rng)
    outcome = auctions.vcg(values, ctr, k)
    for bidder in np.flatnonzero(outcome.assignment >= 0):
      curve = auctions.allocation_curve(values, ctr, k, bidder, values[bidder])
      envelope = mechanisms.threshold_payment(curve, distributions.Identity())
      assert outcome.payments[bidder] == pytest.approx(envelope, abs=1e-12)


def test_allocation_curve_matches_a_dense_scan(rng):
  values, ctr = rng.uniform(size=5), rng.uniform(0.05, 0.8, size=(5, 2))
  curve = auctions.allocation_curve(values, ctr, 2, 0, 3.0)
  assert curve and all(b.after > b.before for b in curve)
  for own in np.linspace(0.0, 3.0, 61):
    scores = values.copy()
    scores[0] = own
    scanned = auctions.mnl_allocation(scores, ctr, 2).click_probs[0]
    steps = [b for b in curve if b.score < own - 1e-9]
    expected = steps[-1].after if steps else 0.0
    if all(abs(b.score - own) > 1e-9 for b in curve):
      assert scanned == pytest.approx(expected, abs=1e-12)


def test_myerson_single_bidder_is_a_posted_price():
  ctr = np.array([[0.2]])
  for value, dist, reserve in [(0.7, auctions.Uniform(), 0.5), (0.4, auctions.Uniform(), 0.5),
                               (0.8, auctions.Exponential(2.0), 0.5)]:
    outcome = auctions.myerson(np.array([value]), ctr, 1, dist)
    shown = value > reserve
    assert (outcome.assignment[0] >= 0) == shown
    assert outcome.payments[0] == pytest.approx(0.2 * reserve if shown else 0.0, abs=1e-12)
  assert auctions.vcg(np.array([0.7]), ctr, 1).payments[0] == 0.0


def test_myerson_expected_payment_equals_expected_virtual_surplus(rng):
  # Myerson's lemma for one bidder with the others fixed, values U[0, 1]:
  # E_z[t_i(z)] = E_z[phi(z) Pi_i(z)], both sides by midpoint quadrature of real auctions.
  values, ctr = rng.uniform(size=4), rng.uniform(0.05, 0.8, size=(4, 2))
  grid = (np.arange(400) + 0.5) / 400
  payment, surplus = [], []
  for z in grid:
    values[0] = z
    outcome = auctions.myerson(values, ctr, 2, auctions.Uniform())
    payment.append(outcome.payments[0])
    surplus.append((2 * z - 1) * outcome.click_probs[0])
  assert np.max(payment) > 0.01  # The bidder does win on part of the grid.
  assert np.mean(payment) == pytest.approx(np.mean(surplus), abs=2e-3)


def test_automatic_reserve_negative_virtual_values_never_shown(rng):
  for _ in range(20):
    values, ctr, k = random_instance(rng)
    outcome = auctions.myerson(values, ctr, k, auctions.Uniform())
    assert np.all(outcome.assignment[values <= 0.5] == auctions.NOT_SHOWN)


# ------------------------------------------------------------------------------- cascade


def test_optimal_order_matches_all_permutations(rng):
  for _ in range(40):
    size = int(rng.integers(1, 6))
    gains, conts = rng.normal(size=size), rng.uniform(size=size)
    conts[rng.uniform(size=size) < 0.2] = 1.0  # c = 1: free to show first.
    best = max(brute_force.cascade_sequence_value(gains, np.ones((size, 1)),
                                                  conts[:, None], [(i, 0) for i in perm])
               for perm in itertools.permutations(range(size)))
    order = auctions.optimal_order(gains, conts)
    assert cascade.sequence_value(gains[order], conts[order]) == pytest.approx(best, abs=1e-12)


def test_best_subsequence_matches_enumeration(rng):
  for _ in range(30):
    size, k = int(rng.integers(1, 8)), int(rng.integers(1, 4))
    gains, conts = rng.normal(size=size), rng.uniform(size=size)
    best = max([0.0] + [cascade.sequence_value(gains[list(c)], conts[list(c)])
                        for r in range(1, k + 1) for c in itertools.combinations(range(size), r)])
    value, chosen = cascade.best_subsequence(gains, conts, k)
    assert value == pytest.approx(best, abs=1e-12)
    assert cascade.sequence_value(gains[chosen], conts[chosen]) == pytest.approx(value)
    assert len(chosen) <= k and np.all(np.diff(chosen) > 0)


def test_pruned_pairs_are_never_needed(rng):
  num_pruned = 0
  for _ in range(25):
    n, k = int(rng.integers(4, 8)), int(rng.integers(1, 3))
    scores, ctr = rng.uniform(size=n), rng.uniform(0, 0.9, size=(n, 2))
    conts = rng.uniform(size=(n, 2)) * (1 - ctr)
    useful = cascade.useful_pairs(scores[:, None] * ctr, conts, k)
    num_pruned += useful.size - useful.sum()
    full = brute_force.cascade_brute_force(scores, ctr, conts, k).value
    pruned = brute_force.cascade_brute_force(scores, np.where(useful, ctr, 0.0), conts, k).value
    assert pruned == pytest.approx(full, abs=1e-12)
  assert num_pruned > 25  # The check is not vacuous.


@pytest.mark.parametrize("default_continuation", [True, False])
def test_cascade_allocation_vs_brute_force(rng, default_continuation):
  ratios = []
  for _ in range(60):
    scores, ctr, k = random_instance(rng)
    conts = None if default_continuation else rng.uniform(size=ctr.shape) * (1 - ctr)
    full_conts = 1 - ctr if conts is None else conts
    best = brute_force.cascade_brute_force(scores, ctr, full_conts, k).value
    allocation = auctions.cascade_allocation(scores, ctr, conts, k)
    ads, positions = allocation.pairs[:, 0], allocation.pairs[:, 1]
    assert len(ads) <= k and len(set(ads)) == len(ads) and len(set(positions)) == len(positions)
    value = brute_force.cascade_sequence_value(scores, ctr, full_conts, allocation.pairs)
    assert value == pytest.approx(allocation.value, abs=1e-12)
    assert allocation.upper_bound >= best - 1e-12
    assert value <= best + 1e-12
    ratios.append(value / best)
  assert min(ratios) >= 0.95
  assert np.mean(ratios) >= 0.995


def test_cascade_click_probs_sum_to_the_sequence_value(rng):
  scores, ctr = rng.uniform(size=5), rng.uniform(0, 0.9, size=(5, 3))
  conts = rng.uniform(size=(5, 3))
  pairs = np.array([[3, 1], [0, 2], [4, 0]])
  clicks = auctions.cascade_click_probs(ctr, conts, pairs)
  np.testing.assert_allclose(clicks[[3, 0, 4]], [ctr[3, 1], conts[3, 1] * ctr[0, 2],
                                                 conts[3, 1] * conts[0, 2] * ctr[4, 0]])
  assert clicks[1] == clicks[2] == 0.0
  assert scores @ clicks == pytest.approx(
      brute_force.cascade_sequence_value(scores, ctr, conts, pairs))


def test_cascade_vcg_with_exact_solver_is_truthful(rng):
  for _ in range(2):
    values, ctr = rng.uniform(size=4), rng.uniform(0.05, 0.8, size=(4, 2))
    conts = rng.uniform(size=(4, 2)) * (1 - ctr)
    mechanism = lambda v: auctions.cascade_vcg(v, ctr, conts, 2,
                                               solver=brute_force.cascade_brute_force)
    outcome = mechanism(values)
    assert np.all(outcome.payments >= -1e-12)
    assert np.all(outcome.utilities(values) >= -1e-12)
    for bidder in range(4):
      truthful = outcome.utilities(values)[bidder]
      for report in np.linspace(0, 1, 6):
        assert utility_of_report(mechanism, values, bidder, report) <= truthful + 1e-10


def test_bf16_inputs_are_accepted_with_float64_math():
  jnp = pytest.importorskip("jax.numpy")
  values = jnp.asarray([0.5, 0.9, 0.2], jnp.bfloat16)
  ctr = jnp.asarray([[0.1, 0.2], [0.3, 0.1], [0.2, 0.2]], jnp.bfloat16)
  outcome = auctions.vcg(values, ctr, 2)
  reference = auctions.vcg(np.asarray(values, np.float64), np.asarray(ctr, np.float64), 2)
  assert outcome.payments.dtype == np.float64
  np.testing.assert_array_equal(outcome.payments, reference.payments)


# ----------------------------------------------------------------------------- baselines


def test_gsp_baseline_prices_keep_rank_and_never_exceed_bids(rng):
  values, ctr = rng.uniform(size=8), rng.uniform(0.05, 0.5, size=(8, 3))
  ranked = auctions.rank_by_value_ctr(values, ctr, 3)
  quality = ctr.mean(axis=1)
  assert len(ranked.order) == 3
  assert np.all(np.diff(values[ranked.order] * quality[ranked.order]) <= 0)
  assert np.all(ranked.price_per_click <= values + 1e-12)
  # The ad ranked k pays exactly the bid at which it would tie the ad ranked k + 1.
  rest = np.argsort(-values * quality)
  np.testing.assert_allclose(ranked.price_per_click[rest[:3]] * quality[rest[:3]],
                             (values * quality)[rest[1:4]])


@pytest.mark.slow
def test_paper_scale_mnl_matches_lp_and_cascade_certificate():
  rng = np.random.default_rng(0)
  scores, ctr = rng.uniform(size=1000), rng.uniform(0, 0.3, size=(1000, 20))
  for k in (5, 20):
    exact = auctions.mnl_allocation(scores, ctr, k)
    assert exact.value == pytest.approx(auctions.mnl_allocation_lp(scores, ctr, k).value,
                                        rel=1e-9)
    approx = auctions.cascade_allocation(scores, ctr, None, k)
    assert approx.value >= 0.95 * approx.upper_bound


def test_near_one_ctr_converges_and_matches_brute_force():
  """Issue 16: with one CTR in [0.9999, 0.999999) (MNL weight up to 1e6) the absolute Dinkelbach
  tolerance sat below the round-off of F(lambda): 45 of 200 VCG/Myerson calls raised "did not
  converge". With the tolerance relative to the weights' scale none does, and the allocation
  is still the brute-force optimum."""
  gen = np.random.default_rng(0)
  for _ in range(60):
    ctr = instances.random_ctr(gen, 6, 3)
    ctr[gen.integers(6), gen.integers(3)] = gen.uniform(0.9999, 0.999999)
    values = gen.uniform(0, 1, 6)
    outcome = mechanisms.vcg(values, ctr, 3)
    _, best = brute_force.mnl_brute_force(values, ctr, 3)
    got = auctions.mnl_objective(values, ctr, outcome.assignment)
    assert got >= best - 1e-9 * (1 + abs(best))
    mechanisms.myerson(values, ctr, 3, distributions.Uniform())  # must not raise


CTR3 = np.array([[0.3, 0.2], [0.4, 0.1], [0.2, 0.2]])
V3 = np.array([0.5, 0.8, 0.2])


@pytest.mark.parametrize("call, name", [
    (lambda: mechanisms.myerson(np.array([0.5, 1.5, 0.2]), CTR3, 1, distributions.Uniform()),
     "values"),                                                   # outside the support
    (lambda: mechanisms.myerson(V3, CTR3, 1, distributions.Exponential(rate=-1.0)), "rate"),
    (lambda: distributions.Uniform(0.5, 0.5), "low"),
    (lambda: distributions.bimodal_uniform(high_range=(0.7, 0.2)), "high_range"),
    (lambda: mechanisms.vcg(V3, CTR3, 1.7), "max_ads"),           # was silently int(1.7) = 1
    (lambda: mechanisms.vcg(V3, np.zeros((3, 0)), 1), "ctr"),     # was an IndexError
    (lambda: mechanisms.vcg(np.array([0.5, np.nan, 0.2]), CTR3, 1), "values"),  # was `scores`
    (lambda: auctions.rank_by_value_ctr(np.array([0.5, -0.1, 0.2]), CTR3, 1), "values"),
    (lambda: mechanisms.cascade_vcg(V3, CTR3, np.full_like(CTR3, np.nan), 1), "continuation"),
])
def test_strict_inputs_name_the_argument(call, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    call()


def test_cascade_outcome_keeps_the_display_order():
  """The cascade click probabilities depend on the order, so the outcome carries it: ``order``
  is the solver's display order, and the click probabilities follow from it."""
  gen = np.random.default_rng(3)
  for _ in range(10):
    ctr = instances.random_ctr(gen, 5, 3)
    cont = instances.random_continuation(gen, ctr)
    values = gen.uniform(0, 1, 5)
    outcome = mechanisms.cascade_vcg(values, ctr, cont, 3)
    allocation = cascade.cascade_allocation(values, ctr, cont, 3)
    np.testing.assert_array_equal(outcome.order, allocation.pairs[:, 0])
    pairs = np.stack([outcome.order, outcome.assignment[outcome.order]], axis=1)
    np.testing.assert_allclose(cascade.cascade_click_probs(ctr, cont, pairs), outcome.click_probs)
  mnl_outcome = mechanisms.vcg(V3, CTR3, 2)
  shown = mnl_outcome.order
  assert np.all(np.diff(mnl_outcome.assignment[shown]) > 0)  # MNL: sorted by position
