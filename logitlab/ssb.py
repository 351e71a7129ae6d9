"""Semantic Soft Bootstrapping (SSB): logit-level self-distillation from hinted contexts.

Mitra & Ulukus, "Semantic Soft Bootstrapping: Long Context Reasoning in LLMs without
Reinforcement Learning", arXiv 2512.05105; reference code purbeshmitra/semantic-soft-bootstrapping.
Per question:

1. ``curate``: of R (= 4) rollouts (top-k 50 at T = 0.8) keep questions with >= 1 correct
   and >= 1 incorrect final answer; a rollout without a final answer (e.g. truncated) is
   neither (official logit_gen.py lines 138-139); pick the first correct rollout and a
   rollout with the most common incorrect answer (ties broken at random).
2. ``teacher_prompt``: the same model as teacher sees the problem plus both responses,
   labeled correct / incorrect, and an instruction to write a standalone robust solution;
   it generates (top-k 50, T = 0.4) and replies whose final answer is correct are kept.
3. The teacher's logits on the kept reply tokens (in the hinted context) become soft
   targets; the student sees only the bare question followed by the same reply tokens:

     L = T^2 * mean_{reply tokens} KL(softmax(t / T) || softmax(s / T)),   T = 2,

   over reply positions only (prompt tokens never enter).
4. Only LoRA adapters (r = 32, alpha = 32, all projections; lr 2e-4) are trained and saved
   (``lora_optimizer`` / ``lora_train_step``; ``save_lora`` / ``restore_lora``).

Teacher targets (docs/post_training.md): the official code stores the full-vocabulary
teacher logits (~600 KB per token at V = 151936). Two exact-or-bounded alternatives here:
``model_teacher_hidden`` stores the teacher's final hidden states (D floats per token) and
the loss recomputes the full-vocabulary teacher logits chunk by chunk with the frozen LM
head (exact, the official loss); ``model_teacher_targets`` stores the top-k teacher logits
plus the exact log tail mass at the distillation temperature (a "rest" bucket), whose KL
lower-bounds the full one (error measured in docs/post_training.md). The loss runs chunk by
chunk over T from hidden states (``logitlab.distill_chunked``): no ``[B, T, V]`` logits.
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

# The official teacher instruction (purbeshmitra/semantic-soft-bootstrapping logit_gen.py
# lines 171-189, its source indentation removed); the official system prompt is
# ``SYSTEM_PROMPT`` (line 91) for both teacher and student.
SYSTEM_PROMPT = (
    "**Role:** You are an expert math tutor. When you are given a problem to solve, you "
    "provide detailed step-by-step reasoning in your solution. Your response is clear, "
    "precise, and unambiguous. You do not skip any step. You put your final answer within "
    "\\boxed{} at the end of your response.")
DEFAULT_TEACHER_TEMPLATE = (
    "We have two sample responses from students for a math problem for you to observe. One "
    "of the responses is correct and the other is incorrect. The students were asked to put "
    "the final answer inside boxed in their responses. Only this final answer was checked by "
    "an automatic evaluator. The following is the problem:\n---\n{question}\n---\n\n"
    "This is the correct response from a student:\n---\n{correct}\n---\n\n"
    "This is an attempt by another student which was labelled as incorrect by "
    "auto-evaluator:\n---\n{incorrect}\n---\n\n"
    "Write a coherent, step-by-step derivation of the solution. Do not skip any step in your "
    "response and make it as detailed as posible. This should be a standalone solution of the "
    "given problem since this solution will be used by the students for studying and "
    "learning. Make the solution robust by cautioning about potential errors or wrong chain "
    "of reasoning. However, do not mention in your response that you were provided attempted "
    "responses by the students. There should not be a slightest mention or hint that you are "
    "actually refining from correct or incorrect responses written by students.\n\n"
    "Conclude the entire response with the final answer, enclosed in boxed, at the very end. "
    "Make sure your enclosed final answer exactly matches the enclosed final answer in the "
    "given correct response of the student.\n")


def curate(correct: np.ndarray, answers: Sequence[Sequence[Hashable]],
           rng: np.random.Generator) -> list[tuple[int, int, int]]:
  """Selects (question, correct rollout, incorrect rollout) triples.

  Args:
    correct: bool ``[N, R]`` correctness of R rollouts per question.
    answers: ``N x R`` extracted final answers; None (no final answer) rollouts are
      excluded, never picked as the incorrect solution.
    rng: tie-breaking among equally common incorrect answers.

  Returns:
    For every question with >= 1 correct and >= 1 answered incorrect rollout: its index,
    the first correct rollout and the first rollout carrying a most common incorrect answer.
  """
  correct = np.asarray(correct, bool)
  if len(answers) != len(correct) or any(len(a) != correct.shape[1] for a in answers):
    raise ValueError(f"`answers` must be N x R = {correct.shape} like `correct`.")
  triples = []
  for q, row in enumerate(correct):
    answered = np.array([a is not None for a in answers[q]])
    wrong = np.flatnonzero(~row & answered)
    if not row.any() or not wrong.size:
      continue
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
  if not isinstance(template, str):
    raise TypeError(f"`template` must be a str, got {type(template).__name__}.")
  missing = [f for f in ("{question}", "{correct}", "{incorrect}") if f not in template]
  if missing:
    raise ValueError(f"`template` must contain the fields {{question}}, {{correct}} and "
                     f"{{incorrect}}, missing {', '.join(missing)}.")
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
  if len(replies) != n:
    raise ValueError(f"`replies` must hold one reply per prefix ({n}), got {len(replies)}.")
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


def _check_batch(batch, *keys: str) -> None:
  """Raises naming `batch` unless it is a mapping holding ``keys``."""
  if not hasattr(batch, "keys"):
    raise TypeError(f"`batch` must be a dict of arrays, got {type(batch).__name__}.")
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"`batch` must hold the keys {list(keys)} (``align_replies`` output), "
                     f"missing {missing}.")


def teacher_targets(teacher_logits: chex.Array, top_k: int | None = None, *,
                    temperature: float = 2.0) -> tuple[Array, Array, Array]:
  """Stored teacher targets ``(logits [B, T, k], ids [B, T, k], rest [B, T])``: the top-k
  logits and the exact log-mass of ``softmax(logits / temperature)`` outside them (the
  "rest" bucket; -inf for ``top_k`` None, which keeps all V)."""
  numerics.check_logits("teacher_logits", teacher_logits, min_rank=3)
  if not temperature > 0:
    raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
  k = teacher_logits.shape[-1] if top_k is None else min(top_k, teacher_logits.shape[-1])
  values, ids = jax.lax.top_k(numerics.upcast(teacher_logits), k)
  rest = distill_chunked.tail_logprob(teacher_logits, ids, temperature)
  return values, ids.astype(jnp.int32), rest


def ssb_loss(student_hidden: chex.Array, logits_fn, reply_mask: chex.Array,
             teacher_topk_logits: chex.Array | None = None,
             teacher_topk_ids: chex.Array | None = None,
             teacher_rest_logprob: chex.Array | None = None, *,
             teacher_hidden: chex.Array | None = None,
             temperature: float = 2.0, chunk_size: int = 128) -> Array:
  """``T^2 * mean_{reply} KL(softmax(t/T) || softmax(s/T))`` (module docstring).

  Args:
    student_hidden: ``[B, T, D]`` student states, shifted so index t predicts token t
      (``logitlab.rl.logprobs.shift_right``).
    logits_fn: the student's output projection (``model.unembed``).
    reply_mask: bool ``[B, T]``, True on reply tokens; nothing else enters the loss.
    teacher_topk_logits, teacher_topk_ids, teacher_rest_logprob: ``[B, T, k]``, ``[B, T,
      k]``, ``[B, T]`` from ``teacher_targets`` (rest None: renormalized top-k).
    teacher_hidden: alternatively the teacher's shifted final states ``[B, T, D]``
      (``model_teacher_hidden``): full-vocabulary targets through ``logits_fn``, exact.
  """
  if teacher_hidden is not None:
    return distill_chunked.chunked_distill_loss(
        student_hidden, logits_fn, reply_mask, teacher_hidden=teacher_hidden,
        teacher_logits_fn=logits_fn, temperature=temperature, chunk_size=chunk_size)
  return distill_chunked.chunked_distill_loss(
      student_hidden, logits_fn, reply_mask, teacher_topk_logits=teacher_topk_logits,
      teacher_topk_ids=teacher_topk_ids, teacher_rest_logprob=teacher_rest_logprob,
      temperature=temperature, chunk_size=chunk_size)


def model_ssb_loss(model, batch: dict[str, Array], *, temperature: float = 2.0,
                   chunk_size: int = 128) -> Array:
  """SSB loss of a ``DecoderLM`` student on an aligned batch with stored teacher targets
  (keys ``tokens``, ``attention_mask``, ``reply_mask`` and either ``teacher_hidden`` or
  ``teacher_logits``, ``teacher_ids`` with an optional ``teacher_rest``)."""
  _check_batch(batch, "tokens", "attention_mask", "reply_mask")
  if "teacher_hidden" not in batch:
    _check_batch(batch, "teacher_logits", "teacher_ids")
  hidden = rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch["tokens"], batch["attention_mask"]))
  if "teacher_hidden" in batch:
    return ssb_loss(hidden, model.unembed, batch["reply_mask"],
                    teacher_hidden=batch["teacher_hidden"], temperature=temperature,
                    chunk_size=chunk_size)
  return ssb_loss(hidden, model.unembed, batch["reply_mask"], batch["teacher_logits"],
                  batch["teacher_ids"], batch.get("teacher_rest"), temperature=temperature,
                  chunk_size=chunk_size)


def model_teacher_hidden(model, batch: dict[str, Array]) -> Array:
  """The teacher's shifted final states ``[B, T, D]`` (index t predicts token t): stored
  instead of logits, they give exact full-vocabulary targets (``ssb_loss(teacher_hidden=)``)
  at D instead of V floats per token. The student's LM head must stay frozen (LoRA
  training does not touch it), so it is the teacher's head too."""
  _check_batch(batch, "tokens", "attention_mask")
  return rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch["tokens"], batch["attention_mask"]))


