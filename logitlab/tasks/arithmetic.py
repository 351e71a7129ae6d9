"""Multi-step integer arithmetic with worked steps: a reasoning task small enough for CPU.

A problem is an expression over ``num_ops`` operators from ``+ - *`` and operands in
``[1, max_operand]``; it is solved with the usual precedence (every ``*`` left to right,
then ``+``/``-`` left to right), one operation per step:

  prompt      "Q: 7+5*3-2="
  completion  "<think>5*3=15. 7+15=22. 22-2=20.</think>answer: 20<eos>"

Steps are separated by ". " so the regex step segmentation of step-level scoring (ASLEC)
works unchanged. ``num_ops`` is the difficulty knob. Train/test splits are disjoint
by a hash of the prompt, so held-out accuracy measures generalization, not recall.

Tokenization is character level (``tokenizers`` WordLevel over single characters plus the
special tokens ``<pad>`` = 0, ``<eos>`` = 1, ``<think>`` = 2, ``</think>`` = 3).
"""
from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

PAD, EOS, THINK, END_THINK = "<pad>", "<eos>", "<think>", "</think>"
SPECIAL_TOKENS = (PAD, EOS, THINK, END_THINK)
PAD_ID, EOS_ID, THINK_ID, END_THINK_ID = range(4)
_CHARACTERS = "0123456789+-*=. :Qanswer"
_OPERATORS = ("+", "-", "*")
_ANSWER_RE = re.compile(r"answer:\s*(-?\d+)")
_STEP_SEPARATOR = re.compile(r"(?<=\.) ")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: ``prompt`` (ends with '='), worked ``steps`` and the integer ``answer``."""
  prompt: str
  steps: tuple[str, ...]
  answer: int

  @property
  def completion(self) -> str:
    """The target text after the prompt, ``<think>`` steps through ``<eos>``."""
    return f"{THINK}{' '.join(self.steps)}{END_THINK}answer: {self.answer}{EOS}"


def solve(operands: Sequence[int], operators: Sequence[str]) -> tuple[tuple[str, ...], int]:
  """Worked steps ``("a*b=c.", ...)`` and value of ``operands[0] op operands[1] ...``."""
  values, ops = list(operands), list(operators)
  if len(ops) != len(values) - 1:
    raise ValueError(f"`operators` must hold one fewer entry than `operands` ({len(values)}), "
                     f"got {len(ops)}.")
  if not set(ops) <= set(_OPERATORS):
    raise ValueError(f"`operators` must be in {list(_OPERATORS)}, got {ops}.")
  steps = []
  for precedence in (("*",), ("+", "-")):
    i = 0
    while i < len(ops):
      if ops[i] not in precedence:
        i += 1
        continue
      a, b = values[i], values[i + 1]
      result = {"+": a + b, "-": a - b, "*": a * b}[ops[i]]
      steps.append(f"{a}{ops[i]}{b}={result}.")
      values[i:i + 2] = [result]
      del ops[i]
  return tuple(steps), values[0]


def make_problem(rng: np.random.Generator, num_ops: int, max_operand: int = 9) -> Problem:
  """A random problem with ``num_ops`` operators and operands in ``[1, max_operand]``."""
  if num_ops < 1:
    raise ValueError(f"`num_ops` must be >= 1, got {num_ops}.")
  operands = [int(x) for x in rng.integers(1, max_operand + 1, size=num_ops + 1)]
  operators = [_OPERATORS[i] for i in rng.integers(0, len(_OPERATORS), size=num_ops)]
  expression = "".join(f"{v}{op}" for v, op in zip(operands, operators)) + str(operands[-1])
  steps, answer = solve(operands, operators)
  return Problem(prompt=f"Q: {expression}=", steps=steps, answer=answer)


def in_test_split(prompt: str, test_fraction: float = 0.1) -> bool:
  """Deterministic split by a CRC32 hash of the prompt (same on every machine)."""
  if not 0.0 <= test_fraction <= 1.0:
    raise ValueError(f"`test_fraction` must be in [0, 1], got {test_fraction!r}.")
  return zlib.crc32(prompt.encode()) % 1000 < int(round(test_fraction * 1000))


def generate_problems(n: int, *, seed: int, num_ops: tuple[int, int] = (2, 3),
                      max_operand: int = 9, split: str = "train",
                      test_fraction: float = 0.1) -> list[Problem]:
  """``n`` problems with ``num_ops`` drawn uniformly from the inclusive range, from ``split``.

  ``split`` is 'train', 'test' or 'all'; train and test prompts never overlap.
  """
  if split not in ("train", "test", "all"):
    raise ValueError(f"`split` must be 'train', 'test' or 'all', got {split!r}.")
  rng = np.random.default_rng(seed)
  problems = []
  while len(problems) < n:
    problem = make_problem(rng, int(rng.integers(num_ops[0], num_ops[1] + 1)), max_operand)
    if split == "all" or in_test_split(problem.prompt, test_fraction) == (split == "test"):
      problems.append(problem)
  return problems


def build_tokenizer() -> tokenizers.Tokenizer:
  """Character-level tokenizer for this task (save with ``tokenizer.save(path)``)."""
  vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
  for char in _CHARACTERS:
    vocab.setdefault(char, len(vocab))
  tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=None))
  tokenizer.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
  tokenizer.decoder = decoders.Fuse()
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
  return tokenizer


def extract_answer(text: str) -> int | None:
  """The integer after the last ``answer:`` in ``text``, or None."""
  matches = _ANSWER_RE.findall(text)
  return int(matches[-1]) if matches else None


def reward(text: str, answer: int) -> float:
  """1.0 if the extracted answer equals ``answer``, else 0.0 (also when none is found)."""
  return float(extract_answer(text) == answer)


def split_steps(text: str) -> list[str]:
  """The worked steps inside ``<think>...</think>`` (or the whole text), split at '. '."""
  match = re.search(f"{re.escape(THINK)}(.*?)(?:{re.escape(END_THINK)}|$)", text, re.S)
  body = match.group(1) if match else text
  return [step for step in _STEP_SEPARATOR.split(body.strip()) if step]


def _pad(rows: list[list[int]], length: int) -> np.ndarray:
  out = np.full((len(rows), length), PAD_ID, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row[:length]
  return out


def encode_prompts(tokenizer: tokenizers.Tokenizer, problems: Sequence[Problem],
                   width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded prompt ids ``[N, width]`` and their lengths ``[N]`` (for ``generate``).

  ``width`` defaults to the longest prompt; a fixed width avoids recompiling ``generate``.
  """
  rows = [tokenizer.encode(p.prompt).ids for p in problems]
  lengths = np.array([len(r) for r in rows], np.int32)
  width = int(lengths.max()) if width is None else width
  if lengths.max() > width:
    raise ValueError(f"A prompt has {lengths.max()} tokens > `width`={width}.")
  return _pad(rows, width), lengths


