"""Shared pieces of the post-training demos (``experiments.{grpo,ssb,aslec}``).

The SFT model (``experiments/assets/tiny_reasoner``, HF format, or any local HF folder),
the task (``config.task``: generated arithmetic or a math JSONL file, ``DemoTask``), the
special token ids resolved from the checkpoint's tokenizer by the strings in
``config.tokens`` (``SpecialTokens``), prompts that end inside the think block, held-out
Pass@1 / Pass@k, ``results.json`` and the absl entry point.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import jax
import ml_collections
import numpy as np

from logitlab.models import chat_template, hf_checkpoint
from logitlab.rl import rewards as rl_rewards
from logitlab.rl import trainer
from logitlab.tasks import arithmetic
from logitlab.tasks import math_jsonl

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def load_sft(init_dir: str):
  """``(model, tokenizer)`` of the SFT checkpoint; the task tokenizer if none is saved."""
  if not (Path(init_dir) / "config.json").exists():
    raise FileNotFoundError(
        f"No SFT checkpoint in {init_dir!r}: train one with `python -m experiments.train_tiny_lm "
        f"--config.out_dir={init_dir}` first.")
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(init_dir, require_tokenizer=False)
  return model, tokenizer or arithmetic.build_tokenizer()


def task_config(**overrides) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """``(config.data, config.tokens)`` defaults of the demos: the arithmetic task's tokens.

  ``data`` (used when ``config.task == "math_jsonl"``): ``path`` (train JSONL), ``eval_path``
  (held-out JSONL), ``question_key`` / ``answer_key`` (empty: auto, see
  ``logitlab.tasks.math_jsonl``), ``template`` (prompt text with a literal ``{question}``),
  ``chat_template`` (True: ``template`` becomes the user turn, after an optional ``system``
  turn, of the checkpoint's own chat template; see ``prompt_template``).
  ``tokens``: token *strings* of the checkpoint's tokenizer; ``eos`` is a string or a tuple
  of strings (every one stops generation; empty: ``eos_token_id`` of the checkpoint's
  generation_config.json / config.json), ``pad`` (empty: the first eos),
  ``think_open`` / ``think_close`` (empty: the model has no think block). ``overrides``
  set ``tokens`` fields.
  """
  data = ml_collections.ConfigDict({"path": "", "eval_path": "", "question_key": "",
                                    "answer_key": "", "template": "{question}",
                                    "chat_template": False, "system": ""})
  tokens = ml_collections.ConfigDict(
      {"eos": arithmetic.EOS, "pad": arithmetic.PAD, "think_open": arithmetic.THINK,
       "think_close": arithmetic.END_THINK, **overrides}, type_safe=False)
  return data, tokens


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Ids of the demo's special tokens in the checkpoint's vocabulary (and their text)."""
  eos: tuple[int, ...]  # every id stops generation
  pad: int
  think_open: int | None  # prompts end with it when set (rollouts start inside the block)
  think_close: int | None
  eos_text: tuple[str, ...]
  think_open_text: str = ""

  def rollout_kwargs(self) -> dict[str, Any]:
    """``end_think_id`` / ``stop_tokens`` / ``pad_id`` for ``trainer.rollout``/``train_step``
    (``end_think_id`` -1 when there is no think block: only soft rollouts read it)."""
    return {"end_think_id": -1 if self.think_close is None else self.think_close,
            "stop_tokens": self.eos, "pad_id": self.pad}

  def require_think(self, why: str) -> None:
    if self.think_open is None or self.think_close is None:
      raise ValueError(f"{why} needs a think block: set config.tokens.think_open and "
                       f"config.tokens.think_close to the checkpoint's think tokens (e.g. "
                       f"'<think>' and '</think>').")


def _checkpoint_eos_ids(init_dir: str) -> tuple[int, ...]:
  for name in ("generation_config.json", "config.json"):
    file = Path(init_dir) / name
    eos = json.loads(file.read_text()).get("eos_token_id") if file.exists() else None
    if eos is not None:
      return tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
  raise ValueError(f"config.tokens.eos is empty and {init_dir} has no eos_token_id in "
                   f"generation_config.json or config.json; set config.tokens.eos.")


def resolve_tokens(tokens_config, tokenizer, init_dir: str = "",
                   vocab_size: int | None = None) -> SpecialTokens:
  """Looks the token strings of ``config.tokens`` up in ``tokenizer`` (``task_config``).

  Raises ValueError naming the ``config.tokens`` field when a string is not one token of
  the tokenizer or an id does not fit the model's ``vocab_size``.
  """
  def lookup(field: str, text: str) -> int:
    i = tokenizer.token_to_id(text)
    if i is None:
      added = [t.content for t in tokenizer.get_added_tokens_decoder().values()][:12]
      raise ValueError(f"config.tokens.{field} = {text!r} is not a token of the tokenizer "
                       f"of {init_dir or 'the checkpoint'} (its added tokens include "
                       f"{added}); set config.tokens.{field} to one of its tokens"
                       f"{' or to empty' if field.startswith('think') else ''}.")
    if vocab_size is not None and i >= vocab_size:
      raise ValueError(f"config.tokens.{field} = {text!r} has id {i} >= the model's "
                       f"vocab_size {vocab_size}.")
    return i

  eos_field = tokens_config.eos
  eos_strings = (eos_field,) if isinstance(eos_field, str) else tuple(eos_field or ())
  eos_strings = tuple(e for e in eos_strings if e)
  if eos_strings:
    eos = tuple(lookup("eos", e) for e in eos_strings)
  else:
    eos = _checkpoint_eos_ids(init_dir)
    eos_strings = tuple(tokenizer.id_to_token(i) or "" for i in eos)
  optional = {f: lookup(f, getattr(tokens_config, f)) if getattr(tokens_config, f) else None
              for f in ("pad", "think_open", "think_close")}
  if (optional["think_open"] is None) != (optional["think_close"] is None):
    raise ValueError("Set both config.tokens.think_open and config.tokens.think_close, or "
                     "neither.")
  return SpecialTokens(eos=eos, pad=eos[0] if optional["pad"] is None else optional["pad"],
                       think_open=optional["think_open"], think_close=optional["think_close"],
                       eos_text=eos_strings,
                       think_open_text=tokens_config.think_open or "")


@dataclasses.dataclass(frozen=True)
class DemoTask:
  """What a demo needs from its data. Problems have ``.prompt`` (text) and ``.answer``."""
  sample: Callable[[int, int, str], list]  # (n, seed, 'train' | 'test') -> problems
  extract: Callable[[str], Hashable]  # completion text -> answer comparable to .answer
  reward: rl_rewards.RewardFn  # fn(prompts, completions, answers=...)
  question: Callable[[Any], str]  # a problem's bare question (SSB teacher context)
  wrap: Callable[[str], str]  # text -> prompt text (the prompt template)
  split_steps: Callable[[str], list[str]]


def prompt_template(data, init_dir: str) -> str:
  """The prompt text with ``{question}``: ``data.template`` itself, or (``data.chat_template``)
  rendered by the checkpoint's chat template as the user message (after ``data.system``),
  with the assistant turn opened."""
  if not data.get("chat_template", False):
    return data.template
  messages = [{"role": "system", "content": data.system}] if data.get("system") else []
  messages.append({"role": "user", "content": data.template})
  return chat_template.ChatTemplate.from_pretrained(init_dir).render(messages)


def make_task(config) -> DemoTask:
  """``config.task``: 'arithmetic' (generated, ``config.num_ops``) or 'math_jsonl'
  (``config.data``: train problems from ``path``, held-out ones from ``eval_path``)."""
  task = config.get("task", "arithmetic")
  if task == "arithmetic":
    return DemoTask(
        sample=lambda n, seed, split: arithmetic.generate_problems(
            n, seed=seed, num_ops=tuple(config.num_ops), split=split),
        extract=arithmetic.extract_answer, reward=rl_rewards.correctness,
        question=lambda p: p.prompt, wrap=lambda text: text, split_steps=arithmetic.split_steps)
  if task != "math_jsonl":
    raise ValueError(f"config.task must be 'arithmetic' or 'math_jsonl', got {task!r}.")
  data = config.data
  template = prompt_template(data, config.get("init_dir", ""))
  loaded = {}

  def sample(n: int, seed: int, split: str) -> list:
    field = "path" if split == "train" else "eval_path"
    if not data[field]:
      raise ValueError(f"config.data.{field} is not set (a local JSONL file; see "
                       f"docs/post_training.md).")
    if field not in loaded:
      loaded[field] = math_jsonl.load_jsonl(data[field], template=template,
                                            question_key=data.question_key,
                                            answer_key=data.answer_key)
    return math_jsonl.sample_problems(loaded[field], n, seed=seed, repeat=split == "train")

  return DemoTask(sample=sample, extract=math_jsonl.extract_normalized,
                  reward=rl_rewards.math_correctness, question=lambda p: p.question,
                  wrap=lambda text: math_jsonl.apply_template(template, text),
                  split_steps=math_jsonl.split_steps)


@dataclasses.dataclass(frozen=True)
class Demo:
  """The loaded pieces every demo passes around: tokenizer, special tokens, task."""
  tokenizer: Any
  tokens: SpecialTokens
  task: DemoTask

  def prompt_ids(self, text: str) -> list[int]:
    """Token ids of a prompt text, plus ``think_open`` when the model has a think block
    (no post-processor tokens: a template writes BOS etc. itself)."""
    think = [] if self.tokens.think_open is None else [self.tokens.think_open]
    return self.tokenizer.encode(text, add_special_tokens=False).ids + think

  def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return arithmetic.decode_completions(self.tokenizer, tokens, lengths)


def setup(config, model, tokenizer) -> Demo:
  """``Demo`` of a loaded checkpoint: ``config.tokens`` resolved in its tokenizer, the task."""
  tokens = resolve_tokens(config.tokens, tokenizer, config.init_dir,
                          vocab_size=model.config.vocab_size)
  return Demo(tokenizer=tokenizer, tokens=tokens, task=make_task(config))


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None):
  """Right-padded ``[N, width]`` int32 ids and lengths ``[N]`` of token-id rows."""
  lengths = np.array([len(r) for r in rows], np.int32)
  width = int(lengths.max()) if width is None else width
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return tokens, lengths


