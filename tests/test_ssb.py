"""Semantic Soft Bootstrapping: curation, alignment, reply-only KL at T = 2, LoRA-only training."""
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from logitlab import ssb
from logitlab.models import decoder_lm


def test_curate_picks_first_correct_and_most_common_incorrect(rng):
  correct = np.array([[0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]], bool)
  answers = [[5, 7, 5, 7], [1, 1, 1, 1], [2, 3, 2, 2], [4, 6, 9, 6]]
  triples = ssb.curate(correct, answers, rng)
  assert triples == [(0, 1, 0), (3, 2, 1)]
  # All-unique incorrect answers: any incorrect rollout may be chosen, never a correct one.
  picks = {ssb.curate(np.array([[0, 0, 1, 0]], bool), [[1, 2, 3, 4]],
                      np.random.default_rng(s))[0][2] for s in range(20)}
  assert picks <= {0, 1, 3} and len(picks) > 1


def test_curate_excludes_unanswered_rollouts_as_official(rng):
  """logit_gen.py lines 138-142: ``incorrect_rollouts`` need ``r["answer"] is not None``; a
  question whose only non-correct rollouts have no final answer is skipped. Before, None
  counted as an incorrect answer (and a truncated reply could be shown as "incorrect")."""
  correct = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], bool)
  answers = [[3, None, None, None], [2, None, 5, 2], [None, 7, 4, None]]
  assert ssb.curate(correct, answers, rng) == [(1, 0, 2), (2, 2, 1)]
  with pytest.raises(ValueError, match="`answers`"):
    ssb.curate(correct, answers[:2], rng)


def _np_bucket_kl(teacher, student, k, temp):
  """float64: KL over the teacher's top-k ids + one "rest" bucket, both sides' exact tails."""
  def softmax(x):
    e = np.exp(x / temp - (x / temp).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p, q = softmax(teacher), softmax(student)
  ids = np.argsort(-teacher, -1)[..., :k]
  pk, qk = np.take_along_axis(p, ids, -1), np.take_along_axis(q, ids, -1)
  pr, qr = 1 - pk.sum(-1), 1 - qk.sum(-1)
  return (pk * np.log(pk / qk)).sum(-1) + pr * np.log(pr / qr)


def test_rest_bucket_and_full_vocabulary_targets(rng):
  """Top-k + rest bucket equals the float64 bucketed KL; the hidden-state ("full") targets
  give the exact full-vocabulary loss the official code computes (ssb_train.py)."""
  b, t, d, v, k = 2, 5, 6, 40, 4
  w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  s_h = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  t_h = jnp.asarray(rng.normal(size=(b, t, d)) * 1.5, jnp.float32)
  mask = np.ones((b, t), bool)
  proj = lambda x: x @ w
  teacher, student = np.asarray(proj(t_h), np.float64), np.asarray(proj(s_h), np.float64)
  full = ssb.ssb_loss(s_h, proj, mask, teacher_hidden=t_h, chunk_size=2)
  np.testing.assert_allclose(full, _np_kl_t2(teacher, student, mask), rtol=1e-4)
  values, ids, rest = ssb.teacher_targets(proj(t_h), top_k=k, temperature=2.0)
  bucket = ssb.ssb_loss(s_h, proj, mask, values, ids, rest, chunk_size=2)
  np.testing.assert_allclose(bucket, 4.0 * _np_bucket_kl(teacher, student, k, 2.0).mean(),
                             rtol=1e-4)
  renorm = ssb.ssb_loss(s_h, proj, mask, values, ids, chunk_size=2)
  # The bucketed KL lower-bounds the full one; dropping the tail mass is further off here.
  assert float(bucket) <= float(full) + 1e-6
  assert abs(float(renorm) - float(full)) > abs(float(bucket) - float(full))


def test_align_replies_puts_reply_at_same_positions():
  batch = ssb.align_replies([[9, 9, 9], [8]], [[1, 2], [3, 4, 5]], reply_start=3, width=7)
  np.testing.assert_array_equal(batch["tokens"], [[9, 9, 9, 1, 2, 0, 0], [0, 0, 8, 3, 4, 5, 0]])
  np.testing.assert_array_equal(batch["reply_mask"][:, 3], True)
  np.testing.assert_array_equal(batch["reply_mask"].sum(1), [2, 3])
  np.testing.assert_array_equal(batch["attention_mask"].sum(1), [5, 4])
  with pytest.raises(ValueError, match="reply_start"):
    ssb.align_replies([[1, 2, 3, 4]], [[1]], reply_start=3, width=7)


def _np_kl_t2(t, s, mask, temp=2.0):
  def lsm(z):
    z = z / temp
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  lt, ls = lsm(t), lsm(s)
  return temp**2 * (np.exp(lt) * (lt - ls)).sum(-1)[mask].mean()


def test_ssb_loss_reference_and_ignores_prompt_tokens(rng):
  b, t, d, v = 2, 8, 6, 20
  hidden = rng.normal(size=(b, t, d))
  w = rng.normal(size=(d, v))
  teacher = rng.normal(size=(b, t, v)) * 3
  reply = np.zeros((b, t), bool)
  reply[:, 4:] = True
  t_logits, t_ids, t_rest = ssb.teacher_targets(jnp.asarray(teacher, jnp.float32))  # full V
  assert np.all(np.isneginf(np.asarray(t_rest)))  # no tail
  loss_fn = jax.jit(lambda h: ssb.ssb_loss(h, lambda x: x @ jnp.asarray(w, jnp.float32), reply,
                                           t_logits, t_ids, chunk_size=3))
  loss = loss_fn(jnp.asarray(hidden, jnp.float32))
  np.testing.assert_allclose(loss, _np_kl_t2(teacher, hidden @ w, reply), rtol=1e-4)
  changed_prompt = hidden.copy()
  changed_prompt[:, :4] = rng.normal(size=(b, 4, d)) * 10
  np.testing.assert_allclose(loss_fn(jnp.asarray(changed_prompt, jnp.float32)), loss, rtol=1e-6)
  changed_reply = hidden.copy()
  changed_reply[:, 5] += 1.0
  assert abs(float(loss_fn(jnp.asarray(changed_reply, jnp.float32))) - float(loss)) > 1e-3
  # Top-k targets: the k largest teacher logits, exact KL over the truncated teacher.
  k_logits, k_ids, _ = ssb.teacher_targets(jnp.asarray(teacher, jnp.float32), top_k=4)
  np.testing.assert_allclose(k_logits, -np.sort(-teacher, -1)[..., :4], rtol=1e-6)


def test_lora_training_updates_only_adapters_and_checkpoints(tmp_path):
  cfg = decoder_lm.LMConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1)
  teacher = decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(1))
  student = ssb.add_lora(decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0)), 4, rngs=nnx.Rngs(2))
  teacher_batch = ssb.align_replies([[5, 6, 7, 8], [9, 10, 11]], [[3, 4, 5], [6, 7]], 4, 8)
  student_batch = ssb.align_replies([[5, 6], [9]], [[3, 4, 5], [6, 7]], 4, 8)
  t_logits, t_ids, _ = ssb.model_teacher_targets(
      teacher, {k: jnp.asarray(v) for k, v in teacher_batch.items()}, top_k=8)
  batch = {k: jnp.asarray(v) for k, v in student_batch.items()}
  batch.update(teacher_logits=t_logits, teacher_ids=t_ids)
  base = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))  # LoRAParam subclasses Param
  base_before = jax.tree.map(np.array, nnx.state(student, base))
  lora_before = jax.tree.map(np.array, nnx.state(student, nnx.LoRAParam))
  optimizer = ssb.lora_optimizer(student, 1e-2)
  losses = [float(ssb.lora_train_step(student, optimizer, batch)) for _ in range(3)]
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, base_before,
               jax.tree.map(np.array, nnx.state(student, base)))
  lora_after = nnx.state(student, nnx.LoRAParam)
  assert any(np.abs(np.asarray(a) - b).max() > 0 for a, b in
             zip(jax.tree.leaves(lora_after), jax.tree.leaves(lora_before)))
  # Only the adapters are checkpointed (read back raw, without a target tree), and they
  # restore exactly into a fresh wrapped model.
  ssb.save_lora(str(tmp_path), student, 3)
  stored = ocp.StandardCheckpointer().restore(tmp_path / "3" / "state")
  stored_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(stored)]
  assert stored_paths and all(p.endswith(("['lora_a']", "['lora_b']")) for p in stored_paths)
  assert len(stored_paths) == len(jax.tree.leaves(lora_after))
  fresh = ssb.add_lora(decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0)), 4, rngs=nnx.Rngs(7))
  assert ssb.restore_lora(str(tmp_path), fresh) == 3
  jax.tree.map(np.testing.assert_array_equal, nnx.state(fresh, nnx.LoRAParam), lora_after)
  tokens = jnp.asarray(student_batch["tokens"])
  np.testing.assert_array_equal(fresh(tokens).logits, student(tokens).logits)
  with pytest.raises(ValueError, match="add_lora"):
    ssb.save_lora(str(tmp_path / "x"), teacher, 0)


