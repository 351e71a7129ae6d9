"""Reward functions with the interface ``fn(prompts, completions, **kwargs) -> float32 [B]``.

``prompts`` and ``completions`` are lists of strings (one per rollout, group-major); extra
per-rollout data (reference answers, ...) arrive as keyword lists of the same length.
Unknown keywords are ignored, so several rewards can share one call site (``combine``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from logitlab.tasks import arithmetic
from logitlab.tasks import math_jsonl

RewardFn = Callable[..., np.ndarray]


def _check_completions(prompts, completions, **per_rollout) -> None:
  """Raises naming `completions` unless it is a list of strings with one entry per prompt
  (``prompts`` None: not checked) and per entry of each ``per_rollout`` list."""
  if isinstance(completions, (str, bytes)) or not isinstance(completions, Sequence):
    raise TypeError(f"`completions` must be a sequence of strings (one per rollout), got "
                    f"{type(completions).__name__}.")
  sizes = {"prompts": prompts, **per_rollout}
  for name, values in sizes.items():
    if values is not None and len(values) != len(completions):
      raise ValueError(f"`completions` ({len(completions)}) and `{name}` ({len(values)}) must "
                       f"have one entry per rollout.")


def correctness(prompts: Sequence[str], completions: Sequence[str], *,
                answers: Sequence[int], extract=arithmetic.extract_answer,
                **unused) -> np.ndarray:
  """1.0 where ``extract(completion)`` equals the reference answer, else 0.0."""
  _check_completions(prompts, completions, answers=answers)
  del prompts, unused
  return np.array([float(extract(c) == a) for c, a in zip(completions, answers)], np.float32)


def math_correctness(prompts: Sequence[str], completions: Sequence[str], *,
                     answers: Sequence[str], **unused) -> np.ndarray:
  """1.0 where the completion's final answer (last ``\\boxed{...}`` or ``#### x``) equals the
  reference after ``math_jsonl.normalize_answer`` on both sides; 0.0 when it has none."""
  del unused
  _check_completions(prompts, completions, answers=answers)
  return correctness(prompts, completions, answers=[math_jsonl.normalize_answer(str(a))
                                                    for a in answers],
                     extract=math_jsonl.extract_normalized)


def think_format(prompts: Sequence[str], completions: Sequence[str], *,
                 end_think: str = arithmetic.END_THINK, **unused) -> np.ndarray:
  """1.0 where the completion closes its think block and then states ``answer:``."""
  _check_completions(prompts, completions)
  del prompts, unused
  return np.array([float(end_think in c and "answer:" in c.split(end_think, 1)[1])
                   for c in completions], np.float32)


def combine(reward_fns: Sequence[RewardFn], weights: Sequence[float]) -> RewardFn:
  """Weighted sum of reward functions (same interface)."""
  if len(reward_fns) != len(weights):
    raise ValueError(f"`weights` must hold one weight per reward function "
                     f"({len(reward_fns)}), got {len(weights)}.")

  def reward(prompts, completions, **kwargs):
    return sum(w * fn(prompts, completions, **kwargs) for fn, w in zip(reward_fns, weights))

  return reward
