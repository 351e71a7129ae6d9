"""Value distributions and their (ironed) Myerson virtual values.

For a value distribution F with density f, phi(v) = v - (1 - F(v)) / f(v). Myerson's
revenue-optimal mechanism maximizes expected virtual welfare; when phi is not monotone
(irregular F) it is replaced by the ironed virtual value: with q = F(v) and
H(q) = int_0^q phi(F^{-1}(r)) dr, ironed phi(v) = G'(F(v)) where G is the lower convex hull of
H. Integrating by parts gives the closed form H(F(v)) = low - v (1 - F(v)), so no quadrature
is needed.

Every distribution exposes ``virtual_value(v)`` (nondecreasing, ironed) and its generalized
inverse ``threshold_value(s) = inf{v in support : phi(v) >= s}``, which turns a threshold on
the score into the threshold on the value that Myerson payments charge.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import numpy as np


class ValueDistribution(Protocol):
  low: float
  high: float

  def virtual_value(self, values: np.ndarray) -> np.ndarray:
    ...

  def threshold_value(self, scores: np.ndarray) -> np.ndarray:
    ...

  def sample(self, rng: np.random.Generator, size) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class Uniform:
  """U[low, high]: phi(v) = 2 v - high (regular)."""
  low: float = 0.0
  high: float = 1.0

  def __post_init__(self):
    if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low < self.high):
      raise ValueError(f"Uniform needs finite `low` < `high`, got [{self.low}, {self.high}].")

  def virtual_value(self, values):
    return 2.0 * np.asarray(values, np.float64) - self.high

  def threshold_value(self, scores):
    return np.clip((np.asarray(scores, np.float64) + self.high) / 2.0, self.low, self.high)

  def sample(self, rng, size):
    return rng.uniform(self.low, self.high, size)


@dataclasses.dataclass(frozen=True)
class Exponential:
  """Exp(rate) on [0, inf): phi(v) = v - 1 / rate (regular, monopoly reserve 1 / rate)."""
  rate: float = 1.0
  low: float = 0.0
  high: float = np.inf

  def __post_init__(self):
    if not (np.isfinite(self.rate) and self.rate > 0):
      raise ValueError(f"`rate` must be a finite number > 0, got {self.rate}.")
    if (self.low, self.high) != (0.0, np.inf):
      raise ValueError(f"Exponential is supported on [0, inf); got `low`={self.low}, "
                       f"`high`={self.high}.")

  def virtual_value(self, values):
    return np.asarray(values, np.float64) - 1.0 / self.rate

  def threshold_value(self, scores):
    return np.maximum(np.asarray(scores, np.float64) + 1.0 / self.rate, 0.0)

  def sample(self, rng, size):
    return rng.exponential(1.0 / self.rate, size)


@dataclasses.dataclass(frozen=True)
class Identity:
  """Scores equal values (phi = v): plugging it into Myerson payments gives VCG payments."""
  low: float = 0.0
  high: float = np.inf

  def __post_init__(self):
    if not (np.isfinite(self.low) and self.low <= self.high):
      raise ValueError(f"Identity needs a finite `low` <= `high`, got [{self.low}, {self.high}].")

  def virtual_value(self, values):
    return np.asarray(values, np.float64)

  def threshold_value(self, scores):
    return np.maximum(np.asarray(scores, np.float64), self.low)

  def sample(self, rng, size):
    raise NotImplementedError("Identity is a scoring rule, not a distribution.")


@dataclasses.dataclass(frozen=True)
class Tabulated:
  """A distribution on [low, high] given by its CDF on a grid, ironed numerically.

  ``ironed`` [num] holds the ironed virtual value at ``grid``; between grid points it is
  linearly interpolated, and ``threshold_value`` is the exact generalized inverse of that
  interpolant, so Myerson payments stay exactly incentive compatible for this phi.
  """
  grid: np.ndarray
  cdf: np.ndarray
  ironed: np.ndarray

  def __post_init__(self):
    grid, cdf, ironed = (np.asarray(a, np.float64) for a in (self.grid, self.cdf, self.ironed))
    if grid.ndim != 1 or len(grid) < 2 or not np.all(np.diff(grid) > 0) or not np.all(
        np.isfinite(grid)):
      raise ValueError(f"`grid` must be a finite increasing [num >= 2] array, got shape "
                       f"{grid.shape}.")
    if cdf.shape != grid.shape or not np.all((cdf >= 0) & (cdf <= 1)) or np.any(np.diff(cdf) < 0):
      raise ValueError("`cdf` must be a nondecreasing array in [0, 1] with the shape of `grid`.")
    if ironed.shape != grid.shape or np.any(np.diff(ironed) < 0) or not np.all(np.isfinite(ironed)):
      raise ValueError("`ironed` must be a finite nondecreasing array with the shape of `grid`.")

  @property
  def low(self) -> float:
    return float(self.grid[0])

  @property
  def high(self) -> float:
    return float(self.grid[-1])

  @classmethod
  def from_cdf(cls, cdf: Callable[[np.ndarray], np.ndarray], low: float, high: float,
               num: int = 4097) -> "Tabulated":
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
      raise ValueError(f"`low` < `high` must be finite, got [{low}, {high}].")
    if not isinstance(num, (int, np.integer)) or num < 2:
      raise ValueError(f"`num` must be an integer >= 2, got {num!r}.")
    grid = np.linspace(low, high, num)
    quantiles = np.clip(cdf(grid), 0.0, 1.0)
    # H(F(v)) (module docstring) plus int (1 - F) dv over gaps of the support (F flat), where
    # v f(v) - (1 - F(v)) = -(1 - F) carries no quantile mass and so must not lower H.
    no_mass = np.diff(quantiles) == 0
    gap_terms = np.where(no_mass, (1.0 - quantiles[:-1]) * np.diff(grid), 0.0)
    h = low - grid * (1.0 - quantiles) + np.concatenate([[0.0], np.cumsum(gap_terms)])
    unique_q, first = np.unique(quantiles, return_index=True)
    unique_h = h[first]
    hull = _lower_convex_hull(unique_q, unique_h)
    slopes = np.diff(unique_h[hull]) / np.diff(unique_q[hull])
    # Ironed phi at each grid point: the slope of the hull segment containing F(v).
    segment = np.clip(np.searchsorted(unique_q[hull], quantiles, side="right") - 1, 0,
                      len(slopes) - 1)
    return cls(grid=grid, cdf=quantiles, ironed=slopes[segment])

  def virtual_value(self, values):
    return np.interp(values, self.grid, self.ironed)

  def threshold_value(self, scores):
    scores = np.asarray(scores, np.float64)
    right = np.clip(np.searchsorted(self.ironed, scores, side="left"), 1, len(self.grid) - 1)
    left = right - 1
    rise = self.ironed[right] - self.ironed[left]
    frac = np.where(rise > 0, (scores - self.ironed[left]) / np.where(rise > 0, rise, 1.0), 1.0)
    inside = self.grid[left] + np.clip(frac, 0.0, 1.0) * (self.grid[right] - self.grid[left])
    return np.where(scores <= self.ironed[0], self.low,
                    np.where(scores > self.ironed[-1], self.high, inside))

  def sample(self, rng, size):
    return np.interp(rng.uniform(size=size), self.cdf, self.grid)


def bimodal_uniform(weight_low: float = 0.7, low_range=(0.0, 0.3),
                    high_range=(0.7, 1.0)) -> Tabulated:
  """An irregular mixture of two uniforms (non-monotone phi, so ironing matters)."""
  if not 0.0 <= weight_low <= 1.0:
    raise ValueError(f"`weight_low` must be in [0, 1], got {weight_low}.")
  for name, (lo, hi) in (("low_range", low_range), ("high_range", high_range)):
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
      raise ValueError(f"`{name}` must be a finite interval (lo < hi), got {(lo, hi)}.")
  if low_range[0] > high_range[0] or low_range[1] > high_range[1]:
    raise ValueError(f"`low_range` {low_range} must lie below `high_range` {high_range}.")
  def cdf(v):
    part_low = np.clip((v - low_range[0]) / (low_range[1] - low_range[0]), 0, 1)
    part_high = np.clip((v - high_range[0]) / (high_range[1] - high_range[0]), 0, 1)
    return weight_low * part_low + (1 - weight_low) * part_high
  return Tabulated.from_cdf(cdf, low_range[0], high_range[1])


def _lower_convex_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Indices of the lower convex hull of points sorted by x (monotone chain)."""
  hull: list[int] = []
  for k in range(len(x)):
    while len(hull) >= 2:
      i, j = hull[-2], hull[-1]
      # Drop j when it lies on or above the chord from i to k.
      if (y[j] - y[i]) * (x[k] - x[i]) >= (y[k] - y[i]) * (x[j] - x[i]):
        hull.pop()
      else:
        break
    hull.append(k)
  return np.asarray(hull)