def think_prompts(demo: Demo, problems, width: int | None = None):
  """Right-padded prompt ids ending in ``think_open`` (rollouts start inside the think
  block) or, without a think block, the bare prompts."""
  return pad_rows([demo.prompt_ids(p.prompt) for p in problems], demo.tokens.pad, width)


def evaluate(model, demo: Demo, problems, key, *, k: int, max_new_tokens: int,
             soft: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None) -> dict[str, float]:
  """Pass@1 / Pass@k with ``k`` samples per held-out problem (discrete or soft rollouts).

  ``top_k`` / ``top_p`` filter discrete sampling, the soft policy's mixtures (when set) and
  its answer after ``</think>``."""
  soft_filters = {} if top_k is None else {"soft_top_k": top_k}
  if top_p is not None:
    soft_filters["soft_top_p"] = top_p
  config = trainer.RLConfig(group_size=k, max_new_tokens=max_new_tokens, soft=soft,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            after_think_top_k=top_k, after_think_top_p=top_p, **soft_filters)
  prompts, lengths = think_prompts(demo, problems)
  _, tokens, out_lengths = trainer.rollout(model, prompts, lengths, key, config,
                                           **demo.tokens.rollout_kwargs())
  completions = demo.decode(tokens, out_lengths)
  answers = [p.answer for p in problems for _ in range(k)]
  correct = demo.task.reward(None, completions, answers=answers).reshape(-1, k) > 0
  # Per-problem correct counts: paired standard errors between models evaluated on the
  # same draws (experiments/RESULTS.md) need them.
  return {"pass@1": arithmetic.pass_at_k(correct, 1), f"pass@{k}": arithmetic.pass_at_k(correct, k),
          "correct_per_problem": correct.sum(-1).astype(int).tolist(),
          "mean_length": float(np.mean(out_lengths))}


