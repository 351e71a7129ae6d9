"""Embedded datasets that need no download (shipped by a dependency or generated).

Used by the fast default experiments and the tests; the TFDS pipelines for real
datasets live in :mod:`logitlab.training`.
"""

from __future__ import annotations

import numpy as np


def digits(*, test_fraction: float = 0.2, seed: int = 0):
  """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), stratified split.

  Returns:
    ``(x_train, y_train, x_test, y_test)`` with images ``float32 [N, 8, 8]`` scaled to
    ``[0, 1]`` and integer labels ``int32 [N]``.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  data = load_digits()
  x = (data.images / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=y)
  return x_train, y_train, x_test, y_test
