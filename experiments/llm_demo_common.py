"""Shared pieces of the post-training demos (``experiments.{grpo,ssb,aslec}``).

The SFT model (``experiments/assets/tiny_reasoner``, HF format), prompts that end inside
the think block, held-out Pass@1 / Pass@k, ``results.json`` and the absl entry point.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from logitlab.models import hf_checkpoint
from logitlab.rl import rewards as rl_rewards
from logitlab.rl import trainer
from logitlab.tasks import arithmetic

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def load_sft(init_dir: str):
  """``(model, tokenizer)`` of the SFT checkpoint; the task tokenizer if none is saved."""
  if not (Path(init_dir) / "config.json").exists():
    raise FileNotFoundError(
        f"No SFT checkpoint in {init_dir!r}: train one with `python -m experiments.train_tiny_lm "
        f"--config.out_dir={init_dir}` first.")
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(init_dir)
  return model, tokenizer or arithmetic.build_tokenizer()


def think_prompts(tokenizer, problems, width: int | None = None):
  """Right-padded prompt ids ending in ``<think>`` (rollouts start inside the think block)."""
  rows = [tokenizer.encode(p.prompt).ids + [arithmetic.THINK_ID] for p in problems]
  lengths = np.array([len(r) for r in rows], np.int32)
  width = int(lengths.max()) if width is None else width
  tokens = np.full((len(rows), width), arithmetic.PAD_ID, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return tokens, lengths


def evaluate(model, tokenizer, problems, key, *, k: int, max_new_tokens: int,
             soft: bool = False, temperature: float = 1.0) -> dict[str, float]:
  """Pass@1 / Pass@k with ``k`` samples per held-out problem (discrete or soft rollouts)."""
  config = trainer.RLConfig(group_size=k, max_new_tokens=max_new_tokens, soft=soft,
                            temperature=temperature)
  prompts, lengths = think_prompts(tokenizer, problems)
  _, tokens, out_lengths = trainer.rollout(
      model, prompts, lengths, key, config, end_think_id=arithmetic.END_THINK_ID,
      stop_tokens=(arithmetic.EOS_ID,), pad_id=arithmetic.PAD_ID)
  completions = arithmetic.decode_completions(tokenizer, tokens, out_lengths)
  answers = [p.answer for p in problems for _ in range(k)]
  correct = rl_rewards.correctness(None, completions, answers=answers).reshape(-1, k) > 0
  return {"pass@1": arithmetic.pass_at_k(correct, 1), f"pass@{k}": arithmetic.pass_at_k(correct, k),
          "mean_length": float(np.mean(out_lengths))}


def held_out_evaluator(config, tokenizer, **kwargs) -> Callable[..., dict[str, float]]:
  """``evaluate(model, **kw)`` on ``config.num_eval_problems`` test-split problems.

  Problems and sampling key come from ``config.eval_seed`` (not the training seed), and
  every call reuses them (common random numbers), so models and training seeds are compared
  on identical draws.
  """
  problems = arithmetic.generate_problems(config.num_eval_problems, seed=config.eval_seed,
                                          num_ops=tuple(config.num_ops), split="test")
  key = jax.random.key(config.eval_seed)
  return lambda model, **kw: evaluate(model, tokenizer, problems, key, k=config.eval_k,
                                      max_new_tokens=config.max_new_tokens, **kwargs, **kw)


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
