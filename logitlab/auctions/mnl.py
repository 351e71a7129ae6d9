"""Order-insensitive (multinomial-logit) position auctions: exact allocation.

Position Auctions in AI-Generated Content (arXiv 2506.03309). n advertisers, m positions,
standalone click-through rate ``ctr[i, j] = p_ij`` of ad i shown in position j. An
allocation is a matching of ads to positions with at most K ads, stored as
``assignment: [n] int`` (the position of ad i, or -1 when ad i is not shown). Under the
MNL user model ad i is clicked with probability

    pi_i(x) = sum_j x_ij w_ij / (1 + sum_{i', j'} x_i'j' w_i'j'),    w_ij = p_ij / (1 - p_ij),

i.e. the outside option (no click) has weight 1. The choice w = p / (1 - p) (odds) makes an
ad shown alone get exactly its standalone CTR p_ij; the paper writes w_ij = exp(rho_ij) for a
logit rho_ij, which is the same thing with rho = logit(p).

The auctioneer maximizes ``sum_i s_i pi_i(x)`` for per-click scores s (values v for welfare,
virtual values phi(v) for revenue). This is a linear-fractional program N(x) / D(x) with
N = sum x_ij w_ij s_i and D = 1 + sum x_ij w_ij over K-cardinality matchings. Dinkelbach's
method solves it exactly: lambda* = max N/D is the root of the convex decreasing
F(lambda) = max_x sum_ij x_ij w_ij (s_i - lambda) - lambda, each evaluation being a
max-weight matching with at most K edges (``max_weight_matching``); the update
lambda <- N(x) / D(x) terminates after finitely many steps. A consequence used by the
mechanisms: at the optimum only edges with s_i > lambda* are used, so an ad enters only if its
score exceeds the objective value (the automatic reserve; ads with s_i <= 0 never enter).

Everything here is host-side NumPy in float64: the solvers are combinatorial
(``scipy.optimize.linear_sum_assignment``), and exactness against brute force matters more
than accelerator throughput (see docs/auctions.md).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize
from scipy import sparse

NOT_SHOWN = -1


def check_max_ads(max_ads) -> int:
  """``max_ads`` as an int; raises unless it is an integer >= 0 (1.7 is not silently 1)."""
  return check_count("max_ads", max_ads)


def check_instance(scores: np.ndarray, ctr: np.ndarray, max_ads: int, *,
                   scores_name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
  """Validates an auction instance; returns (scores [n], ctr [n, m]) as float64.

  ``scores_name`` is the caller's name for the scores (``values`` for the mechanisms), so the
  error names the argument the user passed.
  """
  scores = np.asarray(scores, dtype=np.float64)
  ctr = np.asarray(ctr, dtype=np.float64)
  if scores.ndim != 1:
    raise ValueError(f"`{scores_name}` must have shape [n], got shape {scores.shape}.")
  if ctr.ndim != 2 or ctr.shape[0] != scores.shape[0] or ctr.shape[1] == 0:
    raise ValueError(f"`ctr` must have shape [n, m] = [{scores.shape[0]}, m >= 1], got shape "
                     f"{ctr.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"`{scores_name}` must be finite, got {scores}.")
  if np.any(ctr < 0) or np.any(ctr >= 1) or not np.all(np.isfinite(ctr)):
    raise ValueError("`ctr` must lie in [0, 1) (a CTR of 1 has infinite MNL weight).")
  check_max_ads(max_ads)
  return scores, ctr


def check_count(name: str, value, minimum: int = 0) -> int:
  """``value`` as an int; raises naming ``name`` unless it is an integer >= ``minimum``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_assignment(assignment, num_ads: int, num_positions: int) -> np.ndarray:
  """``assignment [..., n]`` as int64; raises unless each row is a matching (positions in
  ``[0, m)`` or -1, no position used twice)."""
  assignment = np.asarray(assignment)
  if (not np.issubdtype(assignment.dtype, np.integer) or assignment.ndim < 1
      or assignment.shape[-1] != num_ads):
    raise ValueError(f"`assignment` must be an integer array [..., n = {num_ads}], got "
                     f"{assignment.dtype} {assignment.shape}.")
  if np.any((assignment < NOT_SHOWN) | (assignment >= num_positions)):
    raise ValueError(f"`assignment` entries must be positions in [0, {num_positions}) or -1, got "
                     f"{assignment}.")
  # Not-shown entries become distinct negatives, so a repeat in a sorted row is a reused position.
  distinct = np.where(assignment == NOT_SHOWN, -2 - np.arange(num_ads), assignment)
  ordered = np.sort(distinct, axis=-1)
  if np.any(ordered[..., 1:] == ordered[..., :-1]):
    raise ValueError("`assignment` must use each position at most once per allocation.")
  return assignment.astype(np.int64)


