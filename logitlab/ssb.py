"""Semantic Soft Bootstrapping (SSB): logit-level self-distillation from hinted contexts.

Mitra & Ulukus, "Semantic Soft Bootstrapping: Long Context Reasoning in LLMs without
Reinforcement Learning", arXiv 2512.05105; reference code purbeshmitra/semantic-soft-bootstrapping.
Per question:

1. ``curate``: of R (= 4) rollouts at T = 0.8 keep questions with >= 1 correct and >= 1
   incorrect final answer; pick the first correct rollout and a rollout with the most
   common incorrect answer (ties broken at random).
2. ``teacher_prompt``: the same model as teacher sees the problem plus both responses,
   labeled correct / incorrect, and an instruction to write a standalone robust solution;
   it generates (T = 0.4) and replies whose final answer is correct are kept.
3. The teacher's logits on the kept reply tokens (in the hinted context) become soft
   targets; the student sees only the bare question followed by the same reply tokens:

     L = T^2 * mean_{reply tokens} KL(softmax(t / T) || softmax(s / T)),   T = 2,

   over reply positions only (prompt tokens never enter).
4. Only LoRA adapters (r = 32, alpha = 32, all projections; lr 2e-4) are trained and saved
   (``lora_optimizer`` / ``lora_train_step``; ``save_lora`` / ``restore_lora``).

Our choices (documented in docs/post_training.md): teacher targets are stored as the
top-k teacher logits per reply token (``teacher_targets``; k = V keeps the full
distribution exactly), because full-vocabulary logits for every reply token are ~600 KB
per token at V = 151936; the teacher's top-k is taken and the loss runs chunk by chunk
over T from hidden states (``logitlab.distill_chunked``), so no ``[B, T, V]`` logits exist.
Teacher and student sequences are left-padded so reply tokens sit at the same positions in
both, and ``nnx.LoRA`` wraps each projection with
scale 1 (alpha / r = 1 as in the paper's r = alpha = 32).
"""

from __future__ import annotations

import collections
from typing import Hashable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from logitlab import distill_chunked
from logitlab import numerics
from logitlab import training
from logitlab.rl import logprobs as rl_logprobs

Array = jax.Array

DEFAULT_TEACHER_TEMPLATE = (
    "Problem: {question}\n\nHere is a correct solution:\n{correct}\n\n"
    "Here is an incorrect solution:\n{incorrect}\n\n"
    "Using the correct solution as a guide and avoiding the mistake in the incorrect one, "
    "write a standalone, robust, step-by-step solution to the problem that ends with the "
    "correct final answer.\n\nSolution:\n")


def curate(correct: np.ndarray, answers: Sequence[Sequence[Hashable]],
           rng: np.random.Generator) -> list[tuple[int, int, int]]:
  """Selects (question, correct rollout, incorrect rollout) triples.

  Args:
    correct: bool ``[N, R]`` correctness of R rollouts per question.
    answers: ``N x R`` extracted final answers (None when missing; counted as an answer).
    rng: tie-breaking among equally common incorrect answers.

  Returns:
    For every question with >= 1 correct and >= 1 incorrect rollout: its index, the first
    correct rollout and the first rollout carrying a most common incorrect answer.
  """
  correct = np.asarray(correct, bool)
  triples = []
  for q, row in enumerate(correct):
    if row.all() or not row.any():
      continue
    wrong = np.flatnonzero(~row)
    counts = collections.Counter(answers[q][i] for i in wrong)
    top = max(counts.values())
    candidates = [a for a, c in counts.items() if c == top]
    chosen = candidates[rng.integers(len(candidates))]
    incorrect = next(int(i) for i in wrong if answers[q][i] == chosen)
    triples.append((q, int(np.flatnonzero(row)[0]), incorrect))
  return triples


