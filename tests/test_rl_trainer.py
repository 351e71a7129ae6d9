"""The RL trainer around the GRPO objective: rewards, normalizer, minibatches, LoRA, resume.

References: TRL ``GRPOTrainer`` (huggingface/trl f2cd577, trl/trainer/grpo_trainer.py) and
the SofT-GRPO verl scripts (zz1358m/SofT-GRPO-master).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab import rl
from logitlab import ssb
from logitlab.models import decoder_lm
from logitlab.rl import trainer
from logitlab.tasks import arithmetic

_PROMPTS = jnp.array([[5, 6, 2], [7, 2, 0], [8, 9, 4], [6, 6, 0]], jnp.int32)
_LENGTHS = jnp.array([3, 2, 3, 2])


def _model(seed=0, lora=False):
  cfg = decoder_lm.LMConfig(vocab_size=arithmetic.build_tokenizer().get_vocab_size(),
                            hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                            num_kv_heads=1)
  model = decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(seed))
  return ssb.add_lora(model, 4, rngs=nnx.Rngs(1)) if lora else model


def _step(model, opt, ref, cfg, key, reward_fn):
  return trainer.train_step(model, opt, ref, _PROMPTS, _LENGTHS, list("abcd"), reward_fn, {}, key,
                            cfg, decode=lambda t, n: [str(x) for x in t],
                            end_think_id=arithmetic.END_THINK_ID,
                            stop_tokens=(arithmetic.EOS_ID,))


def _nan_rewards(prompts, completions, **kw):
  r = (np.arange(len(completions)) % 3).astype(np.float32)
  r[::5] = np.nan  # unscorable completions
  return r


def test_dr_grpo_normalizer_is_batch_times_max_completion_length():
  """TRL grpo_trainer.py:3135: ``(per_token_loss * mask).sum() / (B * max_completion_length)``;
  the trainer's sequences also hold the prompt, so T alone would depend on the prompt width."""
  cfg = trainer.RLConfig(max_new_tokens=7, loss=rl.GRPOLossConfig(aggregation="dr_grpo"))
  assert cfg.loss_config.max_len == 7
  x = jnp.ones((2, 12))
  mask = jnp.zeros((2, 12), bool).at[:, 5:].set(True)
  np.testing.assert_allclose(rl.aggregate(x, mask, "dr_grpo", max_len=cfg.loss_config.max_len),
                             14 / (2 * 7))


def test_config_and_reward_validation():
  with pytest.raises(ValueError, match="`config.group_size`"):
    _step(None, None, None, trainer.RLConfig(group_size=1), None, None)
  with pytest.raises(ValueError, match="`top_p`"):
    trainer.RLConfig(top_p=1.5)
  with pytest.raises(ValueError, match="one reward per completion"):
    trainer.check_rewards(np.zeros(3), 4)
  with pytest.raises(TypeError, match="real numbers"):
    trainer.check_rewards(np.array(["a"] * 4), 4)
  with pytest.raises(ValueError, match="infinite"):
    trainer.check_rewards(np.array([0, 1, np.inf, 0.5]), 4)
  assert np.isnan(trainer.check_rewards(np.array([0, np.nan, 1, 1]), 4)[1])


def test_lora_minibatches_nan_rewards_and_exact_resume(tmp_path, key):
  """LoRA-only RL with 2 minibatches, top-k rollouts and unscorable (NaN) rewards: only the
  adapters move, everything stays finite (before: NaN reward -> NaN parameters, base weights
  trained), and save/restore after step 1 resumes step 2 bit-exactly."""
  cfg = trainer.RLConfig(group_size=2, max_new_tokens=4, learning_rate=1e-2, chunk_size=4,
                         num_minibatches=2, top_k=8, lora=True,
                         mask_truncated_completions=True)
  model, ref = _model(lora=True), _model()
  opt = trainer.make_optimizer(model, cfg)
  base_before = jax.tree.map(np.array, nnx.state(model, nnx.All(nnx.Param,
                                                                nnx.Not(nnx.LoRAParam))))
  lora_before = jax.tree.map(np.array, nnx.state(model, nnx.LoRAParam))
  k1, k2 = jax.random.split(key)
  m1 = _step(model, opt, ref, cfg, k1, _nan_rewards)
  assert m1["unscorable_frac"] == pytest.approx(2 / 8)
  for name in ("loss", "kl", "entropy", "reward_std", "clip_frac", "rollout_tokens_per_s"):
    assert np.isfinite(m1[name]), name
  assert m1["generate_s"] > 0 and m1["update_s"] > 0
  trainer.save_checkpoint(str(tmp_path), 1, model, opt, cfg, k2)
  _step(model, opt, ref, cfg, k2, _nan_rewards)
  after = nnx.state(model)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(after))
  base_after = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
  for a, b in zip(jax.tree.leaves(base_after), jax.tree.leaves(base_before)):
    np.testing.assert_array_equal(a, b)
  moved = [np.abs(np.asarray(a) - b).max() for a, b in
           zip(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)), jax.tree.leaves(lora_before))]
  assert max(moved) > 0
  # Resume: a fresh model + optimizer restored at step 1 reproduces step 2 exactly.
  resumed = _model(seed=3, lora=True)
  nnx.update(resumed, nnx.state(_model(lora=True), nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
  opt2 = trainer.make_optimizer(resumed, cfg)
  step, k_restored = trainer.restore_checkpoint(str(tmp_path), resumed, opt2, cfg, key)
  assert step == 1
  np.testing.assert_array_equal(jax.random.key_data(k_restored), jax.random.key_data(k2))
  _step(resumed, opt2, ref, cfg, k_restored, _nan_rewards)
  for a, b in zip(jax.tree.leaves(nnx.state(resumed)), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  # Only the adapters are in the checkpoint.
  import orbax.checkpoint as ocp
  raw = ocp.StandardCheckpointer().restore(tmp_path / "1" / "state")
  names = {p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(raw["params"])[0]}
  assert names == {"lora_a", "lora_b"}, names


def test_truncated_completions_as_trl():
  """TRL grpo_trainer.py:2419: truncated = the completion's last id is no stop token."""
  tokens = np.array([[4, 5, 1], [4, 1, 0], [4, 5, 6]])
  lengths = np.array([3, 2, 3])
  np.testing.assert_array_equal(trainer._truncated(tokens, lengths, 3, (1,)), [False, False, True])


def test_paper_config_matches_softgrpo_scripts():
  """SofT-GRPO-deepscaler-8k-*.sh: train_batch_size 64, ppo_mini_batch_size 32 (2 updates),
  val_kwargs T 0.6 / top-p 0.95 / top-k 5, after_thinking_top_k 5 / top_p 0.95."""
  from experiments import grpo
  from experiments.configs import grpo_qwen
  c = grpo_qwen.get_config()
  assert (c.prompts_per_step, c.num_minibatches) == (64, 2)
  assert (c.eval_temperature, c.eval_top_k, c.eval_top_p) == (0.6, 5, 0.95)
  cfg = grpo.rl_config(c, soft=True)
  assert (cfg.after_think_top_k, cfg.after_think_top_p, cfg.detach_soft_inputs) == (5, 0.95, True)
  assert cfg.advantage_ddof == 1 and cfg.loss.kl_clamp == 10.0
