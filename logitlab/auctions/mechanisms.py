"""Position-auction mechanisms: MNL VCG and Myerson (exact), cascade VCG around a solver.

Position Auctions in AI-Generated Content (arXiv 2506.03309). Both mechanisms allocate with
the exact MNL optimizer (``mnl.mnl_allocation``) on per-click scores s_i:

* VCG: s_i = v_i. Clarke payments t_i = W_{-i} - (W - v_i pi_i), W_{-i} re-solved without i.
* Myerson: s_i = phi_i(v_i), the (ironed) virtual value of bidder i's value distribution.
  Payments t_i = v_i Pi_i(v) - int_{low}^{v_i} Pi_i(z, v_-i) dz.

Payments are expected payments per auction (per impression); the implied price per click is
t_i / pi_i. Utility u_i = v_i pi_i - t_i.

Exact Myerson payments. With the others fixed, the optimal objective as a function of i's own
score, V(s) = max_x [pi_i(x) s + sum_{k != i} s_k pi_k(x)], is convex piecewise linear and its
slope is i's click probability. ``allocation_curve`` recovers all its breakpoints exactly
with the classic tangent-intersection search (each oracle call is one MNL solve; at most
two calls per breakpoint). The allocation Pi_i is then a step function of the value with
jumps at z_k = threshold_value(s_k), and the payment integral is exact:
t_i = sum_{k : s_k <= phi_i(v_i)} (Pi_k^+ - Pi_k^-) z_k. With phi = identity this equals the
Clarke payment (envelope theorem), which the tests check as two independent computations.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from logitlab.auctions import cascade
from logitlab.auctions import distributions as dists
from logitlab.auctions import mnl

CascadeSolver = Callable[..., "cascade.CascadeAllocation"]


@dataclasses.dataclass(frozen=True)
class AuctionOutcome:
  """assignment [n] (-1 = not shown), click_probs [n], payments [n] (expected, per auction),
  and ``order`` [L]: the shown ads in display order (top first). Under MNL the order does not
  change any click probability; it is the ads sorted by position. Under the cascade model it is
  the order the solver chose, which the click probabilities depend on."""
  assignment: np.ndarray
  click_probs: np.ndarray
  payments: np.ndarray
  order: np.ndarray | None = None

  def __post_init__(self):
    if self.order is None:
      shown = np.flatnonzero(np.asarray(self.assignment) != mnl.NOT_SHOWN)
      order = shown[np.argsort(np.asarray(self.assignment)[shown], kind="stable")]
      object.__setattr__(self, "order", order)

  def utilities(self, values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64) * self.click_probs - self.payments

  def welfare(self, values: np.ndarray) -> float:
    return float(np.asarray(values, np.float64) @ self.click_probs)

  @property
  def revenue(self) -> float:
    return float(self.payments.sum())


@dataclasses.dataclass(frozen=True)
class Breakpoint:
  """Bidder i's click probability jumps from ``before`` to ``after`` at own score ``score``."""
  score: float
  before: float
  after: float


def allocation_curve(scores: np.ndarray, ctr: np.ndarray, max_ads: int, bidder: int,
                     max_score: float, *, rel_tol: float = 1e-10) -> list[Breakpoint]:
  """Breakpoints in (0, max_score] of bidder's click probability as its own score varies.

  Others' scores are fixed; at own score 0 the ad is never shown (the objective is >= 0 and
  only edges with s_i > lambda* enter), so the curve starts at click probability 0.
  """
  scores, ctr = mnl.check_instance(scores, ctr, max_ads)
  scores = scores.copy()
  if isinstance(bidder, bool) or not isinstance(bidder, (int, np.integer)) or not (
      0 <= bidder < len(scores)):
    raise ValueError(f"`bidder` must be an ad index in [0, {len(scores)}), got {bidder!r}.")
  if not np.isfinite(max_score):
    raise ValueError(f"`max_score` must be finite, got {max_score}.")

  def line_at(score):
    scores[bidder] = score
    allocation = mnl.mnl_allocation(scores, ctr, max_ads)
    slope = float(allocation.click_probs[bidder])
    return slope, allocation.value - slope * score

  if max_score <= 0:
    return []
  breakpoints = []
  stack = [(line_at(0.0), line_at(max_score))]
  while stack:
    (slope_lo, icpt_lo), (slope_hi, icpt_hi) = stack.pop()
    if slope_hi - slope_lo <= rel_tol:
      continue
    crossing = (icpt_lo - icpt_hi) / (slope_hi - slope_lo)
    slope_mid, icpt_mid = line_at(crossing)
    value_mid = slope_mid * crossing + icpt_mid
    on_envelope = slope_lo * crossing + icpt_lo
    if value_mid <= on_envelope + rel_tol * (1.0 + abs(on_envelope)):
      breakpoints.append(Breakpoint(crossing, slope_lo, slope_hi))
    else:
      stack.append(((slope_lo, icpt_lo), (slope_mid, icpt_mid)))
      stack.append(((slope_mid, icpt_mid), (slope_hi, icpt_hi)))
  return sorted(breakpoints, key=lambda b: b.score)


def threshold_payment(breakpoints: Sequence[Breakpoint],
                      distribution: dists.ValueDistribution) -> float:
  """t = sum_k jump_k * z_k with z_k the value at which phi reaches the breakpoint score."""
  if not hasattr(distribution, "threshold_value"):
    raise TypeError(f"`distribution` must be a ValueDistribution, got "
                    f"{type(distribution).__name__}.")
  if not breakpoints:
    return 0.0
  jumps = np.array([b.after - b.before for b in breakpoints])
  thresholds = distribution.threshold_value(np.array([b.score for b in breakpoints]))
  return float(jumps @ thresholds)