def held_out_evaluator(config, demo: Demo, **kwargs) -> Callable[..., dict[str, float]]:
  """``evaluate(model, **kw)`` on ``config.num_eval_problems`` test-split problems.

  Problems and sampling key come from ``config.eval_seed`` (not the training seed), and
  every call reuses them (common random numbers), so models and training seeds are compared
  on identical draws. Sampling: ``config.eval_temperature`` / ``eval_top_k`` / ``eval_top_p``
  (defaults 1 / None / None).
  """
  problems = demo.task.sample(config.num_eval_problems, config.eval_seed, "test")
  key = jax.random.key(config.eval_seed)
  sampling = {name: config.get(f"eval_{name}", default) for name, default in
              (("temperature", 1.0), ("top_k", None), ("top_p", None))}
  return lambda model, **kw: evaluate(model, demo, problems, key, k=config.eval_k,
                                      max_new_tokens=config.max_new_tokens,
                                      **{**sampling, **kwargs, **kw})


def plot_curves(curves: dict[str, list[float]], path: Path, *, xlabel: str, ylabel: str,
                window: int = 1, log_y: bool = False) -> None:
  """Saves one line per named curve (moving mean over ``window`` points) to ``path``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, values in curves.items():
    w = max(1, min(len(values), window))
    ax.plot(np.convolve(np.asarray(values, float), np.ones(w) / w, mode="valid"), label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale("log")
  if len(curves) > 1:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(out_dir: Path, results: dict[str, Any], hide=("config",)) -> dict[str, Any]:
  """Writes ``results.json`` and prints it without the ``hide`` keys."""
  (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2))
  print(json.dumps({k: v for k, v in results.items() if k not in hide}, indent=2))
  return results


def main(run: Callable[[Any], Any], config_name: str) -> None:
  """absl entry point: ``--config`` defaults to ``experiments/configs/<config_name>.py``.

  Call under ``if __name__ == "__main__"`` so that importing an experiment defines no flag.
  """
  from absl import app
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file(
      "config", os.path.join(_CONFIG_DIR, f"{config_name}.py"), "Experiment config file.")

  def _main(argv):
    del argv
    run(config.value)

  app.run(_main)
