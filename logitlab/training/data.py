"""Input pipelines: TFDS ArrayRecord sources or in-memory arrays, through grain.

Why grain + ``tfds.data_source`` (not ``tf.data``): TensorFlow is not a logitlab dependency
(``tfds.load``/``as_numpy`` need it; ``tfds.data_source`` does not), and grain's random-access
``MapDataset`` makes the input order a pure function of ``(seed, index)``. That gives the two
properties a resumable, multi-host run needs for free:

* **Resumable order.** The training stream is ``shuffle(seed)`` over the source, repeated
  with a fresh permutation per epoch, augmented with a per-element RNG derived from
  ``(seed, element index)``, and batched. Batch ``s`` is therefore fixed; the iterator state is
  just ``{"position": s}`` (the number of batches consumed, equal to the train step), saved in
  every checkpoint.
* **Deterministic per-host sharding.** Global batch ``s`` is stream elements ``[s*B, (s+1)*B)``
  whatever the number of hosts; process ``p`` of ``P`` (``process_index``/``process_count``,
  by default ``jax.process_index()``/``jax.process_count()``) reads only its contiguous block
  ``[s*B + p*B/P, s*B + (p+1)*B/P)`` of it, so hosts never read the same example. Where host
  ``p``'s devices hold block ``p`` of the batch axis (``jax.make_mesh``'s order; the 2-process
  test checks it), the global batch array is the single-host one, row for row.

In-memory NumPy datasets (sklearn digits, mnist1d, ...) go through ``ArraySource`` and the same
``ResumableBatches``, so every trainer has one iterator/resume contract.

Augmentations follow the standard recipes: CIFAR: 4-pixel zero pad, random 32x32 crop,
horizontal flip, per-channel normalization; ImageNet: Inception-style random-resized crop
(scale [0.08, 1], aspect [3/4, 4/3]) to 224 + flip for training, resize shorter side to 256 +
center crop 224 for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
from PIL import Image

from logitlab.training import randaugment

Example = dict[str, np.ndarray]


class ArraySource:
  """Random-access source over in-memory arrays with a shared leading (example) axis.

  ``ArraySource(image=x, label=y)[i] == {"image": x[i], "label": y[i]}``.
  """

  def __init__(self, **arrays: np.ndarray):
    if not arrays:
      raise ValueError("ArraySource needs at least one named array.")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource arrays must share their leading axis, got {lengths}.")
    self.arrays = {name: np.asarray(a) for name, a in arrays.items()}
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> Example:
    return {name: a[index] for name, a in self.arrays.items()}


def _host_split(global_batch_size: int, process_index: int | None,
                process_count: int | None) -> tuple[int, int, int]:
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int) or (
      global_batch_size < 1):
    raise ValueError(f"`global_batch_size` must be an integer >= 1, got {global_batch_size!r}.")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"`global_batch_size` {global_batch_size} must be divisible by the number "
                     f"of processes {process_count}.")
  return global_batch_size // process_count, process_index, process_count


class ResumableBatches:
  """Infinite iterator of this host's training batches; its state is the batch position.

  Args:
    source: random-access source (``tfds.data_source(...)``, ``ArraySource``, any
      ``__len__``/``__getitem__``).
    global_batch_size: examples per step over all hosts.
    seed: shuffle and augmentation seed.
    transform: ``(example, np.random.Generator) -> example``; must return only array
      fields (drop strings such as TFDS ``id``). Its RNG depends only on (seed, index).
    num_threads: grain read threads (prefetching).
    process_index, process_count: host sharding (default: from JAX).

  Yields dicts of NumPy arrays with leading axis ``global_batch_size / process_count``;
  place them with ``mesh.put_batch``.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int,
               transform: Callable[[Example, np.random.Generator], Example] | None = None,
               num_threads: int = 8, process_index: int | None = None,
               process_count: int | None = None):
    local_batch, index, count = _host_split(global_batch_size, process_index, process_count)
    if len(source) < global_batch_size:
      raise ValueError(f"`source` has {len(source)} examples, fewer than `global_batch_size` "
                       f"{global_batch_size}.")
    stream = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    if transform is not None:
      stream = stream.random_map(transform, seed=seed)
    # Chunks of B/P consecutive elements; global batch s = chunks s*P .. s*P + P - 1.
    chunks = stream.batch(local_batch, drop_remainder=True)
    self._batches = chunks.slice(slice(index, None, count))
    self._read_options = grain.ReadOptions(num_threads=num_threads,
                                           prefetch_buffer_size=2 * num_threads)
    self.position = 0
    self._iterator = None

  def __iter__(self) -> Iterator[Example]:
    return self

  def __next__(self) -> Example:
    if self._iterator is None:
      remaining = self._batches.slice(slice(self.position, None))
      self._iterator = iter(remaining.to_iter_dataset(self._read_options))
    batch = next(self._iterator)
    self.position += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"position": self.position}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.position = int(state["position"])
    self._iterator = None