def encode_examples(tokenizer: tokenizers.Tokenizer, problems: Sequence[Problem],
                    max_len: int) -> dict[str, np.ndarray]:
  """Teacher-forcing batch for next-token training.

  Returns:
    ``inputs [N, L]`` = sequence[:-1], ``targets [N, L]`` = sequence[1:], and
    ``loss_mask [N, L]`` True where the target is a completion token (the prompt is
    conditioning, not a target). Sequences longer than ``max_len + 1`` raise.
  """
  inputs, targets, masks = [], [], []
  for problem in problems:
    prompt = tokenizer.encode(problem.prompt).ids
    sequence = prompt + tokenizer.encode(problem.completion).ids
    if len(sequence) > max_len + 1:
      raise ValueError(f"Problem {problem.prompt!r} needs {len(sequence) - 1} positions > "
                       f"`max_len`={max_len}.")
    inputs.append(sequence[:-1])
    targets.append(sequence[1:])
    masks.append([i >= len(prompt) - 1 for i in range(len(sequence) - 1)])
  loss_mask = np.zeros((len(problems), max_len), bool)
  for i, mask in enumerate(masks):
    loss_mask[i, :len(mask)] = mask
  return {"inputs": _pad(inputs, max_len), "targets": _pad(targets, max_len),
          "loss_mask": loss_mask}


def decode_completions(tokenizer: tokenizers.Tokenizer, tokens: np.ndarray,
                       lengths: np.ndarray) -> list[str]:
  """Texts of generated ``tokens [N, T]`` up to ``lengths [N]``, special tokens kept."""
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(f"`lengths` must have shape [N] matching `tokens` [N, T], got "
                     f"{lengths.shape} and {tokens.shape}.")
  return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=False)
          for row, n in zip(tokens, lengths)]


def rewards(tokenizer: tokenizers.Tokenizer, problems: Sequence[Problem], tokens: np.ndarray,
            lengths: np.ndarray) -> np.ndarray:
  """float32 ``[N]`` correctness rewards of generated completions."""
  texts = decode_completions(tokenizer, tokens, lengths)
  if len(problems) != len(texts):
    raise ValueError(f"`problems` must hold one problem per completion ({len(texts)}), got "
                     f"{len(problems)}.")
  return np.array([reward(t, p.answer) for t, p in zip(texts, problems)], np.float32)


def pass_at_k(correct: np.ndarray, k: int) -> float:
  """Unbiased Pass@k (Chen et al. 2021, arXiv:2107.03374) from ``correct [N, n]`` samples.

  Per problem with c of n correct: ``1 - C(n - c, k) / C(n, k)``; averaged over problems.
  """
  correct = np.asarray(correct, bool)
  n = correct.shape[1]
  if not 1 <= k <= n:
    raise ValueError(f"`k` must be in [1, n={n}], got {k}.")
  c = correct.sum(axis=1)
  # C(n-c, k) / C(n, k) = prod_{i=0}^{k-1} (n - c - i) / (n - i), 0 once n - c < k.
  ratio = np.prod([np.clip(n - c - i, 0, None) / (n - i) for i in range(k)], axis=0)
  return float(np.mean(1.0 - ratio))


def evaluate_policy(model, tokenizer: tokenizers.Tokenizer, problems: Sequence[Problem], *,
                    key, policy=None, policy_state=None, num_samples: int = 1,
                    max_new_tokens: int = 56, prompt_width: int | None = None
                    ) -> dict[str, np.ndarray]:
  """Decodes ``num_samples`` completions per problem with ``sampling.generate``.

  Returns ``correct [N, num_samples]`` (bool) and ``lengths [N, num_samples]`` (generated
  tokens incl. ``<eos>``). Rows are problem-major (all samples of problem 0 first).
  """
  from logitlab import sampling  # local: keeps the task importable without the LM stack

  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")

  prompts, prompt_lengths = encode_prompts(tokenizer, problems, prompt_width)
  prompts = np.repeat(prompts, num_samples, axis=0)
  prompt_lengths = np.repeat(prompt_lengths, num_samples, axis=0)
  out = sampling.generate(model, prompts, prompt_lengths, max_new_tokens=max_new_tokens, key=key,
                          policy=policy, policy_state=policy_state, stop_tokens=(EOS_ID,),
                          pad_id=PAD_ID)
  repeated = [p for p in problems for _ in range(num_samples)]
  correct = rewards(tokenizer, repeated, out.tokens, out.lengths) > 0
  shape = (len(problems), num_samples)
  return {"correct": correct.reshape(shape), "lengths": np.asarray(out.lengths).reshape(shape)}