def test_teacher_targets_chunked_equal_full_logits(rng):
  cfg = decoder_lm.LMConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1)
  model = decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(1))
  batch = {k: jnp.asarray(v) for k, v in
           ssb.align_replies([[5, 6, 7], [9]], [[3, 4, 5, 6], [6, 7]], 3, 9).items()}
  logits = model(batch["tokens"], attention_mask=batch["attention_mask"]).logits
  for top_k in (5, None):
    values, ids, rest = ssb.model_teacher_targets(model, batch, top_k, chunk_size=2)
    np.testing.assert_allclose(  # the rest bucket is the exact tail mass at T = 2
        np.exp(rest[:, 1:]), 1 - np.sum(np.asarray(jax.nn.softmax(logits[:, :-1] / 2.0))
                                         * np.asarray(jax.nn.one_hot(ids[:, 1:], cfg.vocab_size)
                                                      ).sum(-2), -1), atol=1e-5)
    k = top_k or cfg.vocab_size
    assert values.shape == (2, 9, k) and ids.dtype == jnp.int32
    want_values, want_ids = jax.lax.top_k(logits[:, :-1], k)  # index t scores token t
    np.testing.assert_allclose(values[:, 1:], want_values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ids[:, 1:], want_ids)


@pytest.mark.slow
def test_ssb_experiment_runs(tmp_path):
  """End-to-end demo (shrunk): curation, hinted teacher, LoRA distillation, evaluation."""
  import os
  if not os.path.exists("experiments/assets/tiny_reasoner/config.json"):
    pytest.skip("tiny reasoner checkpoint not trained yet")
  from experiments import ssb as experiment
  from experiments.configs import ssb as ssb_config
  config = ssb_config.get_config()
  config.update(init_dir="experiments/assets/tiny_reasoner", out_dir=str(tmp_path),
                num_questions=32, train_steps=2, batch_size=4, num_eval_problems=4, eval_k=2,
                grpo_results=str(tmp_path / "none.json"))
  results = experiment.run(config)
  assert results["data"]["teacher_solutions_kept"] > 0
  assert (tmp_path / "lora").exists()