def teacher_prompt(question: str, correct: str, incorrect: str,
                   template: str = DEFAULT_TEACHER_TEMPLATE) -> str:
  """The hinted teacher context (``template`` with ``{question}``, ``{correct}``,
  ``{incorrect}``)."""
  return template.format(question=question, correct=correct, incorrect=incorrect)


def align_replies(prefixes: Sequence[Sequence[int]], replies: Sequence[Sequence[int]],
                  reply_start: int, width: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """Left-pads ``prefix + reply`` rows so every reply starts at index ``reply_start``.

  Returns int32 ``tokens [N, width]``, bool ``attention_mask [N, width]`` (False on
  padding) and bool ``reply_mask [N, width]`` (True on reply tokens). Building teacher
  (hinted prefix) and student (bare question) batches with the same ``reply_start`` aligns
  their reply positions, so the loss compares the same tokens.
  """
  n = len(prefixes)
  tokens = np.full((n, width), pad_id, np.int32)
  attention = np.zeros((n, width), bool)
  reply_mask = np.zeros((n, width), bool)
  for i, (prefix, reply) in enumerate(zip(prefixes, replies)):
    if len(prefix) > reply_start or reply_start + len(reply) > width:
      raise ValueError(f"Row {i}: prefix of {len(prefix)} tokens and reply of {len(reply)} do "
                       f"not fit `reply_start`={reply_start}, `width`={width}.")
    lo, hi = reply_start - len(prefix), reply_start + len(reply)
    tokens[i, lo:hi] = list(prefix) + list(reply)
    attention[i, lo:hi] = True
    reply_mask[i, reply_start:hi] = True
  return {"tokens": tokens, "attention_mask": attention, "reply_mask": reply_mask}


def teacher_targets(teacher_logits: chex.Array, top_k: int | None = None
                    ) -> tuple[Array, Array]:
  """Stored teacher targets ``(logits [B, T, k], ids [B, T, k])``: the top-k logits
  (``top_k`` None keeps all V, i.e. the exact full-vocabulary teacher)."""
  numerics.check_logits("teacher_logits", teacher_logits, min_rank=3)
  k = teacher_logits.shape[-1] if top_k is None else min(top_k, teacher_logits.shape[-1])
  values, ids = jax.lax.top_k(numerics.upcast(teacher_logits), k)
  return values, ids.astype(jnp.int32)


def ssb_loss(student_hidden: chex.Array, logits_fn, reply_mask: chex.Array,
             teacher_topk_logits: chex.Array, teacher_topk_ids: chex.Array, *,
             temperature: float = 2.0, chunk_size: int = 128) -> Array:
  """``T^2 * mean_{reply} KL(softmax(t/T) || softmax(s/T))`` (module docstring).

  Args:
    student_hidden: ``[B, T, D]`` student states, shifted so index t predicts token t
      (``logitlab.rl.logprobs.shift_right``).
    logits_fn: the student's output projection (``model.unembed``).
    reply_mask: bool ``[B, T]``, True on reply tokens; nothing else enters the loss.
    teacher_topk_logits, teacher_topk_ids: ``[B, T, k]`` from ``teacher_targets``.
  """
  return distill_chunked.chunked_distill_loss(
      student_hidden, logits_fn, reply_mask, teacher_topk_logits=teacher_topk_logits,
      teacher_topk_ids=teacher_topk_ids, temperature=temperature, chunk_size=chunk_size)


def model_ssb_loss(model, batch: dict[str, Array], *, temperature: float = 2.0,
                   chunk_size: int = 128) -> Array:
  """SSB loss of a ``DecoderLM`` student on an aligned batch with stored teacher targets
  (keys ``tokens``, ``attention_mask``, ``reply_mask``, ``teacher_logits``,
  ``teacher_ids``)."""
  hidden = rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch["tokens"], batch["attention_mask"]))
  return ssb_loss(hidden, model.unembed, batch["reply_mask"], batch["teacher_logits"],
                  batch["teacher_ids"], temperature=temperature, chunk_size=chunk_size)