def vcg(values: np.ndarray, ctr: np.ndarray, max_ads: int) -> AuctionOutcome:
  """Welfare-maximizing MNL allocation with Clarke-pivot payments.

  Args:
    values: [n] values per click v_i >= 0.
    ctr: [n, m] standalone CTRs in [0, 1).
    max_ads: K, the most ads shown.
  """
  values, ctr = mnl.check_instance(values, ctr, max_ads, scores_name="values")
  _check_values(values)
  allocation = mnl.mnl_allocation(values, ctr, max_ads)
  payments = np.zeros_like(values)
  for bidder in np.flatnonzero(allocation.assignment != mnl.NOT_SHOWN):
    others = np.delete(np.arange(len(values)), bidder)
    welfare_without = mnl.mnl_allocation(values[others], ctr[others], max_ads).value
    others_welfare = allocation.value - values[bidder] * allocation.click_probs[bidder]
    payments[bidder] = welfare_without - others_welfare
  return AuctionOutcome(allocation.assignment, allocation.click_probs, payments)


def myerson(values: np.ndarray, ctr: np.ndarray, max_ads: int,
            distributions: dists.ValueDistribution | Sequence[dists.ValueDistribution]
            ) -> AuctionOutcome:
  """Revenue-optimal MNL auction: maximize virtual welfare, charge threshold payments.

  Args:
    values: [n] reported values per click, inside each distribution's support [low, high]
      (a value outside it has no virtual value: ValueError naming `values`).
    ctr: [n, m] standalone CTRs in [0, 1).
    max_ads: K, the most ads shown.
    distributions: one ``ValueDistribution`` for all bidders or one per bidder; their
      (ironed) virtual values are the allocation scores. Ads with phi_i(v_i) <= lambda*
      (in particular phi_i(v_i) <= 0) are not shown: the reserve is automatic.
  """
  values, ctr = mnl.check_instance(values, ctr, max_ads, scores_name="values")
  _check_values(values)
  if not isinstance(distributions, Sequence):
    distributions = [distributions] * len(values)
  if len(distributions) != len(values):
    raise ValueError(f"`distributions` must have one entry per bidder ({len(values)}), got "
                     f"{len(distributions)}.")
  for bidder, (d, v) in enumerate(zip(distributions, values)):
    if not hasattr(d, "virtual_value") or not hasattr(d, "threshold_value"):
      raise TypeError(f"`distributions` must hold ValueDistribution objects, got "
                      f"{type(d).__name__} for bidder {bidder}.")
    if not d.low <= v <= d.high:
      raise ValueError(f"`values` must lie in each bidder's distribution support; bidder "
                       f"{bidder} has value {v} outside [{d.low}, {d.high}].")
  scores = np.array([d.virtual_value(v) for d, v in zip(distributions, values)], np.float64)
  allocation = mnl.mnl_allocation(scores, ctr, max_ads)
  payments = np.zeros_like(values)
  for bidder in np.flatnonzero(allocation.assignment != mnl.NOT_SHOWN):
    curve = allocation_curve(scores, ctr, max_ads, bidder, scores[bidder])
    payments[bidder] = threshold_payment(curve, distributions[bidder])
  return AuctionOutcome(allocation.assignment, allocation.click_probs, payments)


def cascade_vcg(values, ctr, continuation=None, max_ads: int = 1, *,
                solver: CascadeSolver = cascade.cascade_allocation) -> AuctionOutcome:
  """Clarke payments on the cascade model around an allocation ``solver``.

  Truthful when ``solver`` is exact (e.g. ``brute_force.cascade_brute_force``, small n). With
  the approximation (default) it is "VCG-based": the allocation is not guaranteed to be
  optimal, so truthfulness can fail; experiments/auctions.py measures the gain from
  misreporting.

  Args:
    values: [n] values per click.
    ctr: [n, m] standalone CTRs.
    continuation: [n, m] continuation probabilities (default 1 - ctr).
    max_ads: K.
    solver: (scores, ctr, continuation, max_ads) -> object with ``pairs`` [L, 2] in display
      order and ``value``.

  Returns:
    ``AuctionOutcome`` whose ``assignment`` is the position of each ad and whose ``order`` is
    the display order of the shown ads (the solver's ``pairs`` order).
  """
  values, ctr, continuation = cascade.check_cascade_instance(values, ctr, continuation, max_ads,
                                                             scores_name="values")
  _check_values(values)
  allocation = solver(values, ctr, continuation, max_ads)
  click_probs = cascade.cascade_click_probs(ctr, continuation, allocation.pairs)
  assignment = np.full(len(values), mnl.NOT_SHOWN, dtype=np.int64)
  assignment[allocation.pairs[:, 0]] = allocation.pairs[:, 1]
  payments = np.zeros_like(values)
  for bidder in allocation.pairs[:, 0]:
    others = np.delete(np.arange(len(values)), bidder)
    welfare_without = solver(values[others], ctr[others], continuation[others], max_ads).value
    payments[bidder] = welfare_without - (allocation.value - values[bidder] * click_probs[bidder])
  return AuctionOutcome(assignment, click_probs, payments, order=allocation.pairs[:, 0].copy())


def _check_values(values: np.ndarray) -> None:
  if np.any(values < 0):
    raise ValueError(f"`values` (value per click) must be >= 0, got {values}.")
