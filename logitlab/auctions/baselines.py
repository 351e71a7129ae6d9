"""Rank-by-v*p (GSP-like) baseline, the comparison point for the optimal mechanisms.

The standard sponsored-search heuristic: ad quality q_i = mean_j p_ij, positions ranked by
their mean CTR, ads ranked by bid times quality v_i q_i; the top K ads take the top K
positions in that order, regardless of the user model (it always shows K ads, whereas the
MNL optimum may show fewer because ads compete for one click). Generalized second price:
the ad ranked k pays per click the least bid that keeps its rank,
v_(k+1) q_(k+1) / q_(k) (0 for the last ad when no ad is left out), optionally at least a
reserve price.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from logitlab.auctions import mnl


@dataclasses.dataclass(frozen=True)
class RankedAllocation:
  """``order`` [L] ads in display rank, ``assignment`` [n], ``price_per_click`` [n]."""
  order: np.ndarray
  assignment: np.ndarray
  price_per_click: np.ndarray


def rank_by_value_ctr(values, ctr, max_ads: int, reserve: float = 0.0) -> RankedAllocation:
  """GSP-like allocation and per-click prices (module docstring).

  Args:
    values: [n] bids per click.
    ctr: [n, m] standalone CTRs.
    max_ads: K, the most ads shown.
    reserve: per-click reserve price; ads bidding below it are not shown.
  """
  values, ctr = mnl.check_instance(values, ctr, max_ads, scores_name="values")
  if np.any(values < 0):
    raise ValueError(f"`values` (bids per click) must be >= 0, got {values}.")
  if not (np.isfinite(reserve) and reserve >= 0):
    raise ValueError(f"`reserve` must be a finite price >= 0, got {reserve}.")
  n, m = ctr.shape
  quality = ctr.mean(axis=1)
  rank_score = values * quality
  eligible = np.flatnonzero((values >= reserve) & (rank_score > 0))
  ranked = eligible[np.argsort(-rank_score[eligible], kind="stable")]
  shown = ranked[:min(max_ads, m)]
  positions = np.argsort(-ctr.mean(axis=0), kind="stable")
  assignment = np.full(n, mnl.NOT_SHOWN, dtype=np.int64)
  assignment[shown] = positions[:len(shown)]
  next_score = np.append(rank_score[ranked[1:len(shown) + 1]],
                         np.zeros(max(0, len(shown) + 1 - len(ranked))))[:len(shown)]
  price = np.zeros(n)
  price[shown] = np.maximum(next_score / quality[shown], reserve)
  return RankedAllocation(order=shown, assignment=assignment, price_per_click=price)