def mnl_weights(ctr: np.ndarray) -> np.ndarray:
  """MNL attraction weights w = p / (1 - p) from standalone CTRs p in [0, 1) (same shape)."""
  ctr = np.asarray(ctr, dtype=np.float64)
  if not np.all((ctr >= 0) & (ctr < 1)):
    raise ValueError("`ctr` must lie in [0, 1) (a CTR of 1 has infinite MNL weight).")
  return ctr / (1.0 - ctr)


def shown_weights(weights: np.ndarray, assignment: np.ndarray) -> np.ndarray:
  """w_{i, a_i} for shown ads and 0 otherwise; assignment [..., n] -> [..., n]."""
  assignment = check_assignment(assignment, *np.shape(weights))
  safe = np.where(assignment == NOT_SHOWN, 0, assignment)
  rows = np.arange(weights.shape[0])
  return np.where(assignment == NOT_SHOWN, 0.0, weights[rows, safe])


def mnl_click_probs(ctr: np.ndarray, assignment: np.ndarray) -> np.ndarray:
  """Click probabilities pi_i(x) [..., n] of an allocation (batched over leading axes)."""
  w = shown_weights(mnl_weights(ctr), assignment)
  return w / (1.0 + w.sum(axis=-1, keepdims=True))


def mnl_objective(scores: np.ndarray, ctr: np.ndarray, assignment: np.ndarray) -> np.ndarray:
  """sum_i s_i pi_i(x) for allocations [..., n] (welfare when s = v)."""
  if np.shape(scores) != np.shape(ctr)[:1]:
    raise ValueError(f"`scores` must have shape [n] = {np.shape(ctr)[:1]}, got "
                     f"{np.shape(scores)}.")
  return (mnl_click_probs(ctr, assignment) * np.asarray(scores, np.float64)).sum(axis=-1)


def max_weight_matching(edge_weights: np.ndarray, max_edges: int) -> np.ndarray:
  """Max-weight matching of rows to columns with at most ``max_edges`` strictly positive edges.

  Args:
    edge_weights: [n, m] weights; edges with weight <= 0 are never used.
    max_edges: cardinality bound K.

  Returns:
    assignment [n] int: the column of each row, or -1.

  Two reductions keep it exact and fast at n = 1000: (1) only the top-K' rows of each
  column (K' = min(K, n, m)) can be needed, since a matched row outside a column's top K'
  can be swapped for an unmatched row of that top K' without losing weight; (2) the bound
  K < min(n, m) is imposed with m - K dummy rows that must occupy real columns (weight 0
  there, forbidden on the per-row "skip" columns), leaving K columns to the real rows.
  """
  edge_weights = np.asarray(edge_weights, np.float64)
  if edge_weights.ndim != 2 or np.isnan(edge_weights).any():
    raise ValueError(f"`edge_weights` must be a [n, m] array without NaN, got shape "
                     f"{edge_weights.shape}.")
  n, m = edge_weights.shape
  k = min(check_count("max_edges", max_edges), n, m)
  assignment = np.full(n, NOT_SHOWN, dtype=np.int64)
  positive = np.where(edge_weights > 0, edge_weights, 0.0)
  if k == 0 or not np.any(positive > 0):
    return assignment
  if n > k:
    top_rows = np.argpartition(-positive, k - 1, axis=0)[:k]
    rows = np.unique(top_rows)
  else:
    rows = np.arange(n)
  sub = positive[rows]
  r = len(rows)
  num_dummy = m - k if k < min(r, m) else 0
  # Columns: m real positions, then one zero-weight "skip" column per real row.
  gain = np.zeros((r + num_dummy, m + r))
  gain[:r, :m] = sub
  gain[r:, m:] = -np.inf  # Dummy rows are forbidden on skip columns.
  row_idx, col_idx = optimize.linear_sum_assignment(gain, maximize=True)
  for row, col in zip(row_idx, col_idx):
    if row < r and col < m and sub[row, col] > 0:
      assignment[rows[row]] = col
  return assignment


