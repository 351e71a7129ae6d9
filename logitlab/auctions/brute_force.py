"""Exhaustive references for small instances (n <= ~7, m <= ~4): the ground truth in tests.

They enumerate every feasible allocation and evaluate the user model directly from its
formula, sharing nothing with the solvers but the model definitions.
"""
from __future__ import annotations

import itertools

import numpy as np

from logitlab.auctions import cascade
from logitlab.auctions import mnl

NOT_SHOWN = mnl.NOT_SHOWN


def all_matchings(num_ads: int, num_positions: int, max_ads: int) -> np.ndarray:
  """Every assignment [num_matchings, n] of at most ``max_ads`` ads to distinct positions."""
  num_ads = mnl.check_count("num_ads", num_ads)
  num_positions = mnl.check_count("num_positions", num_positions)
  max_ads = mnl.check_max_ads(max_ads)
  options = []
  for size in range(min(max_ads, num_ads, num_positions) + 1):
    for ads in itertools.combinations(range(num_ads), size):
      for positions in itertools.permutations(range(num_positions), size):
        assignment = np.full(num_ads, NOT_SHOWN, dtype=np.int64)
        assignment[list(ads)] = positions
        options.append(assignment)
  return np.stack(options)


def mnl_brute_force(scores: np.ndarray, ctr: np.ndarray, max_ads: int) -> tuple[np.ndarray,
                                                                                float]:
  """(assignment [n], value) maximizing sum_i s_i pi_i(x) by enumeration."""
  scores, ctr = mnl.check_instance(scores, ctr, max_ads)
  candidates = all_matchings(*np.shape(ctr), max_ads)
  values = mnl.mnl_objective(scores, ctr, candidates)
  best = int(np.argmax(values))
  return candidates[best], float(values[best])


def cascade_sequence_value(scores, ctr, continuation, sequence) -> float:
  """sum_k s_{a_k} p_{a_k b_k} prod_{l<k} c_{a_l b_l} for an ordered list of (ad, position)."""
  num_ads, num_positions = np.shape(ctr)
  if not all(0 <= a < num_ads and 0 <= b < num_positions for a, b in sequence):
    raise ValueError(f"`sequence` must hold (ad, position) pairs inside {(num_ads, num_positions)}, "
                     f"got {list(sequence)}.")
  value, reach = 0.0, 1.0
  for ad, position in sequence:
    value += reach * scores[ad] * ctr[ad, position]
    reach *= continuation[ad, position]
  return value


def cascade_brute_force(scores, ctr, continuation, max_ads) -> cascade.CascadeAllocation:
  """Best ordered sequence of distinct ads in distinct positions, over all orders (exact)."""
  scores, ctr, continuation = cascade.check_cascade_instance(scores, ctr, continuation, max_ads)
  num_ads, num_positions = np.shape(ctr)
  best, best_value = [], 0.0
  for size in range(1, min(max_ads, num_ads, num_positions) + 1):
    for ads in itertools.permutations(range(num_ads), size):
      for positions in itertools.permutations(range(num_positions), size):
        sequence = list(zip(ads, positions))
        value = cascade_sequence_value(scores, ctr, continuation, sequence)
        if value > best_value:
          best, best_value = sequence, value
  pairs = np.asarray(best, np.int64).reshape(-1, 2)
  return cascade.CascadeAllocation(
      pairs=pairs, value=best_value, upper_bound=best_value,
      click_probs=cascade.cascade_click_probs(np.asarray(ctr), np.asarray(continuation), pairs))
