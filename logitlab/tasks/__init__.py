"""Tasks with checkable answers for end-to-end LLM demos and tests.

  arithmetic   multi-step integer arithmetic with worked ``<think>`` steps, a character-level
               ``tokenizers`` tokenizer, answer extraction and a 0/1 correctness reward
               (generated, CPU-sized).
  math_jsonl   math word problems from a local JSONL file (GSM8K, MATH, DeepScaleR, LIMO):
               loader, prompt template, ``\\boxed{}`` / ``####`` answer extraction and
               normalization (reward: ``logitlab.rl.rewards.math_correctness``).
"""
from logitlab.tasks import arithmetic
from logitlab.tasks import math_jsonl

__all__ = ["arithmetic", "math_jsonl"]
