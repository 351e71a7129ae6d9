"""The optimizers of the official training recipes logitlab reproduces, as optax chains.

* :func:`step_decay_sgd`: mdistiller (CIFAR-100 / ImageNet KD protocols): SGD with momentum,
  coupled L2 weight decay, lr x ``decay_factor`` at fractions of the run.
* :func:`adamw_warmup_cosine`: the DeiT recipe as cls_KD runs it (mmcls
  configs/_base_/schedules/imagenet_bs1024_adamw_swin.py:3-31 and
  configs/deit/deit-small_pt-4xb256_in1k.py:39-47): AdamW (betas 0.9 / 0.999, eps 1e-8,
  decoupled weight decay 0.05 with no decay on 1-D parameters, ``cls_token`` and
  ``pos_embed``), gradient clipping at global norm 5, a linear warmup from 1e-3 x lr over
  the warmup steps, then a cosine decay to ``end_learning_rate`` (1e-5).

:func:`from_config` builds either from a config block (``name`` plus the arguments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax


def step_decay_sgd(learning_rate: float, steps: int, *, momentum: float = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0,
                   decay_at: Sequence[float] = (), decay_factor: float = 0.1
                   ) -> optax.GradientTransformation:
  """mdistiller SGD; ``decay_at`` are fractions of ``steps`` (150/240, 180/240, 210/240 on
  CIFAR-100). Weight decay is added to the gradient before momentum (torch ``SGD``)."""
  if steps <= 0:
    raise ValueError(f"`steps` must be > 0, got {steps}.")
  if any(not 0 <= f <= 1 for f in decay_at):
    raise ValueError(f"`decay_at` must be fractions of the run in [0, 1], got {decay_at}.")
  boundaries = {int(round(f * steps)): decay_factor for f in decay_at}
  schedule = optax.piecewise_constant_schedule(learning_rate, boundaries)
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


def decay_mask(params: Any, no_decay_names: Sequence[str] = ("cls_token", "pos_embed")) -> Any:
  """True where weight decay applies: parameters with >= 2 dimensions whose path names none
  of ``no_decay_names`` (mmcls ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``
  = 0 and ``custom_keys``)."""

  def decays(path, leaf):
    names = jax.tree_util.keystr(path)
    if not hasattr(leaf, "ndim"):
      raise TypeError(f"`params` leaves must be arrays, got {type(leaf).__name__} at {names}.")
    return leaf.ndim >= 2 and not any(name in names for name in no_decay_names)

  return jax.tree_util.tree_map_with_path(decays, params)


def warmup_cosine_schedule(learning_rate: float, steps: int, warmup_steps: int, *,
                           warmup_start_factor: float = 1e-3,
                           end_learning_rate: float = 1e-5) -> optax.Schedule:
  """mmcls ``LinearLR(start_factor)`` for ``warmup_steps``, then ``CosineAnnealingLR`` to
  ``end_learning_rate`` at ``steps`` (per step; mmcls steps the cosine once per epoch)."""
  if not learning_rate > 0:
    raise ValueError(f"`learning_rate` must be > 0, got {learning_rate}.")
  if not 0 <= warmup_steps < steps:
    raise ValueError(f"`warmup_steps` must be in [0, steps={steps}), got {warmup_steps}.")
  return optax.warmup_cosine_decay_schedule(
      init_value=warmup_start_factor * learning_rate, peak_value=learning_rate,
      warmup_steps=warmup_steps, decay_steps=steps, end_value=end_learning_rate)


def adamw_warmup_cosine(learning_rate: float, steps: int, warmup_steps: int, *,
                        weight_decay: float = 0.05, b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-8, clip_norm: float | None = 5.0,
                        warmup_start_factor: float = 1e-3, end_learning_rate: float = 1e-5,
                        no_decay_names: Sequence[str] = ("cls_token", "pos_embed")
                        ) -> optax.GradientTransformation:
  """The DeiT / mmcls AdamW recipe (module docstring); ``clip_norm=None`` disables clipping."""
  schedule = warmup_cosine_schedule(learning_rate, steps, warmup_steps,
                                    warmup_start_factor=warmup_start_factor,
                                    end_learning_rate=end_learning_rate)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=lambda params: decay_mask(params, tuple(no_decay_names)))
  if clip_norm is None:
    return adamw
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


OPTIMIZERS = {"step_decay_sgd": step_decay_sgd, "adamw_warmup_cosine": adamw_warmup_cosine}


def from_config(spec: Mapping[str, Any], steps: int, steps_per_epoch: int
                ) -> optax.GradientTransformation:
  """The optimizer of a config block: ``name`` (default ``"step_decay_sgd"``) plus its
  keyword arguments; ``warmup_epochs`` becomes ``warmup_steps``."""
  spec = dict(spec)
  name = spec.pop("name", "step_decay_sgd")
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer `name` must be one of {sorted(OPTIMIZERS)}, got {name!r}.")
  if "warmup_epochs" in spec:
    spec["warmup_steps"] = int(round(spec.pop("warmup_epochs") * steps_per_epoch))
  if "decay_at" in spec:
    spec["decay_at"] = tuple(spec["decay_at"])
  return OPTIMIZERS[name](steps=steps, **spec)
