"""Random auction instances shared by the experiment, the benchmark and the colab."""
from __future__ import annotations

import numpy as np

from logitlab.auctions import mnl


def random_ctr(rng: np.random.Generator, num_ads: int, num_positions: int, *,
               max_quality: float = 0.5, noise: float = 0.3) -> np.ndarray:
  """CTRs [n, m] p_ij = quality_i * prominence_j * exp(noise * z_ij), clipped below 0.95.

  quality_i ~ U(0.05, max_quality), prominence_j = 1 / sqrt(j + 1) (a decaying position
  effect); the log-normal factor makes p non-separable, so the assignment problem is real.
  """
  mnl.check_count("num_ads", num_ads, 1)
  mnl.check_count("num_positions", num_positions, 1)
  if not 0.05 < max_quality <= 1.0 or not noise >= 0:
    raise ValueError(f"`max_quality` must be in (0.05, 1] and `noise` >= 0, got {max_quality}, "
                     f"{noise}.")
  quality = rng.uniform(0.05, max_quality, size=(num_ads, 1))
  prominence = 1.0 / np.sqrt(np.arange(1, num_positions + 1))
  noise_factor = np.exp(noise * rng.standard_normal((num_ads, num_positions)))
  return np.minimum(quality * prominence * noise_factor, 0.95)


def random_continuation(rng: np.random.Generator, ctr: np.ndarray,
                        max_exit: float = 0.5) -> np.ndarray:
  """Cascade continuation c = (1 - p)(1 - e), e ~ U(0, max_exit): users also leave unclicked."""
  if not 0.0 <= max_exit <= 1.0:
    raise ValueError(f"`max_exit` must be in [0, 1], got {max_exit}.")
  return (1.0 - ctr) * (1.0 - rng.uniform(0.0, max_exit, size=ctr.shape))
