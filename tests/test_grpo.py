"""GRPO pieces against float64 NumPy references written from the formulas (arXiv 2402.03300)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab import rl
from logitlab.models import decoder_lm


def _np_advantages(rewards, g, scale, eps=1e-6):
  r = np.asarray(rewards, np.float64).reshape(-1, g)
  c = r - r.mean(1, keepdims=True)
  if scale == "group":
    c = c / (r.std(1, keepdims=True) + eps)
  elif scale == "batch":
    c = c / (np.asarray(rewards, np.float64).std() + eps)
  return c.reshape(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_zero_mean_per_group_and_match_reference(scale, rng):
  rewards = rng.integers(0, 2, size=24).astype(np.float32) + rng.normal(size=24) * 0.1
  adv = rl.group_advantages(jnp.asarray(rewards), 4, scale=scale)
  np.testing.assert_allclose(np.asarray(adv).reshape(6, 4).mean(1), 0.0, atol=1e-5)
  np.testing.assert_allclose(adv, _np_advantages(rewards, 4, scale), rtol=1e-4, atol=1e-5)


def test_advantages_constant_group_is_zero_and_bad_size_raises():
  adv = rl.group_advantages(jnp.array([1., 1., 1., 0., 1., 0.], jnp.bfloat16), 3)
  assert adv.dtype == jnp.float32
  np.testing.assert_allclose(adv[:3], 0.0)
  assert adv[4] > 0 > adv[3]
  with pytest.raises(ValueError, match="group_size"):
    rl.group_advantages(jnp.ones(5), 2)


def _np_ppo(logp, old, adv, el, eh, c):
  ratio = np.exp(logp - old)
  loss = np.maximum(-ratio * adv, -np.clip(ratio, 1 - el, 1 + eh) * adv)
  if c is not None:
    loss = np.where(adv < 0, np.minimum(loss, -c * adv), loss)
  return loss


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_ppo_loss_matches_reference_and_gradient_zero_when_clipped(dual_clip, rng):
  old = rng.normal(size=(4, 64)) - 2.0
  logp = old + rng.normal(size=(4, 64)) * 0.8  # ratios well outside [0.8, 1.28]
  adv = np.array([1.5, -2.0, 0.7, -0.3])
  loss, clipped = rl.ppo_clipped_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                      jnp.asarray(adv, jnp.float32), eps_low=0.2, eps_high=0.28,
                                      dual_clip=dual_clip)
  ref = _np_ppo(logp, old, adv[:, None], 0.2, 0.28, dual_clip)
  np.testing.assert_allclose(loss, ref, rtol=1e-4, atol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(rl.ppo_clipped_loss(
      lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32), eps_low=0.2,
      eps_high=0.28, dual_clip=dual_clip)[0]))(jnp.asarray(logp, jnp.float32))
  clipped = np.asarray(clipped)
  assert 0 < clipped.mean() < 1
  np.testing.assert_array_equal(np.asarray(grad)[clipped], 0.0)
  # Unclipped tokens get the REINFORCE-style gradient -rho * A.
  expected = -np.exp(logp - old) * adv[:, None]
  np.testing.assert_allclose(np.asarray(grad)[~clipped], expected[~clipped], rtol=1e-4)
  if dual_clip is not None:  # dual clip binds somewhere for negative advantages
    ratio = np.exp(logp - old)
    assert np.any((adv[:, None] < 0) & (ratio > dual_clip))


def test_k3_kl_matches_formula_and_is_nonnegative(rng):
  lp, ref = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
  got = rl.k3_kl(jnp.asarray(lp, jnp.float32), jnp.asarray(ref, jnp.float32))
  d = ref - lp
  np.testing.assert_allclose(got, np.exp(d) - d - 1, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(got) >= 0)


def test_aggregation_modes(rng):
  x = rng.normal(size=(2, 5))
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
  xj, mj = jnp.asarray(x, jnp.float32), jnp.asarray(mask)
  np.testing.assert_allclose(rl.aggregate(xj, mj, "token_mean"), x[mask].mean(), rtol=1e-5)
  seq = np.mean([x[0, :2].mean(), x[1, :4].mean()])
  np.testing.assert_allclose(rl.aggregate(xj, mj, "sequence_mean"), seq, rtol=1e-5)
  np.testing.assert_allclose(rl.aggregate(xj, mj, "dr_grpo", max_len=8), x[mask].sum() / 16,
                             rtol=1e-5)


def test_grpo_loss_masks_and_kl(rng):
  logp = jnp.asarray(rng.normal(size=(4, 6)) - 1, jnp.float32)
  mask = jnp.asarray(rng.random((4, 6)) > 0.3)
  adv = rl.group_advantages(jnp.array([1., 0., 0., 1.]), 2)
  cfg = rl.GRPOLossConfig(kl_coef=0.1)
  loss, metrics = rl.grpo_loss(logp, logp, adv, mask, logp + 0.5, cfg)
  # At ratio 1 the surrogate is -A per token; k3 with d = 0.5 is exp(.5) - 1.5.
  per_tok = -np.broadcast_to(np.asarray(adv)[:, None], (4, 6))
  m = np.asarray(mask)
  np.testing.assert_allclose(metrics["pg_loss"], per_tok[m].mean(), atol=1e-6)
  np.testing.assert_allclose(metrics["kl"], np.exp(0.5) - 1.5, rtol=1e-5)
  np.testing.assert_allclose(loss, per_tok[m].mean() + 0.1 * (np.exp(0.5) - 1.5), rtol=1e-5)
  # Masked positions do not influence the loss.
  poisoned = jnp.where(mask, logp, 1e4)
  loss2, _ = rl.grpo_loss(poisoned, poisoned, adv, mask, poisoned + 0.5, cfg)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_chunked_token_logprobs_equal_full_and_gradients(rng):
  b, t, d, v = 2, 13, 8, 50
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)

  def chunked(w, h):
    return rl.token_logprobs_from_hidden(h, targets, lambda x: x @ w, chunk_size=4)

  def full(w, h):
    lp = jax.nn.log_softmax(h @ w)
    return jnp.take_along_axis(lp, targets[..., None], -1)[..., 0]

  h64, w64 = np.asarray(hidden, np.float64), np.asarray(w, np.float64)
  z = h64 @ w64
  ref = z - z.max(-1, keepdims=True)
  ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
  ref = np.take_along_axis(ref, np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(chunked(w, hidden), ref, rtol=1e-4, atol=1e-4)
  gc = jax.grad(lambda w, h: jnp.sum(jnp.sin(chunked(w, h))), argnums=(0, 1))(w, hidden)
  gf = jax.grad(lambda w, h: jnp.sum(jnp.sin(full(w, h))), argnums=(0, 1))(w, hidden)
  for a, b_ in zip(gc, gf):
    np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-4)


def test_reward_functions_interface():
  from logitlab.rl import rewards
  completions = ["1+2=3.</think>answer: 3", "1+2=4.</think>answer: 4", "1+2=3. answer: 3"]
  prompts = ["Q"] * 3
  kw = dict(answers=[3, 3, 3], unused_metadata=[0, 1, 2])  # unknown keywords are ignored
  np.testing.assert_array_equal(rewards.correctness(prompts, completions, **kw), [1, 0, 1])
  np.testing.assert_array_equal(rewards.think_format(prompts, completions, **kw), [1, 1, 0])
  both = rewards.combine([rewards.correctness, rewards.think_format], [1.0, 0.5])
  got = both(prompts, completions, **kw)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, [1.5, 0.5, 1.0])
  with pytest.raises(ValueError, match="weights"):
    rewards.combine([rewards.correctness], [1.0, 2.0])


@pytest.mark.slow
def test_sequence_logprobs_never_materialize_full_logits():
  """XLA temporaries of the compiled value+grad: the chunked log-probs of a ``DecoderLM``
  stay below half of one ``[B, T, V]`` float32 logits buffer (the model's own full logits
  are dead code and dropped), while the naive full-logits version needs several (so the
  measurement does see such buffers). Compiles only (abstract shapes); ~30 s on CPU."""
  b, t, v = 2, 128, 16384
  cfg = decoder_lm.LMConfig(vocab_size=v, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1)
  graphdef, params = nnx.split(decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0)))
  model = lambda p: nnx.merge(graphdef, p)

  def chunked(p, tok, m):
    return jnp.sum(rl.sequence_logprobs(model(p), tok, m, chunk_size=8))

  def naive(p, tok, m):
    logits = model(p)(tok, attention_mask=m).logits
    return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), tok[..., None], -1))

  args = (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
          jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.bool_))
  temp = lambda f: jax.jit(jax.value_and_grad(f)).lower(*args).compile(
      ).memory_analysis().temp_size_in_bytes
  full_logits = b * t * v * 4
  assert temp(naive) > 2 * full_logits
  assert temp(chunked) < full_logits / 2


_TINY_REASONER = "experiments/assets/tiny_reasoner"


@pytest.mark.slow
def test_grpo_vs_soft_grpo_experiment_runs(tmp_path):
  """End-to-end demo (shrunk): SFT -> GRPO and SofT-GRPO on the tiny reasoner."""
  import os
  if not os.path.exists(os.path.join(_TINY_REASONER, "config.json")):
    pytest.skip("tiny reasoner checkpoint not trained yet")
  from experiments import grpo as experiment
  from experiments.configs import grpo as grpo_config
  config = grpo_config.get_config()
  config.update(init_dir=_TINY_REASONER, out_dir=str(tmp_path), num_steps=3,
                num_eval_problems=8, eval_k=2)
  results = experiment.run(config)
  for method in ("grpo", "soft_grpo"):
    assert 0.0 <= results[method]["discrete_eval"]["pass@1"] <= 1.0
    assert len(results["history"][method]) == 3
  assert (tmp_path / "reward.png").exists()
