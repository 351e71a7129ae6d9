"""Order-sensitive (cascade) position auctions: optimal order and an approximate allocation.

Position Auctions in AI-Generated Content (arXiv 2506.03309). The auctioneer picks ad-position
pairs (a matching with at most K ads) and the order in which they appear. The user reads top
to bottom: the k-th displayed pair (i, j) is clicked with probability

    pi_k = p_ij * prod_{l < k} c_l,

where c_l is the probability of continuing past the l-th pair (default c = 1 - p: the user
stops at a click; any continuation matrix in [0, 1] is accepted, e.g. 1 - p - exit rate).

Optimal order of fixed pairs (exchange argument): swapping adjacent a, b changes the value by
g_a + c_a g_b - (g_b + c_b g_a) = g_a (1 - c_b) - g_b (1 - c_a) with g = s p, so sorting by
the index r = s p / (1 - c) in decreasing order is optimal (r = +-inf when c = 1). With
c = 1 - p the index is the score itself.

Joint selection + assignment + order. Given the index order, every ordered set is a
subsequence of the globally sorted list of all n m pairs, so a DP over that list picks the
best <= K subsequence in O(n m K). It ignores the matching constraint (an ad or position used
twice), which makes it a relaxation: ``relaxation_bound`` is an upper bound on the optimum.
``cascade_allocation`` is the approximation (no proven ratio; measured against brute force in
tests/experiments):
  1. two starts: the DP relaxation repaired greedily in index order (drop pairs that reuse an
     ad or position), and a max-weight K-matching on g_ij = s_i p_ij, pruned by the same DP;
  2. from each start, best-improvement local search over add / remove / replace-one-pair
     moves, each scored in closed form for all n m candidate pairs at once (insert x at its
     index rank: V = Pre + D (g_x + c_x Tail)), and exchange moves (two shown ads trade
     positions, which no single replacement can reach when every position is used);
  3. the better of the two local optima. Searching from only the better start missed the
     optimum on ~5 % of small random instances (n=6, m=3, K=3); from both, on ~1 %.
The result is feasible, so value / relaxation_bound is a certified ratio at any scale.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from logitlab.auctions import mnl


@dataclasses.dataclass(frozen=True)
class CascadeAllocation:
  """``pairs`` [L, 2] (ad, position) in display order, objective ``value``, ``click_probs`` [n],
  and ``upper_bound`` from the DP relaxation (value <= optimum <= upper_bound)."""
  pairs: np.ndarray
  value: float
  click_probs: np.ndarray
  upper_bound: float


def check_cascade_instance(scores, ctr, continuation, max_ads, *, scores_name: str = "scores"):
  """Validates and returns (scores [n], ctr [n, m], continuation [n, m]) as float64."""
  scores, ctr = mnl.check_instance(scores, ctr, max_ads, scores_name=scores_name)
  if continuation is None:
    continuation = 1.0 - ctr
  continuation = np.asarray(continuation, np.float64)
  if continuation.shape != ctr.shape:
    raise ValueError(f"`continuation` must have the shape of `ctr` {ctr.shape}, got "
                     f"{continuation.shape}.")
  if not np.all((continuation >= 0) & (continuation <= 1)):  # NaN fails too
    raise ValueError("`continuation` must lie in [0, 1].")
  return scores, ctr, continuation


def _check_items(gains, continuation) -> tuple[np.ndarray, np.ndarray]:
  gains, continuation = np.asarray(gains, np.float64), np.asarray(continuation, np.float64)
  if continuation.shape != gains.shape:
    raise ValueError(f"`continuation` must have the shape of `gains` {gains.shape}, got "
                     f"{continuation.shape}.")
  if not np.all((continuation >= 0) & (continuation <= 1)):
    raise ValueError("`continuation` must lie in [0, 1].")
  if np.isnan(gains).any():
    raise ValueError("`gains` must not be NaN.")
  return gains, continuation


def order_index(gains: np.ndarray, continuation: np.ndarray) -> np.ndarray:
  """r = g / (1 - c), the exchange-argument index (+-inf where c = 1; 0 if also g = 0)."""
  gains, continuation = _check_items(gains, continuation)
  stop = 1.0 - continuation
  with np.errstate(divide="ignore", invalid="ignore"):
    index = gains / stop
  free_index = np.where(gains > 0, np.inf, np.where(gains < 0, -np.inf, 0.0))
  return np.where(stop > 0, index, free_index)


def optimal_order(gains: np.ndarray, continuation: np.ndarray) -> np.ndarray:
  """Permutation [L] displaying fixed items (gain g = s p, continuation c) optimally."""
  return np.argsort(-order_index(gains, continuation), kind="stable")


def sequence_value(gains: np.ndarray, continuation: np.ndarray) -> float:
  """sum_k g_k prod_{l<k} c_l for items already in display order."""
  gains, continuation = _check_items(gains, continuation)
  reach = np.concatenate([[1.0], np.cumprod(continuation)])[:len(gains)]
  return float(reach @ gains)


def best_subsequence(gains: np.ndarray, continuation: np.ndarray,
                     max_items: int) -> tuple[float, np.ndarray]:
  """Best subsequence (order kept) of at most ``max_items`` items: (value, indices).

  V_k(t) = max(V_k(t+1), g_t + c_t V_{k-1}(t+1)) is a reverse running max per layer k, so the
  DP is K vectorized passes.
  """
  gains, continuation = _check_items(gains, continuation)
  max_items = mnl.check_count("max_items", max_items)
  num = len(gains)
  layers = [np.zeros(num + 1)]
  takes = []
  for _ in range(min(max_items, num)):
    take = gains + continuation * layers[-1][1:]
    takes.append(take)
    layers.append(np.concatenate([np.maximum.accumulate(np.maximum(take, 0.0)[::-1])[::-1],
                                  [0.0]]))
  chosen, start = [], 0
  for k in range(len(takes), 0, -1):
    if start >= num or layers[k][start] <= 0:
      break
    t = start + int(np.argmax(takes[k - 1][start:]))
    chosen.append(t)
    start = t + 1
  return float(layers[-1][0]), np.asarray(chosen, dtype=np.int64)


def useful_pairs(gains: np.ndarray, continuation: np.ndarray, max_ads: int) -> np.ndarray:
  """Mask [n, m] of pairs that suffice for an optimal cascade allocation (exact pruning).

  A pair with g <= 0 never helps (dropping it removes a non-positive term and lets more
  users read on). In each position j, pairs are visited in decreasing g; a pair that at least
  K earlier-visited ads dominate (g' >= g and c' >= c) is dropped: a solution using it shows at
  most K - 1 other ads, so one dominator is unused and can take its place and rank without
  lowering any term (repeat; the visit order makes this terminate at a kept pair). The K
  largest c seen so far are kept per position, so the pass is O(n K m).
  """
  gains, continuation = _check_items(gains, continuation)
  max_ads = mnl.check_max_ads(max_ads)
  num_ads, num_positions = gains.shape
  useful = gains > 0
  if max_ads >= num_ads:
    return useful
  by_gain = np.argsort(-gains, axis=0, kind="stable")
  cols = np.arange(num_positions)
  top_conts = np.full((max_ads, num_positions), -np.inf)  # K largest c visited, per position.
  for rows in by_gain:
    conts = continuation[rows, cols]
    useful[rows, cols] &= conts > top_conts.min(axis=0)
    weakest = top_conts.argmin(axis=0)
    top_conts[weakest, cols] = np.maximum(top_conts[weakest, cols], conts)
  return useful


def relaxation_bound(scores, ctr, continuation=None, max_ads: int = 1) -> float:
  """Upper bound on the cascade optimum: the DP over all pairs without the matching constraint."""
  scores, ctr, continuation = check_cascade_instance(scores, ctr, continuation, max_ads)
  gains, conts = (scores[:, None] * ctr).ravel(), continuation.ravel()
  order = optimal_order(gains, conts)
  return best_subsequence(gains[order], conts[order], max_ads)[0]


def cascade_allocation(scores, ctr, continuation=None, max_ads: int = 1, *,
                       max_moves: int | None = None) -> CascadeAllocation:
  """Approximately optimal ordered K-matching for the cascade model (module docstring).

  Args:
    scores: [n] per-click scores (values or virtual values).
    ctr: [n, m] standalone CTRs p_ij in [0, 1).
    continuation: [n, m] probability of reading on past pair (i, j); default 1 - ctr.
    max_ads: K, the most pairs shown.
    max_moves: cap on local-search moves (default 10 K).
  """
  scores, ctr, continuation = check_cascade_instance(scores, ctr, continuation, max_ads)
  if max_moves is not None:
    mnl.check_count("max_moves", max_moves)
  n, m = ctr.shape
  gains, conts = (scores[:, None] * ctr).ravel(), continuation.ravel()
  candidates = np.flatnonzero(useful_pairs(scores[:, None] * ctr, continuation, max_ads))
  # Work in "slots": positions of the candidate pairs in the global index order, so any
  # sorted set of slots is already in optimal display order. Pruned pairs have slot -1.
  order = candidates[optimal_order(gains[candidates], conts[candidates])]
  slot_of = np.full(n * m, -1, dtype=np.int64)
  slot_of[order] = np.arange(len(order))
  sorted_instance = _SortedPairs(gains[order], conts[order], order // m, order % m, slot_of, m)
  upper_bound, relaxed = best_subsequence(sorted_instance.gains, sorted_instance.conts, max_ads)

  # Start 1: the relaxed subsequence, keeping pairs whose ad and position are still free.
  repaired, ads, positions = [], set(), set()
  for slot in relaxed:
    ad, position = sorted_instance.ads[slot], sorted_instance.positions[slot]
    if ad not in ads and position not in positions:
      repaired.append(slot)
      ads.add(ad)
      positions.add(position)
  # Start 2: max-weight K-matching on first-slot gains, pruned by the DP in index order.
  assignment = mnl.max_weight_matching(
      np.where(slot_of >= 0, gains, 0.0).reshape(n, m), max_ads)
  shown = np.flatnonzero(assignment != mnl.NOT_SHOWN)
  matched = np.sort(slot_of[shown * m + assignment[shown]])
  matched = matched[best_subsequence(sorted_instance.gains[matched],
                                     sorted_instance.conts[matched], max_ads)[1]]
  local_optima = []
  for current in (np.asarray(repaired, np.int64), matched):
    for _ in range(10 * max_ads if max_moves is None else max_moves):
      improved = _best_move(current, sorted_instance, n, max_ads)
      if improved is None:
        break
      current = improved
    local_optima.append(current)
  current = max(local_optima, key=sorted_instance.value)
  pairs = np.stack([sorted_instance.ads[current], sorted_instance.positions[current]], axis=1)
  return CascadeAllocation(pairs=pairs.reshape(-1, 2), value=sorted_instance.value(current),
                           click_probs=cascade_click_probs(ctr, continuation, pairs),
                           upper_bound=upper_bound)


@dataclasses.dataclass(frozen=True)
class _SortedPairs:
  """Candidate pairs in index order (gains, conts, ads, positions [T]); slot_of [n m] (-1 =
  pruned) maps a flat pair index i m + j to its slot."""
  gains: np.ndarray
  conts: np.ndarray
  ads: np.ndarray
  positions: np.ndarray
  slot_of: np.ndarray
  num_positions: int

  def value(self, slots: np.ndarray) -> float:
    return sequence_value(self.gains[slots], self.conts[slots])


def cascade_click_probs(ctr, continuation, pairs) -> np.ndarray:
  """Click probability [n] of each ad when ``pairs`` [L, 2] (ad, position) show in order."""
  ctr, continuation = np.asarray(ctr, np.float64), np.asarray(continuation, np.float64)
  pairs = np.asarray(pairs).reshape(-1, 2)
  ads, positions = pairs[:, 0], pairs[:, 1]
  if (not np.issubdtype(pairs.dtype, np.integer) or np.any((ads < 0) | (ads >= ctr.shape[0]))
      or np.any((positions < 0) | (positions >= ctr.shape[1]))
      or len(set(ads.tolist())) < len(ads) or len(set(positions.tolist())) < len(positions)):
    raise ValueError(f"`pairs` must be distinct (ad, position) index pairs [L, 2] inside "
                     f"{ctr.shape}, got {pairs.tolist()}.")
  if continuation.shape != ctr.shape:
    raise ValueError(f"`continuation` must have the shape of `ctr` {ctr.shape}, got "
                     f"{continuation.shape}.")
  reach = np.concatenate([[1.0], np.cumprod(continuation[ads, positions])])[:len(ads)]
  click_probs = np.zeros(ctr.shape[0])
  click_probs[ads] = reach * ctr[ads, positions]
  return click_probs


def _best_move(current: np.ndarray, pairs: _SortedPairs, num_ads: int,
               max_ads: int) -> np.ndarray | None:
  """The best strictly improving add / remove / replace / exchange move, or None.

  ``current`` and the result are sorted slot arrays (= display order).
  """
  value = pairs.value(current)
  best_value, best = value + 1e-12 * (1.0 + abs(value)), None
  bases = [(current, len(current) < max_ads)]
  bases += [(np.delete(current, q), True) for q in range(len(current))]
  for base, may_insert in bases:
    base_value = pairs.value(base)
    if base_value > best_value:  # A removal.
      best_value, best = base_value, base
    if not may_insert:
      continue
    g, c = pairs.gains[base], pairs.conts[base]
    reach = np.concatenate([[1.0], np.cumprod(c)])  # D[r], r = 0..L
    prefix = np.concatenate([[0.0], np.cumsum(reach[:-1] * g)])  # Pre[r]
    tail = np.zeros(len(base) + 1)  # Tail[r] = g_r + c_r Tail[r + 1]
    for r in range(len(base) - 1, -1, -1):
      tail[r] = g[r] + c[r] * tail[r + 1]
    in_base = np.zeros(len(pairs.gains), dtype=np.int64)
    in_base[base] = 1
    rank = np.cumsum(in_base) - in_base  # Base slots before each slot: its insertion rank.
    inserted = prefix[rank] + reach[rank] * (pairs.gains + pairs.conts * tail[rank])
    ad_used = np.zeros(num_ads, dtype=bool)
    ad_used[pairs.ads[base]] = True
    position_used = np.zeros(pairs.num_positions, dtype=bool)
    position_used[pairs.positions[base]] = True
    free = ~ad_used[pairs.ads] & ~position_used[pairs.positions]
    inserted = np.where(free, inserted, -np.inf)
    candidate = int(np.argmax(inserted))
    if inserted[candidate] > best_value:
      best_value, best = inserted[candidate], np.sort(np.append(base, candidate))
  m = pairs.num_positions
  for first, second in itertools.combinations(range(len(current)), 2):
    ad_a, pos_a = pairs.ads[current[first]], pairs.positions[current[first]]
    ad_b, pos_b = pairs.ads[current[second]], pairs.positions[current[second]]
    new_slots = pairs.slot_of[[ad_a * m + pos_b, ad_b * m + pos_a]]
    if np.any(new_slots < 0):  # A pruned pair: its dominator is a better move.
      continue
    exchanged = current.copy()
    exchanged[first], exchanged[second] = new_slots
    exchanged = np.sort(exchanged)
    exchanged_value = pairs.value(exchanged)
    if exchanged_value > best_value:
      best_value, best = exchanged_value, exchanged
  return best