def eval_batches(source, *, global_batch_size: int,
                 transform: Callable[[Example], Example] | None = None, num_threads: int = 8,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """One ordered pass over ``source`` in this host's share of padded global batches.

  The last global batch is padded by repeating the final example; every batch has a bool
  ``mask`` field that is False on padding, so metrics weighted by ``mask`` are exact.
  """
  local_batch, index, count = _host_split(global_batch_size, process_index, process_count)
  num_examples = len(source)
  padded = math.ceil(num_examples / global_batch_size) * global_batch_size

  def load(i: int) -> Example:
    example = source[min(i, num_examples - 1)]
    example = example if transform is None else transform(example)
    return {**example, "mask": np.asarray(i < num_examples)}

  ds = grain.MapDataset.range(padded).map(load).batch(local_batch)  # host blocks as in training
  return ds.slice(slice(index, None, count)).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))


# --- image augmentations -------------------------------------------------------------------

# Per-channel mean / std of the training sets, in [0, 1] pixel units.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> float32 ``(image / 255 - mean) / std``."""
  channels = np.shape(image)[-1:]
  for name, value, low in (("mean", mean, -math.inf), ("std", std, 0.0)):
    value = np.asarray(value, np.float64)
    if value.ndim > 1 or value.shape not in ((), channels) or \
        not np.all(np.isfinite(value) & (value > low)):
      raise ValueError(f"`{name}` must be a finite {'' if low < 0 else 'positive '}number or "
                       f"one per channel {channels}, got {tuple(np.ravel(value))}.")
  return ((image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def _check_image(image: np.ndarray, uint8: bool = False) -> None:
  if np.ndim(image) != 3 or np.shape(image)[0] < 1 or np.shape(image)[1] < 1:
    raise ValueError(f"`image` must be an array [H, W, C] with H, W >= 1, got shape "
                     f"{np.shape(image)}.")
  if uint8 and np.asarray(image).dtype != np.uint8:  # PIL resizes uint8 RGB only
    raise TypeError(f"`image` must be uint8 [H, W, 3], got dtype {np.asarray(image).dtype}.")


def _check_size(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"`{name}` must be an int >= 1 (pixels), got {value!r}.")


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """CIFAR augmentation: zero-pad ``pad`` pixels, random crop back to ``[H, W]``, random flip."""
  _check_image(image)
  if not isinstance(pad, (int, np.integer)) or pad < 0:
    raise ValueError(f"`pad` must be an int >= 0, got {pad!r}.")
  height, width = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  crop = padded[top:top + height, left:left + width]
  return crop[:, ::-1] if rng.random() < 0.5 else crop


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int = 224,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        attempts: int = 10) -> np.ndarray:
  """Inception crop: a random area fraction in ``scale`` and aspect ratio in ``ratio``
  (log-uniform), resized to ``[size, size]``; falls back to the full image."""
  _check_size("size", size)
  _check_image(image, uint8=True)
  for name, (low, high) in (("scale", scale), ("ratio", ratio)):
    if not 0 < low <= high < math.inf or name == "scale" and high > 1:
      bound = " <= 1" if name == "scale" else ""
      raise ValueError(f"`{name}` must be a range 0 < low <= high{bound}, got {(low, high)}.")
  height, width = image.shape[:2]
  area = height * width
  for _ in range(attempts):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return _resize(image[top:top + crop_h, left:left + crop_w], size, size)
  return _resize(image, size, size)


def resize_center_crop(image: np.ndarray, resize: int = 256, size: int = 224) -> np.ndarray:
  """Resizes the shorter side to ``resize`` and takes the central ``[size, size]`` crop."""
  _check_size("resize", resize)
  _check_size("size", size)
  if size > resize:
    raise ValueError(f"`size` must be <= `resize` ({resize}): the crop lies inside the resized "
                     f"image, got {size}.")
  _check_image(image, uint8=True)
  height, width = image.shape[:2]
  factor = resize / min(height, width)
  new_h, new_w = max(size, round(height * factor)), max(size, round(width * factor))
  image = _resize(image, new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def _check_dataset(dataset: str) -> None:
  if dataset not in NORMALIZATION:
    raise ValueError(f"`dataset` must be one of {sorted(NORMALIZATION)}, got {dataset!r}.")


def random_erasing(image: np.ndarray, rng: np.random.Generator, mean, std, *,
                   probability: float = 0.25, area=(0.02, 1 / 3),
                   aspect=(3 / 10, 10 / 3)) -> np.ndarray:
  """mmcls ``RandomErasing(mode="rand")`` of the DeiT recipe (cls_KD
  mmcls/datasets/transforms/processing.py:529-575): with ``probability``, a box of area
  fraction ``U(area)`` and log-uniform aspect ratio is filled with per-pixel
  ``N(255 mean, 255 std)`` noise, clipped to uint8. uint8 ``[H, W, 3]`` in and out."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"`image` must be uint8 [H, W, 3], got {image.dtype} {image.shape}.")
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"`probability` must be in [0, 1], got {probability}.")
  if not 0.0 < area[0] <= area[1] <= 1.0:
    raise ValueError(f"`area` must be (low, high) with 0 < low <= high <= 1, got {area}.")
  if not 0.0 < aspect[0] <= aspect[1]:
    raise ValueError(f"`aspect` must be (low, high) with 0 < low <= high, got {aspect}.")
  if rng.random() > probability:
    return image
  height, width = image.shape[:2]
  ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
  box_area = height * width * rng.uniform(*area)
  h = min(int(round(math.sqrt(box_area * ratio))), height)
  w = min(int(round(math.sqrt(box_area / ratio))), width)
  top = int(rng.integers(0, height - h)) if height > h else 0
  left = int(rng.integers(0, width - w)) if width > w else 0
  noise = rng.normal(255 * np.asarray(mean), 255 * np.asarray(std), (h, w, 3))
  image = image.copy()
  image[top:top + h, left:left + w] = np.clip(noise.astype(np.int32), 0, 255)
  return image


AUGMENTS = ("standard", "deit")


def image_transform(dataset: str, *, train: bool, strong_view: bool = False,
                    augment: str = "standard"):
  """The training / evaluation transform of ``dataset`` ("cifar10", "cifar100", "imagenet2012").

  Returns ``(example, rng) -> {"image": float32 [H, W, 3], "label": int32}`` when ``train``,
  else ``example -> ...`` (deterministic). ``strong_view`` (train only) adds
  ``"image_strong"``: an independent crop + flip followed by ``RandAugment(2, 10)``, the
  strong view of MLKD (its official ``get_cifar100_train_transform_strong``).

  ``augment="deit"`` (train only) is the per-image part of the DeiT recipe as cls_KD runs it
  (configs/_base_/datasets/imagenet_bs64_swin_224.py:15-41): random-resized crop + flip,
  RandAugment (two operations, no Cutout) and :func:`random_erasing`; the batch part is
  ``mixing.MixedBatches``. Deviations (docs/distillation.md): our RandAugment is the
  FixMatch operation list, not timm's ``rand-m9-mstd0.5-inc1``, and resizing is bilinear.
  """
  if strong_view and not train:
    raise ValueError("`strong_view` applies to training transforms only (`train=True`).")
  if augment not in AUGMENTS:
    raise ValueError(f"`augment` must be one of {AUGMENTS}, got {augment!r}.")
  if augment == "deit" and (strong_view or not train):
    raise ValueError("`augment='deit'` is a training transform without a strong view.")
  _check_dataset(dataset)
  mean, std = NORMALIZATION[dataset]
  is_imagenet = dataset.startswith("imagenet")

  def output(image, example):
    return {"image": normalize(image, mean, std), "label": np.int32(example["label"])}

  if train:
    augment = random_resized_crop if is_imagenet else pad_crop_flip

    def weak(image, rng):
      image = augment(image, rng)
      return image[:, ::-1] if is_imagenet and rng.random() < 0.5 else image

    def deit(image, rng):
      image = randaugment.rand_augment(np.ascontiguousarray(weak(image, rng)), rng,
                                       with_cutout=False)
      return random_erasing(image, rng, mean, std)

    def train_transform(example, rng):
      view = deit if augment == "deit" else weak
      out = output(view(example["image"], rng), example)
      if strong_view:
        strong = randaugment.rand_augment(np.ascontiguousarray(weak(example["image"], rng)), rng)
        out["image_strong"] = normalize(strong, mean, std)
      return out
    return train_transform

  def eval_transform(example):
    image = resize_center_crop(example["image"]) if is_imagenet else example["image"]
    return output(image, example)
  return eval_transform


def tfds_image_data(dataset: str, split: str, *, global_batch_size: int, train: bool,
                    seed: int = 0, data_dir: str | None = None, num_threads: int = 8,
                    strong_view: bool = False, augment: str = "standard"):
  """TFDS image classification data via ``tfds.data_source`` + grain.

  Returns ``ResumableBatches`` (train) or an ``eval_batches`` pass (eval) with
  ``image_transform(dataset, augment=augment, ...)``. The dataset must already be
  prepared in ``data_dir`` (see docs/scaling.md); nothing is downloaded here.
  """
  _check_dataset(dataset)  # before the TFDS lookup, whose error lists every TFDS dataset
  import tensorflow_datasets as tfds  # ~1.5 s import; only TFDS runs pay it
  source = tfds.data_source(dataset, split=split, data_dir=data_dir)
  transform = image_transform(dataset, train=train, strong_view=strong_view, augment=augment)
  if train:
    return ResumableBatches(source, global_batch_size=global_batch_size, seed=seed,
                            transform=transform, num_threads=num_threads)
  return eval_batches(source, global_batch_size=global_batch_size, transform=transform,
                      num_threads=num_threads)