def model_teacher_targets(model, batch: dict[str, Array], top_k: int | None, *,
                          chunk_size: int = 128) -> tuple[Array, Array]:
  """Teacher targets ``[B, T, k]`` aligned with token positions (index t scores token t).

  The teacher's logits are projected and reduced to their top-k chunk by chunk over T
  (``distill_chunked.map_token_chunks``), so ``[B, T, V]`` logits never exist at once:
  only ``[B, chunk_size, V]`` plus the stored ``[B, T, k]`` targets.
  """
  hidden = rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch["tokens"], batch["attention_mask"]))
  return distill_chunked.map_token_chunks(
      lambda h: teacher_targets(model.unembed(h), top_k), (hidden,), chunk_size)


def add_lora(model: nnx.Module, rank: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """Wraps every ``nnx.Linear`` of ``model`` (all projections) in ``nnx.LoRA`` in place.

  ``y = W x + B A x``, A ``[in, r]`` He-uniform, B ``[r, out]`` zeros, so the wrapped model
  starts identical to the base; the adapters are ``nnx.LoRAParam`` variables.
  """
  parents = [m for _, m in nnx.iter_modules(model)]
  for parent in parents:
    for name, child in list(vars(parent).items()):
      if isinstance(child, nnx.Linear):
        setattr(parent, name, nnx.LoRA(child.in_features, rank, child.out_features,
                                       base_module=child, param_dtype=jnp.float32, rngs=rngs))
  return model


def lora_optimizer(model: nnx.Module, learning_rate: float = 2e-4) -> nnx.Optimizer:
  """AdamW over the LoRA adapters only (``wrt=nnx.LoRAParam``); base weights stay frozen."""
  return nnx.Optimizer(model, optax.adamw(learning_rate, weight_decay=0.0), wrt=nnx.LoRAParam)


@nnx.jit(static_argnames=("temperature", "chunk_size"))
def lora_train_step(model, optimizer: nnx.Optimizer, batch: dict[str, Array], *,
                    temperature: float = 2.0, chunk_size: int = 128) -> Array:
  """One SSB update of the LoRA adapters; returns the loss."""
  diff = nnx.DiffState(0, nnx.LoRAParam)
  loss, grads = nnx.value_and_grad(
      lambda m: model_ssb_loss(m, batch, temperature=temperature, chunk_size=chunk_size),
      argnums=diff)(model)
  optimizer.update(model, grads)
  return loss


def save_lora(directory: str, model: nnx.Module, step: int) -> None:
  """Checkpoints only the adapters, ``nnx.state(model, nnx.LoRAParam)`` (the ``lora_a`` /
  ``lora_b`` of every wrapped projection; base weights are never written), as a pure dict
  with ``logitlab.training.Checkpointer`` at ``directory/<step>``."""
  adapters = nnx.state(model, nnx.LoRAParam)
  if not jax.tree.leaves(adapters):
    raise ValueError("`model` has no nnx.LoRAParam adapters; wrap it with `add_lora` first.")
  checkpointer = training.Checkpointer(directory, save_interval_steps=1, async_save=False)
  checkpointer.save(step, nnx.to_pure_dict(adapters), {"position": step}, force=True)
  checkpointer.close()


def restore_lora(directory: str, model: nnx.Module, step: int | None = None) -> int:
  """Loads adapters saved by ``save_lora`` into ``model`` (already wrapped by ``add_lora``
  with the same rank) in place; returns the restored step (default: the latest)."""
  adapters = nnx.state(model, nnx.LoRAParam)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          nnx.to_pure_dict(adapters))
  checkpointer = training.Checkpointer(directory, save_interval_steps=1, async_save=False)
  step = checkpointer.latest_step() if step is None else step
  restored = None if step is None else checkpointer.restore(abstract, step)
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No LoRA checkpoint in `directory`={directory!r}.")
  nnx.replace_by_pure_dict(adapters, restored[0])
  nnx.update(model, adapters)
  return int(step)
