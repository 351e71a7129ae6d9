"""Generated tasks with checkable answers for end-to-end LLM demos and tests on CPU.

  arithmetic   multi-step integer arithmetic with worked ``<think>`` steps, a character-level
               ``tokenizers`` tokenizer, answer extraction and a 0/1 correctness reward.
"""
from logitlab.tasks import arithmetic

__all__ = ["arithmetic"]