@dataclasses.dataclass(frozen=True)
class MNLAllocation:
  """Exact MNL allocation: ``assignment`` [n], objective ``value`` = lambda*, click probs."""
  assignment: np.ndarray
  value: float
  click_probs: np.ndarray
  iterations: int


def mnl_allocation(scores: np.ndarray, ctr: np.ndarray, max_ads: int, *, tol: float = 1e-12,
                   max_iterations: int = 100) -> MNLAllocation:
  """Exact maximizer of sum_i s_i pi_i(x) over matchings with at most ``max_ads`` ads.

  Dinkelbach iteration (module docstring): start at lambda = 0 (the empty allocation),
  solve x = argmax sum x_ij w_ij (s_i - lambda) by ``max_weight_matching``, set
  lambda = N(x) / D(x); stop when the matching's excess F(lambda) <= tol * scale, with
  scale = 1 + |lambda| + sum_i w_i |s_i - lambda| the magnitude of the terms F sums, so the
  test is relative to the weights' scale (a CTR of 0.9999 has weight 9999, and an absolute
  tolerance then sits below the round-off of F). Dinkelbach's lambda increases strictly; an
  update that does not increase it is round-off, and the iteration stops there too.

  Args:
    scores: [n] per-click scores s_i (values or virtual values; any sign).
    ctr: [n, m] standalone CTRs in [0, 1).
    max_ads: K, the most ads shown.
  """
  scores, ctr = check_instance(scores, ctr, max_ads)
  weights = mnl_weights(ctr)
  lam = 0.0
  assignment = np.full(scores.shape[0], NOT_SHOWN, dtype=np.int64)
  for iteration in range(1, max_iterations + 1):
    candidate = max_weight_matching(weights * (scores - lam)[:, None], max_ads)
    w = shown_weights(weights, candidate)
    excess = float(w @ (scores - lam)) - lam
    if excess <= tol * (1.0 + abs(lam) + float(w @ np.abs(scores - lam))):
      break
    new_lam = float(w @ scores) / (1.0 + w.sum())
    if new_lam <= lam:  # No progress: F(lambda) > 0 only by round-off.
      break
    assignment, lam = candidate, new_lam
  else:
    raise RuntimeError(f"Dinkelbach did not converge in {max_iterations} iterations.")
  return MNLAllocation(assignment=assignment, value=float(lam),
                       click_probs=mnl_click_probs(ctr, assignment), iterations=iteration)


def mnl_allocation_lp(scores: np.ndarray, ctr: np.ndarray, max_ads: int) -> MNLAllocation:
  """The same optimum from one LP (Charnes-Cooper), a cross-check for ``mnl_allocation``.

  With t = 1 / D(x) and y = t x the program becomes
    max sum_ij s_i w_ij y_ij  s.t.  t + sum_ij w_ij y_ij = 1,  sum_j y_ij <= t,
    sum_i y_ij <= t,  sum_ij y_ij <= K t,  y >= 0,
  whose vertices map to vertices x = y / t of the (integral) K-matching polytope.
  """
  scores, ctr = check_instance(scores, ctr, max_ads)
  n, m = ctr.shape
  weights = mnl_weights(ctr)
  num_y = n * m
  cost = np.concatenate([-(scores[:, None] * weights).ravel(), [0.0]])
  a_eq = np.concatenate([weights.ravel(), [1.0]])[None]
  row_sums = sparse.kron(sparse.eye(n), np.ones((1, m)))
  col_sums = sparse.kron(np.ones((1, n)), sparse.eye(m))
  t_column = -np.concatenate([np.ones(n + m), [max_ads]])[:, None]
  a_ub = sparse.hstack([sparse.vstack([row_sums, col_sums, np.ones((1, num_y))]), t_column],
                       format="csr")
  result = optimize.linprog(cost, A_ub=a_ub, b_ub=np.zeros(n + m + 1), A_eq=a_eq, b_eq=[1.0],
                            bounds=(0, None), method="highs")
  if result.status != 0:
    raise RuntimeError(f"linprog failed: {result.message}")
  x = result.x[:num_y].reshape(n, m) / result.x[-1]
  assignment = np.where(x.max(axis=1) > 0.5, x.argmax(axis=1), NOT_SHOWN)
  return MNLAllocation(assignment=assignment, value=float(mnl_objective(scores, ctr, assignment)),
                       click_probs=mnl_click_probs(ctr, assignment), iterations=1)
