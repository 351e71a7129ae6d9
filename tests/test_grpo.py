"""GRPO pieces against float64 NumPy references written from the formulas (arXiv 2402.03300)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab import rl
from logitlab.models import decoder_lm


def _np_nanstd(x, axis=None, ddof=1):
  """TRL ``trl/trainer/utils.py`` ``nanstd`` (lines 857-880 at f2cd577): NaN-ignoring std with
  Bessel's correction, NaN when fewer than 2 values (ddof 0: population std)."""
  mean = np.nanmean(x, axis=axis, keepdims=True)
  var = np.nanmean((x - mean) ** 2, axis=axis, keepdims=True)
  count = np.sum(~np.isnan(x), axis=axis, keepdims=True)
  if ddof:
    with np.errstate(divide="ignore", invalid="ignore"):
      var = np.where(count > 1, var * count / (count - 1), np.nan)
  return np.sqrt(var)


def _np_advantages(rewards, g, scale, eps=1e-6, ddof=1):
  """NumPy port of TRL ``GRPOTrainer._generate_and_score_completions`` (grpo_trainer.py lines
  2676-2723 at f2cd577, ``sum_then_normalize``): unscorable (NaN) rewards are left out of the
  nan-aware group mean / std and get advantage 0 (``nan_to_num``). ``ddof=1`` is also verl
  (core_algos.py ``torch.std``). TRL's eps is 1e-4, verl's 1e-6 (ours)."""
  r = np.asarray(rewards, np.float64)
  grouped = r.reshape(-1, g)
  with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
    __import__("warnings").simplefilter("ignore")
    mean = np.repeat(np.nanmean(grouped, axis=1), g)
    if scale == "batch":
      std = np.full_like(r, _np_nanstd(r, ddof=ddof).item())
    else:
      std = np.repeat(_np_nanstd(grouped, axis=1, ddof=ddof)[:, 0], g)
    adv = r - mean
    if scale != "none":
      adv = adv / (std + eps)
    if scale == "none":  # TRL: std only for logging; a group of <2 scorable is still 0 here
      adv = np.where(np.isnan(std), np.nan, adv)
  return np.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl_port_with_unscorable_rewards(scale, ddof, rng):
  """NaN rewards are excluded from the statistics and get advantage 0 (TRL); before, a single
  NaN reward made the whole group's advantages (and then every parameter) NaN."""
  rewards = rng.integers(0, 2, size=24).astype(np.float32) + rng.normal(size=24) * 0.1
  rewards[[1, 6, 7, 10]] = np.nan  # group 1 keeps 2 scorable, group 2 keeps 3
  rewards[[20, 21, 22]] = np.nan  # group 5 keeps a single scorable completion
  adv = np.asarray(rl.group_advantages(jnp.asarray(rewards), 4, scale=scale, ddof=ddof))
  assert np.all(np.isfinite(adv))
  np.testing.assert_array_equal(adv[np.isnan(rewards)], 0.0)
  expected = _np_advantages(rewards, 4, scale, ddof=ddof)
  if ddof == 0:  # the port's "lone scorable" NaN rule is for ddof 1; with ddof 0 it is 0 anyway
    expected[20:24] = 0.0
  np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-5)
  clean = np.nan_to_num(rewards, nan=0.5)
  adv = np.asarray(rl.group_advantages(jnp.asarray(clean), 4, scale=scale, ddof=ddof))
  np.testing.assert_allclose(adv.reshape(6, 4).mean(1), 0.0, atol=1e-5)
  np.testing.assert_allclose(adv, _np_advantages(clean, 4, scale, ddof=ddof), rtol=1e-4,
                             atol=1e-5)


def test_unbiased_std_is_the_default_ratio_at_g8(rng):
  rewards = jnp.asarray(rng.integers(0, 2, size=16).astype(np.float32) + 0.01 * np.arange(16))
  ratio = rl.group_advantages(rewards, 8, ddof=0) / rl.group_advantages(rewards, 8)
  np.testing.assert_allclose(ratio, np.sqrt(8 / 7), rtol=1e-4)  # 1.069


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


def test_k3_kl_clamp_as_verl(rng):
  """verl-0.4.x core_algos.py:598 (SofT-GRPO repo): ``torch.clamp(kld, min=-10, max=10)``."""
  lp = jnp.asarray([[0.0, -20.0, -1.0]], jnp.float32)
  ref = jnp.asarray([[0.0, -5.0, -1.5]], jnp.float32)
  d = np.asarray(ref - lp)
  np.testing.assert_allclose(rl.k3_kl(lp, ref, clamp=10.0), np.clip(np.expm1(d) - d, -10, 10),
                             rtol=1e-5)
  assert float(rl.k3_kl(lp, ref)[0, 1]) > 1e6  # no clamp by default in k3_kl itself
  assert rl.GRPOLossConfig().kl_clamp == 10.0  # the SofT-GRPO (verl) reference default


def test_gspo_sequence_ratio_matches_trl_port(rng):
  """TRL grpo_trainer.py lines 3055-3060 / 3083-3091 / 3125 at f2cd577 with
  ``importance_sampling_level="sequence"`` and ``loss_type="grpo"`` (sequence mean)."""
  b, t = 4, 6
  old = rng.normal(size=(b, t)) - 2
  logp = old + rng.normal(size=(b, t)) * 0.3
  mask = np.ones((b, t), bool)
  mask[0, 4:] = mask[2, 2:] = False
  adv = np.array([1.0, -0.5, 0.3, -1.2])
  lw = (((logp - old) * mask).sum(-1) / np.maximum(mask.sum(-1), 1))[:, None]
  c1 = np.exp(lw)
  per_tok = -np.minimum(c1 * adv[:, None], np.clip(c1, 0.8, 1.2) * adv[:, None])
  per_tok = np.broadcast_to(per_tok, (b, t))
  expected = ((per_tok * mask).sum(-1) / mask.sum(-1)).mean()
  cfg = rl.GRPOLossConfig(importance_sampling="sequence", aggregation="sequence_mean",
                          dual_clip=None, kl_coef=0.0)
  loss, _ = rl.grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                         jnp.asarray(adv, jnp.float32), jnp.asarray(mask), None, cfg)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # The token-level ratio gives a different objective on the same data.
  token, _ = rl.grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                          jnp.asarray(adv, jnp.float32), jnp.asarray(mask), None,
                          rl.GRPOLossConfig(aggregation="sequence_mean", dual_clip=None))
  assert abs(float(token) - expected) > 1e-4


def test_loss_validation_rejects_bad_clip_and_masks():
  """A [B] mask with B == T used to broadcast along T silently; eps_low < 0 is rejected."""
  logp = jnp.zeros((4, 4))
  adv = jnp.zeros(4)
  with pytest.raises(ValueError, match="`mask`"):
    rl.grpo_loss(logp, logp, adv, jnp.ones(4, bool))
  with pytest.raises(ValueError, match="`eps_low`"):
    rl.GRPOLossConfig(eps_low=-0.1)
  with pytest.raises(ValueError, match="`eps_low`"):
    rl.ppo_clipped_loss(logp, logp, adv, eps_low=-0.1)
  with pytest.raises(ValueError, match="`advantages`"):
    rl.ppo_clipped_loss(logp, logp, jnp.zeros(3))
  with pytest.raises(ValueError, match="`importance_sampling`"):
    rl.GRPOLossConfig(importance_sampling="seq")


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
