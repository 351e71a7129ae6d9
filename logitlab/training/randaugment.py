"""RandAugment as MLKD's strong view uses it (FixMatch variant, arXiv 2001.07685).

A port of the official MLKD / logit-standardization code (mdistiller/dataset/cifar100.py,
``augment_list`` and ``RandAugment(2, 10)``): ``n`` operations drawn with replacement from
14, each with a magnitude drawn uniformly from its range (the ``m`` argument is unused, as
there), then a Cutout of a random size up to half the image, filled with (125, 123, 114).
Random draws come from the ``np.random.Generator`` the grain pipeline gives each example
(the official code uses the global ``random`` / ``np.random`` state), so a resumed run sees
the same augmentations.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps


def _affine(img, coefficients):
  return img.transform(img.size, Image.AFFINE, coefficients)


# (operation(img, v), low, high): augment_list() of the official code.
OPERATIONS = (
    (lambda img, _: ImageOps.autocontrast(img), 0.0, 1.0),
    (lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    (lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    (lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    (lambda img, _: ImageOps.equalize(img), 0.0, 1.0),
    (lambda img, _: img, 0.0, 1.0),                                     # Identity
    (lambda img, v: ImageOps.posterize(img, max(1, int(v))), 4.0, 8.0),
    (lambda img, v: img.rotate(v), -30.0, 30.0),
    (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    (lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), -0.3, 0.3),       # ShearX
    (lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), -0.3, 0.3),       # ShearY
    (lambda img, v: ImageOps.solarize(img, v), 0.0, 256.0),
    (lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)), -0.3, 0.3),  # TranslateX
    (lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])), -0.3, 0.3),  # TranslateY
)
CUTOUT_COLOR = (125, 123, 114)


def cutout(img: Image.Image, fraction: float, rng: np.random.Generator) -> Image.Image:
  """A gray square of side ``fraction * width`` at a uniform random centre (``Cutout``).

  ``fraction`` in ``[0, 1]``; 0 returns ``img`` unchanged.
  """
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)) or \
      not 0 <= fraction <= 1:
    raise ValueError(f"`fraction` must be a number in [0, 1] (of the image width), got "
                     f"{fraction!r}.")
  if not isinstance(img, Image.Image):
    raise TypeError(f"`img` must be a PIL.Image.Image, got {type(img).__name__}.")
  if fraction <= 0:
    return img
  size = fraction * img.size[0]
  width, height = img.size
  x0 = int(max(0, rng.uniform(0, width) - size / 2.0))
  y0 = int(max(0, rng.uniform(0, height) - size / 2.0))
  img = img.copy()
  ImageDraw.Draw(img).rectangle((x0, y0, min(width, x0 + size), min(height, y0 + size)),
                                CUTOUT_COLOR)
  return img


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int = 2, *,
                 with_cutout: bool = True) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> uint8 ``[H, W, 3]``: ``num_ops`` random operations, then Cutout
  (the official FixMatch variant) unless ``with_cutout=False`` (the DeiT recipe, whose
  occlusion is RandomErasing instead)."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"`image` must be uint8 [H, W, 3], got {image.dtype} {image.shape}.")
  if isinstance(num_ops, bool) or not isinstance(num_ops, (int, np.integer)) or num_ops < 0:
    raise ValueError(f"`num_ops` must be an int >= 0, got {num_ops!r}.")
  img = Image.fromarray(image)
  for index in rng.integers(0, len(OPERATIONS), size=num_ops):
    operation, low, high = OPERATIONS[index]
    img = operation(img, low + (high - low) * rng.random())
  return np.asarray(cutout(img, 0.5 * rng.random(), rng) if with_cutout else img)
