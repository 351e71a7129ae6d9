"""Math word problems from a local JSONL file (GSM8K, MATH / MATH500, DeepScaleR, LIMO).

One JSON object per line. The question is read from ``question_key`` (default: the first
of ``question``, ``problem`` present), the reference from ``answer_key`` (default: the
first of ``answer``, ``solution``). A reference that contains a final answer marker (GSM8K
``"... #### 42"`` or MATH's ``\\boxed{...}``) is reduced to it; otherwise the whole field
is the answer (DeepScaleR / LIMO / MATH500 ``answer``). References are stored normalized
(``normalize_answer``), so a completion is correct when its normalized extracted answer is
equal to the stored one.

The prompt is ``template`` with the literal ``{question}`` replaced by the question (plain
replacement, not ``str.format``: a template may contain ``\\boxed{}`` or chat markup such as
``<|im_start|>user\\n{question}<|im_end|>``); special tokens written in the template are
matched by the tokenizer as added tokens. Nothing is downloaded: see docs/post_training.md
for how to write such files from the public datasets.
"""
from __future__ import annotations

import dataclasses
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

QUESTION_KEYS = ("question", "problem")
ANSWER_KEYS = ("answer", "solution")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"([+-]*)(\d+(?:\.\d*)?|\.\d+)(?:/([+-]?)(\d+(?:\.\d*)?|\.\d+))?")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_FRAC_RE = re.compile(r"\\frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_STEP_SEPARATOR = re.compile(r"(?<=[.?]) ")  # as logitlab.data_selection.STEP_SEPARATOR


@dataclasses.dataclass(frozen=True)
class MathProblem:
  """One problem: the bare ``question``, its normalized ``answer`` and the ``prompt`` text."""
  question: str
  answer: str
  prompt: str


def apply_template(template: str, question: str) -> str:
  """``template`` with ``{question}`` replaced literally (other braces are left alone)."""
  if "{question}" not in template:
    raise ValueError(f"`template` must contain '{{question}}', got {template!r}.")
  return template.replace("{question}", question)


def _boxed_spans(text: str) -> list[tuple[int, str]]:
  """``(start, content)`` of every ``\\boxed{...}`` (balanced braces) or ``\\boxed x``."""
  spans = []
  for match in _BOXED_RE.finditer(text):
    i = match.end()
    if i < len(text) and text[i] == "{":
      depth = 0
      for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
          spans.append((match.start(), text[i + 1:j]))
          break
    elif match.group(0)[-1].isspace():  # "\boxed 5"
      spans.append((match.start(), re.match(r"[^\s$]*", text[i:]).group(0)))
  return spans


def extract_answer(text: str) -> str | None:
  """The final answer of ``text``: the content of the last ``\\boxed{...}`` (nested braces
  allowed) or the rest of the line after the last ``####``, whichever comes last; None if
  neither is present (a box that is never closed is ignored)."""
  candidates = _boxed_spans(text)
  candidates += [(m.start(), m.group(1)) for m in _HASH_RE.finditer(text)]
  if not candidates:
    return None
  return max(candidates, key=lambda c: c[0])[1].strip()


def _canonical_number(text: str) -> str | None:
  """``"42"``, ``"-3/4"`` for an integer, decimal or simple fraction string, else None."""
  match = _NUMBER_RE.fullmatch(text)
  if not match:
    return None
  signs, numerator, denominator_sign, denominator = match.groups()
  if denominator is not None and not Fraction(denominator):
    return None
  value = Fraction(numerator) / Fraction(denominator or 1)
  if (signs + (denominator_sign or "")).count("-") % 2:
    value = -value
  return str(value.numerator) if value.denominator == 1 else \
      f"{value.numerator}/{value.denominator}"


def normalize_answer(text: str) -> str:
  """A canonical string for comparing final answers.

  Strips ``$``, spacing commands, ``\\left``/``\\right``, ``\\text{...}`` wrappers, degree and
  percent signs, a leading ``x =`` and a trailing period; writes ``\\dfrac``/``\\tfrac`` as
  ``\\frac`` and the Unicode minus as ``-``; removes spaces. Numbers are reduced to integers
  or lowest-terms fractions: ``"1,000"`` -> ``"1000"``, ``"2.50"`` -> ``"5/2"``,
  ``"\\frac{6}{-8}"`` -> ``"-3/4"``, ``"42.0"`` -> ``"42"``. Anything else is returned
  cleaned but otherwise verbatim (``"\\sqrt{2}"``, ``"(1,2)"``).
  """
  s = text.strip().replace("\u2212", "-")
  s = re.sub(r"\\[!,;: ]|\\left|\\right|\\displaystyle", "", s)
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  while (unwrapped := _TEXT_RE.sub(r"\1", s)) != s:
    s = unwrapped
  s = re.sub(r"\^\s*\{?\\circ\}?|\\%|%|\\\$|\$", "", s)
  s = re.sub(r"\s+", "", s).rstrip(".")
  s = re.sub(r"^[a-zA-Z]=(?=.)", "", s)  # "x=5" -> "5"
  s = _FRAC_RE.sub(lambda m: f"{m.group(1) or m.group(2)}/{m.group(3) or m.group(4)}", s)
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  return _canonical_number(s) or s


def extract_normalized(text: str) -> str | None:
  """``normalize_answer(extract_answer(text))``, None when ``text`` has no final answer."""
  answer = extract_answer(text)
  return None if answer is None else normalize_answer(answer)


def reference_answer(field: str) -> str:
  """The normalized reference of a dataset answer field: its final answer if it has a
  ``####`` / ``\\boxed{}`` marker (GSM8K, MATH solutions), else the whole field."""
  if not isinstance(field, str):
    raise TypeError(f"`field` must be a str (pass `str(value)` for a numeric answer), got "
                    f"{type(field).__name__}.")
  answer = extract_answer(field)
  return normalize_answer(field if answer is None else answer)


def _pick_key(record: dict, key: str, defaults: Sequence[str], what: str, where: str) -> str:
  keys = (key,) if key else tuple(defaults)
  for k in keys:
    if k in record:
      return k
  raise KeyError(f"{where}: no {what} field {' / '.join(map(repr, keys))} (has "
                 f"{sorted(record)}); set config.data.{what}_key to the right field.")


def load_jsonl(path: str | Path, *, template: str = "{question}", question_key: str = "",
               answer_key: str = "") -> list[MathProblem]:
  """All problems of a JSONL file, in file order (blank lines skipped).

  Args:
    path: local file, one JSON object per line.
    template: prompt text with ``{question}`` (``apply_template``).
    question_key / answer_key: field names; empty: the first of ``QUESTION_KEYS`` /
      ``ANSWER_KEYS`` present in each record.

  Raises:
    FileNotFoundError, or ValueError / KeyError naming the line for invalid JSON, a missing
    field or an empty answer.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No JSONL file at {str(path)!r} (config.data.path / eval_path).")
  apply_template(template, "")  # validates the template once
  problems = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not a JSON object ({e}).") from None
    if not isinstance(record, dict):
      raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    question = str(record[_pick_key(record, question_key, QUESTION_KEYS, "question", where)])
    answer = reference_answer(str(record[_pick_key(record, answer_key, ANSWER_KEYS, "answer",
                                                   where)]))
    if not answer:
      raise ValueError(f"{where}: the answer field is empty.")
    problems.append(MathProblem(question=question, answer=answer,
                                prompt=apply_template(template, question)))
  if not problems:
    raise ValueError(f"{path} holds no problems.")
  return problems


def sample_problems(problems: Sequence[MathProblem], n: int, *, seed: int,
                    repeat: bool = True) -> list[MathProblem]:
  """``n`` problems in a seeded random order; with ``repeat`` further shuffled passes
  follow once the file is exhausted (epochs), else at most ``len(problems)``."""
  if not problems:
    raise ValueError("`problems` is empty (with `repeat` the sampler would never finish).")
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f"`n` must be an integer >= 0, got {n!r}.")
  rng = np.random.default_rng(seed)
  order: list[int] = []
  while len(order) < n:
    order += rng.permutation(len(problems)).tolist()
    if not repeat:
      break
  return [problems[i] for i in order[:n]]


def split_steps(text: str) -> list[str]:
  """Non-empty reasoning steps of ``text`` split after ``.``/``?`` + space (ASLEC's rule)."""
  return [step for step in _STEP_SEPARATOR.split(text.strip()) if step.strip()]