def model_teacher_targets(model, batch: dict[str, Array], top_k: int | None, *,
                          temperature: float = 2.0,
                          chunk_size: int = 128) -> tuple[Array, Array, Array]:
  """Teacher targets ``(logits [B, T, k], ids [B, T, k], rest [B, T])`` aligned with token
  positions (index t scores token t; ``teacher_targets`` at ``temperature``).

  The teacher's logits are projected and reduced to their top-k chunk by chunk over T
  (``distill_chunked.map_token_chunks``), so ``[B, T, V]`` logits never exist at once:
  only ``[B, chunk_size, V]`` plus the stored ``[B, T, k]`` targets.
  """
  _check_batch(batch, "tokens", "attention_mask")
  hidden = rl_logprobs.shift_right(
      rl_logprobs.final_hidden(model, batch["tokens"], batch["attention_mask"]))
  return distill_chunked.map_token_chunks(
      lambda h: teacher_targets(model.unembed(h), top_k, temperature=temperature),
      (hidden,), chunk_size)


def add_lora(model: nnx.Module, rank: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """Wraps every ``nnx.Linear`` of ``model`` (all projections) in ``nnx.LoRA`` in place.

  ``y = W x + B A x``, A ``[in, r]`` He-uniform, B ``[r, out]`` zeros, so the wrapped model
  starts identical to the base; the adapters are ``nnx.LoRAParam`` variables.
  """
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"`rank` must be a positive int, got {rank!r}.")
  parents = [m for _, m in nnx.iter_modules(model)]
  for parent in parents:
    for name, child in list(vars(parent).items()):
      if isinstance(child, nnx.Linear):
        setattr(parent, name, nnx.LoRA(child.in_features, rank, child.out_features,
                                       base_module=child, param_dtype=jnp.float32, rngs=rngs))
  return model


def lora_optimizer(model: nnx.Module, learning_rate: float = 2e-4) -> nnx.Optimizer:
  """AdamW over the LoRA adapters only (``wrt=nnx.LoRAParam``); base weights stay frozen."""
  if not jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
    raise ValueError("`model` has no nnx.LoRAParam adapters; wrap it with `add_lora` first.")
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
