"""SofT-GRPO soft-token log-prob (arXiv 2511.06411) vs an independent float64 computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab import sampling
from logitlab.models import decoder_lm
from logitlab.rl import soft_grpo
from logitlab.rl import trainer
from logitlab.tasks import arithmetic


def _np_soft_logprob(logits, ids, gp, temp=1.0):
  z = logits / temp
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  q = np.take_along_axis(p, ids, -1)
  lq = np.log(q / q.sum(-1, keepdims=True) + 1e-6)
  zz = np.clip(gp - lq, -1.5, 3.0)
  ll = -zz - np.exp(-zz)
  m = lq > -3
  return (ll * m).sum(-1) / np.maximum(m.sum(-1), 1)


def _inputs(rng, shape=(3, 4), v=30, k=5, scale=2.0):
  logits = rng.normal(size=shape + (v,)) * scale
  ids = np.stack([rng.choice(v, k, replace=False) for _ in range(np.prod(shape))]).reshape(shape + (k,))
  gp = np.log(rng.dirichlet(np.ones(k), size=shape) + 1e-6) + np.clip(rng.gumbel(size=shape + (k,)), -1.5, 3)
  return logits, ids, gp


def test_soft_logprob_matches_float64_reference(rng):
  logits, ids, gp = _inputs(rng)
  for temp in (1.0, 0.7):
    got = soft_grpo.soft_token_logprob(jnp.asarray(logits, jnp.float32), jnp.asarray(ids),
                                       jnp.asarray(gp, jnp.float32), temperature=temp)
    np.testing.assert_allclose(got, _np_soft_logprob(logits, ids, gp, temp), rtol=1e-4, atol=1e-5)
  # Stable at |logits| = 1e4 and with bf16 inputs.
  big = soft_grpo.soft_token_logprob(jnp.asarray(logits * 5e3, jnp.bfloat16), jnp.asarray(ids),
                                     jnp.asarray(gp, jnp.float32))
  assert big.dtype == jnp.float32 and np.all(np.isfinite(big))


def test_gradient_flows_only_through_model_logprobs(rng):
  logits, ids, gp = _inputs(rng, scale=0.5)
  f = lambda lg, g: jnp.sum(soft_grpo.soft_token_logprob(lg, jnp.asarray(ids), g))
  g_logits, g_gp = jax.grad(f, argnums=(0, 1))(jnp.asarray(logits, jnp.float32),
                                              jnp.asarray(gp, jnp.float32))
  np.testing.assert_array_equal(g_gp, 0.0)
  assert np.abs(np.asarray(g_logits)).max() > 1e-3
  # Only the stored components' logits can matter, up to the softmax shift of all others:
  # the gradient w.r.t. a non-stored logit is zero (q / sum q cancels the partition function).
  non_stored = np.ones(logits.shape, bool)
  np.put_along_axis(non_stored, ids, False, -1)
  np.testing.assert_allclose(np.asarray(g_logits)[non_stored], 0.0, atol=1e-6)
  # Finite differences of the float64 reference along a random direction.
  direction = rng.normal(size=logits.shape)
  eps = 1e-4
  fd = (_np_soft_logprob(logits + eps * direction, ids, gp).sum()
        - _np_soft_logprob(logits - eps * direction, ids, gp).sum()) / (2 * eps)
  np.testing.assert_allclose(np.sum(np.asarray(g_logits) * direction), fd, rtol=2e-3, atol=1e-4)


def test_mixed_positions_and_chunked_from_hidden(rng):
  b, t, d, v, k = 2, 7, 5, 30, 5
  hidden = rng.normal(size=(b, t, d))
  w = rng.normal(size=(d, v))
  _, ids, gp = _inputs(rng, (b, t), v, k)
  tokens = rng.integers(0, v, size=(b, t))
  soft = rng.random((b, t)) > 0.5
  got = soft_grpo.mixed_logprobs_from_hidden(
      jnp.asarray(hidden, jnp.float32), jnp.asarray(tokens), jnp.asarray(ids),
      jnp.asarray(gp, jnp.float32), jnp.asarray(soft), lambda h: h @ jnp.asarray(w, jnp.float32),
      chunk_size=3)
  logits = hidden @ w
  ls = logits - logits.max(-1, keepdims=True)
  ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
  discrete = np.take_along_axis(ls, tokens[..., None], -1)[..., 0]
  ref = np.where(soft, _np_soft_logprob(logits, ids, gp), discrete)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_rollout_policy_stores_ids_and_perturbed_logprobs(key):
  cfg = decoder_lm.LMConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1)
  model = decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0))
  policy = soft_grpo.SoftGRPOPolicy(end_think_id=3)
  state = soft_grpo.SoftGRPOState(thinking=jnp.ones((2,), bool),
                                  embedding_matrix=model.embedding_matrix())
  out = sampling.generate(model, jnp.ones((2, 3), jnp.int32), max_new_tokens=6, key=key,
                          policy=policy, policy_state=state)
  ids, gp, soft = out.extras["ids"], out.extras["perturbed"], out.extras["soft"]
  assert ids.shape == (2, 6, 5) and gp.shape == (2, 6, 5)
  # The visible token is the heaviest soft component, g' is sorted descending, and the
  # Gumbel part g' - log(w + 1e-6) respects the reference clamp [-1.5, 3] (w <= 1).
  np.testing.assert_array_equal(np.asarray(ids[..., 0])[np.asarray(soft)],
                                np.asarray(out.tokens)[np.asarray(soft)])
  assert np.all(np.diff(np.asarray(gp), axis=-1) <= 0)
  assert np.all(np.asarray(gp) <= 3.0 + 1e-5)
  # Recreated soft inputs match E[token] exactly when the weights collapse (discrete rows).
  embeds = soft_grpo.soft_input_embeddings(model.embedding_matrix(), out.tokens, ids, gp,
                                           jnp.zeros_like(soft))
  np.testing.assert_allclose(embeds, model.embed(out.tokens), rtol=1e-6)


@pytest.mark.parametrize("soft", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_trainer_step_smoke(soft, key):
  """One GRPO / SofT-GRPO step of the trainer on a tiny random LM: finite loss, KL 0 against
  an identical reference, only completion tokens counted, parameters move."""
  cfg = decoder_lm.LMConfig(vocab_size=arithmetic.build_tokenizer().get_vocab_size(),
                            hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                            num_kv_heads=1)
  model = decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0))
  ref = decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0))
  rl_cfg = trainer.RLConfig(group_size=2, max_new_tokens=5, soft=soft, learning_rate=1e-2,
                            chunk_size=4)
  optimizer = trainer.make_optimizer(model, rl_cfg)
  before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  reward_fn = lambda prompts, completions, **kw: np.arange(len(completions), dtype=np.float32)
  metrics = trainer.train_step(
      model, optimizer, ref, jnp.array([[5, 6, 2], [7, 2, 0]], jnp.int32), jnp.array([3, 2]),
      ["a", "b"], reward_fn, {}, key, rl_cfg,
      decode=lambda t, n: [str(x) for x in t], end_think_id=arithmetic.END_THINK_ID,
      stop_tokens=(arithmetic.EOS_ID,))
  assert np.isfinite(metrics["loss"]) and abs(metrics["kl"]) < 1e-6
  assert metrics["reward"] == 1.5
  moved = [np.abs(np.asarray(a) - b).max() for a, b in
           zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(before))]
  assert max(moved) > 0


def test_after_think_sampling_stays_in_official_top_k_top_p_support(key):
  """After </think> the reference samples from top-k 5 / top-p 0.95 renormalized
  (SofT-GRPO-deepscaler-8k-*.sh: ``after_thinking_top_k=5``, ``after_thinking_top_p=0.95``);
  before, the full softmax was used and many tokens fell outside that support."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(512, 40)), jnp.float32)  # flat: wide tail
  state = soft_grpo.SoftGRPOState(thinking=jnp.zeros((512,), bool),
                                  embedding_matrix=jnp.zeros((40, 4)))
  tokens, _, _, extras = soft_grpo.SoftGRPOPolicy(end_think_id=3)(logits, state, key)
  allowed = np.isfinite(np.asarray(sampling.filter_logits(logits, top_k=5, top_p=0.95)))
  assert np.all(allowed[np.arange(512), np.asarray(tokens)])
  assert not np.any(np.asarray(extras["soft"]))
  loose = soft_grpo.SoftGRPOPolicy(end_think_id=3, after_think_top_k=None, after_think_top_p=None)
  tokens = np.asarray(loose(logits, state, key)[0])
  assert np.mean(~allowed[np.arange(512), tokens]) > 0.5  # the old behaviour, now an option


def test_soft_inputs_are_detached_by_default(rng):
  """The reference detaches the re-created soft inputs (verl-0.4.x/verl/workers/actor/
  dp_actor.py:210 ``inputs_embeds=topk_embs.unsqueeze(0).detach()``)."""
  logits, ids, gp = _inputs(rng, shape=(1, 4), v=12)
  emb = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  tokens = jnp.asarray(ids[..., 0])
  soft = jnp.array([[True, True, False, True]])

  def total(e, detach):
    return jnp.sum(soft_grpo.soft_input_embeddings(e, tokens, jnp.asarray(ids), jnp.asarray(gp),
                                                   soft, detach=detach) ** 2)

  np.testing.assert_array_equal(jax.grad(total)(emb, True), 0.0)
  assert np.abs(np.asarray(jax.grad(total)(emb, False))).max() > 0
  assert trainer.RLConfig().detach_soft_inputs
