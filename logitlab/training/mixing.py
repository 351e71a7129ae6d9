"""Batch mixing: Mixup (arXiv 1710.09412) and CutMix (arXiv 1905.04899), switched per batch.

A port of the batch augments of mmcls 1.x as cls_KD ships them (the DeiT recipe of USKD,
configs/deit/deit-small_pt-4xb256_in1k.py:29-32: ``Mixup(alpha=0.8)``, ``CutMix(alpha=1.0)``):

* one ``lam ~ Beta(alpha, alpha)`` and one permutation ``perm`` per batch
  (mmcls/models/utils/batch_augments/mixup.py:49-53, cutmix.py:135-152);
* Mixup: ``x = lam x + (1 - lam) x[perm]``, ``y = lam y + (1 - lam) y[perm]``;
* CutMix: a box of side ``int(side * sqrt(1 - lam))`` centred uniformly, clipped to the
  image (cutmix.py:87-113), ``x[box] = x[perm][box]`` and ``lam = 1 - box area / image area``
  (``correct_lam``, cutmix.py:115-133), the label mix as Mixup's;
* ``RandomBatchAugment`` without ``probs`` picks one of the two uniformly per batch
  (wrapper.py:68): switch probability 0.5, never both, never neither.

Labels leave as ``[B, C]`` float32 probability vectors (rows sum to 1), which every
labelled loss of ``logitlab.losses`` takes as soft labels. Randomness comes from a
``np.random.Generator`` (the official code draws from the global NumPy / torch state), so
:class:`MixedBatches` derives it from ``(seed, batch position)`` and a resumed run mixes
the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def _check_lam(lam: float) -> None:
  if not 0.0 <= lam <= 1.0:
    raise ValueError(f"`lam` must be in [0, 1], got {lam}.")


def _check_perm(perm: np.ndarray, batch_size: int) -> None:
  if sorted(np.asarray(perm).tolist()) != list(range(batch_size)):
    raise ValueError(f"`perm` must be a permutation of range({batch_size}), got {perm}.")


def _check_batch(images: np.ndarray, labels: np.ndarray) -> None:
  if images.ndim != 4:
    raise ValueError(f"`images` must be [B, H, W, C], got shape {images.shape}.")
  if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
    raise ValueError(f"`labels` must be [B, num_classes] probability vectors with B = "
                     f"{images.shape[0]}, got shape {labels.shape}.")


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """``[B]`` integer labels in ``[0, num_classes)`` -> ``[B, num_classes]`` float32."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"`labels` must be [B] integers, got {labels.dtype} {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"`labels` must be class indices in [0, {num_classes}), got "
                     f"range [{labels.min()}, {labels.max()}].")
  return np.eye(num_classes, dtype=np.float32)[labels]


def mixup(images: np.ndarray, labels: np.ndarray, lam: float,
          perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(lam x + (1 - lam) x[perm], lam y + (1 - lam) y[perm])``; ``images`` float."""
  _check_batch(images, labels)
  _check_lam(lam)
  _check_perm(perm, images.shape[0])
  return (lam * images + (1.0 - lam) * images[perm]).astype(images.dtype), \
      (lam * labels + (1.0 - lam) * labels[perm]).astype(np.float32)


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """``(top, bottom, left, right)``: official ``rand_bbox`` with margin 0 (cutmix.py:87-113)."""
  if height <= 0 or width <= 0:
    raise ValueError(f"`height` and `width` must be > 0, got {height}, {width}.")
  _check_lam(lam)
  ratio = np.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * ratio), int(width * ratio)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  return (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)),
          int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))


def cutmix(images: np.ndarray, labels: np.ndarray, box: tuple[int, int, int, int],
           perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """Pastes ``images[perm]`` into ``box``; labels mixed by the kept area fraction.

  Returns ``(images, labels, lam)`` with ``lam = 1 - box area / image area`` (the official
  ``correct_lam``). ``images`` is not modified in place.
  """
  _check_batch(images, labels)
  _check_perm(perm, images.shape[0])
  top, bottom, left, right = box
  height, width = images.shape[1:3]
  if not (0 <= top <= bottom <= height and 0 <= left <= right <= width):
    raise ValueError(f"`box` must be (top, bottom, left, right) inside the {height}x{width} "
                     f"image, got {box}.")
  mixed = images.copy()
  mixed[:, top:bottom, left:right] = images[perm, top:bottom, left:right]
  lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
  return mixed, (lam * labels + (1.0 - lam) * labels[perm]).astype(np.float32), lam


def mixup_or_cutmix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
                    mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                    switch_prob: float = 0.5) -> tuple[np.ndarray, np.ndarray, dict]:
  """One batch through CutMix (probability ``switch_prob``) or else Mixup.

  Args:
    images: ``[B, H, W, C]`` float images.
    labels: ``[B, num_classes]`` probability vectors (see :func:`one_hot`).
    rng: the batch's generator.
    mixup_alpha, cutmix_alpha: Beta parameters (> 0).
    switch_prob: probability of CutMix; 0.5 is the official uniform choice.

  Returns:
    ``(images, labels, info)``; ``info`` has ``"kind"`` ("mixup" / "cutmix"), ``"lam"``
    (the label weight of the unpermuted batch), ``"perm"`` and, for CutMix, ``"box"``.
  """
  _check_batch(images, labels)
  for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
    if not value > 0:
      raise ValueError(f"`{name}` must be > 0, got {value}.")
  if not 0.0 <= switch_prob <= 1.0:
    raise ValueError(f"`switch_prob` must be in [0, 1], got {switch_prob}.")
  use_cutmix = rng.random() < switch_prob
  alpha = cutmix_alpha if use_cutmix else mixup_alpha
  lam = float(rng.beta(alpha, alpha))
  perm = rng.permutation(images.shape[0])
  if not use_cutmix:
    mixed, mixed_labels = mixup(images, labels, lam, perm)
    return mixed, mixed_labels, {"kind": "mixup", "lam": lam, "perm": perm}
  box = cutmix_box(images.shape[1], images.shape[2], lam, rng)
  mixed, mixed_labels, lam = cutmix(images, labels, box, perm)
  return mixed, mixed_labels, {"kind": "cutmix", "lam": lam, "perm": perm, "box": box}


class MixedBatches:
  """Wraps a resumable batch iterator: ``label`` becomes mixed ``[B, C]`` soft labels.

  The generator of batch ``s`` is ``np.random.default_rng((seed, s))``, ``s`` the wrapped
  iterator's position, so the mixing is a function of the batch, and resume (``get_state``
  / ``set_state`` pass through) reproduces it. Mixing is per host batch, as mmcls mixes
  each GPU's batch.
  """

  def __init__(self, batches, num_classes: int, *, seed: int, image_key: str = "image",
               **mix_kwargs):
    if num_classes < 2:
      raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
    self.batches, self.num_classes, self.seed = batches, num_classes, seed
    self.image_key, self.mix_kwargs = image_key, mix_kwargs

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    position = self.batches.get_state()["position"]
    batch = next(self.batches)
    rng = np.random.default_rng((self.seed, position))
    images, labels, _ = mixup_or_cutmix(np.asarray(batch[self.image_key]),
                                        one_hot(batch["label"], self.num_classes), rng,
                                        **self.mix_kwargs)
    return {**batch, self.image_key: images, "label": labels}

  def get_state(self) -> dict[str, Any]:
    return self.batches.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.batches.set_state(state)
