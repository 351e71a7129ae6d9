"""Tests for logitlab.soft_thinking against float64 NumPy references and tiny random LMs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab import sampling
from logitlab import soft_thinking as st
from logitlab.models import decoder_lm

VOCAB = 24


def _np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_soft_token(logits, temperature, top_k, top_p, min_p, max_topk):
  """float64 Soft Thinking recipe for one row: top-k -> top-p -> min-p -> max_topk."""
  p = _np_softmax(np.asarray(logits, np.float64) / temperature)
  order = np.argsort(-p, kind="stable")[:top_k]
  probs = p[order] / p[order].sum()
  keep = (np.cumsum(probs) - probs) < top_p
  keep &= probs >= min_p * probs[0]
  probs = np.where(keep, probs, 0.0)
  probs, ids = probs[:max_topk], order[:max_topk]
  return probs / probs.sum(), ids


def _tiny_lm(seed=0, layers=1):
  config = decoder_lm.LMConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                               num_layers=layers, num_heads=2, num_kv_heads=1)
  return decoder_lm.DecoderLM(config, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("top_p,min_p", [(1.0, 0.0), (0.8, 0.0), (0.95, 0.1)])
def test_soft_token_weights_match_reference_sorted_and_normalized(rng, top_p, min_p):
  logits = rng.normal(size=(5, VOCAB)).astype(np.float32) * 2.0
  weights, ids = st.soft_token_weights(logits, temperature=0.6, top_k=12, top_p=top_p,
                                       min_p=min_p, max_topk=6)
  assert weights.shape == ids.shape == (5, 6)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert np.all(np.diff(np.asarray(weights), axis=-1) <= 0)
  for row in range(5):
    want_w, want_ids = _reference_soft_token(logits[row], 0.6, 12, top_p, min_p, 6)
    np.testing.assert_allclose(weights[row], want_w, rtol=1e-5, atol=1e-7)
    kept = want_w > 0
    np.testing.assert_array_equal(np.asarray(ids[row])[kept], want_ids[kept])


def test_soft_token_weights_stable_at_1e4_and_bf16():
  logits = jnp.array([[1e4, 1e4 - 1.0, -1e4, 0.0]], jnp.float32)
  weights, ids = st.soft_token_weights(logits, temperature=1.0, top_k=4, top_p=1.0, max_topk=3)
  np.testing.assert_allclose(weights[0, :2], _np_softmax([0.0, -1.0]), rtol=1e-5)
  assert weights[0, 2] < 1e-30
  np.testing.assert_array_equal(ids[0, :2], [0, 1])
  half = jnp.array([[2.0, 1.0, -3.0, 0.0]], jnp.bfloat16)
  weights, ids = st.soft_token_weights(half, temperature=0.5, top_k=4, top_p=1.0, max_topk=4)
  assert weights.dtype == jnp.float32
  np.testing.assert_allclose(weights[0], _np_softmax([4.0, 2.0, 0.0, -6.0]), rtol=1e-5)
  np.testing.assert_array_equal(ids[0], [0, 1, 3, 2])


def test_gumbel_softmax_concentrates_as_tau_goes_to_zero(key):
  weights = jnp.array([0.5, 0.3, 0.2, 0.0])
  keys = jax.random.split(key, 2000)
  sample = jax.vmap(lambda k, t: st.gumbel_softmax_weights(k, weights, tau=t), (0, None))
  sharp, smooth = sample(keys, 0.02), sample(keys, 2.0)
  np.testing.assert_allclose(sharp.sum(-1), 1.0, rtol=1e-5)
  assert np.all(sharp[:, 3] == 0) and np.all(smooth[:, 3] == 0)
  assert np.mean(np.max(sharp, -1)) > 0.99
  assert np.mean(np.max(smooth, -1)) < 0.8
  # Gumbel-max: the argmax of the relaxed sample is distributed as Categorical(w).
  freq = np.bincount(np.argmax(sharp, -1), minlength=4) / len(keys)
  np.testing.assert_allclose(freq, weights, atol=4 * np.sqrt(0.25 / len(keys)))


def test_dirichlet_resample_mean_and_variance(key):
  probs = jnp.array([0.6, 0.25, 0.1, 0.05, 0.0])
  alpha, n = 4.0, 10000
  draws = jax.vmap(lambda k: st.dirichlet_resample(k, probs, alpha=alpha))(
      jax.random.split(key, n))
  draws = np.asarray(draws, np.float64)
  np.testing.assert_allclose(draws.sum(-1), 1.0, rtol=1e-5)
  assert np.all(draws[:, 4] == 0)
  p = np.asarray(probs, np.float64)
  variance = p * (1 - p) / (alpha + 1)
  np.testing.assert_allclose(draws.mean(0), p, atol=5 * np.sqrt(variance.max() / n))
  np.testing.assert_allclose(draws.var(0)[:4], variance[:4], rtol=0.1)


def test_cold_stop_triggers_exactly_after_patience_low_entropy_steps():
  cold_stop = st.ColdStop(threshold=0.1, patience=3)
  entropies = [0.01, 0.01, 0.5, 0.01, 0.01, 0.01, 0.01]
  count = cold_stop.init(())
  fired = []
  for h in entropies:
    count, stop = cold_stop.update(count, jnp.float32(h))
    fired.append(bool(stop))
  assert fired == [False, False, False, False, False, True, True]


def test_soft_embedding_one_hot_is_token_embedding_and_mixture_matches_numpy(rng):
  table = rng.normal(size=(VOCAB, 8)).astype(np.float32)
  ids = jnp.array([[3, 7, 1]])
  np.testing.assert_array_equal(st.soft_embedding(jnp.array([[1.0, 0.0, 0.0]]), ids, table)[0],
                                table[3])
  weights = jnp.array([[0.5, 0.3, 0.2]], jnp.bfloat16)
  want = np.asarray(weights[0], np.float64) @ table[[3, 7, 1]].astype(np.float64)
  got = st.soft_embedding(weights, ids, jnp.asarray(table))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    st.soft_embedding(jnp.ones((1, 2)), ids, table)


def test_policy_soft_inside_think_discrete_after_and_end_think_switch(rng):
  table = jnp.asarray(rng.normal(size=(VOCAB, 8)), jnp.float32)
  end_think = 5
  policy, state = st.soft_thinking_policy(table, 3, end_think_id=end_think, top_k=8,
                                          max_topk=4)
  state = state._replace(thinking=jnp.array([True, True, False]))
  logits = jnp.asarray(rng.normal(size=(3, VOCAB)), jnp.float32)
  logits = logits.at[1, end_think].set(50.0)  # row 1: </think> is the top component
  tokens, embeds, new_state, extras = jax.jit(policy)(logits, state, jax.random.key(1))
  weights, ids = st.soft_token_weights(logits[:1], top_k=8, max_topk=4)
  assert tokens[0] == ids[0, 0]
  np.testing.assert_allclose(embeds[0], st.soft_embedding(weights, ids, table)[0], rtol=1e-6)
  assert tokens[1] == end_think
  np.testing.assert_array_equal(embeds[1], table[end_think])
  assert tokens[2] == jnp.argmax(logits[2])  # greedy after the think block
  np.testing.assert_array_equal(embeds[2], table[tokens[2]])
  np.testing.assert_array_equal(new_state.thinking, [True, False, False])
  np.testing.assert_array_equal(extras["soft"], [True, False, False])


def test_policy_cold_stop_forces_end_think(rng):
  table = jnp.asarray(rng.normal(size=(VOCAB, 8)), jnp.float32)
  policy, state = st.soft_thinking_policy(table, 1, end_think_id=5,
                                          cold_stop=st.ColdStop(threshold=0.05, patience=2))
  confident = jnp.zeros((1, VOCAB)).at[0, 9].set(40.0)
  step = jax.jit(policy)
  emitted = []
  for i in range(3):
    tokens, _, state, _ = step(confident, state, jax.random.key(i))
    emitted.append(int(tokens[0]))
  assert emitted == [9, 5, 9]  # soft, forced </think>, then discrete greedy


def test_vanilla_soft_thinking_with_one_component_is_greedy_decoding():
  model = _tiny_lm()
  prompts = jnp.array([[1, 2, 3], [4, 5, 6]])
  greedy = sampling.generate(model, prompts, max_new_tokens=6, key=jax.random.key(0),
                             policy=sampling.GREEDY)
  policy, state = st.soft_thinking_policy(model.embedding_matrix(), 2, end_think_id=VOCAB - 1,
                                          max_topk=1)
  soft = sampling.generate(model, prompts, max_new_tokens=6, key=jax.random.key(0),
                           policy=policy, policy_state=state)
  np.testing.assert_array_equal(soft.tokens, greedy.tokens)
  assert bool(jnp.all(soft.extras["soft"]))


def test_gumbel_mode_explores_unlike_vanilla(rng):
  # (Dirichlet randomness is covered by test_dirichlet_resample_mean_and_variance.)
  table = jnp.asarray(rng.normal(size=(VOCAB, 8)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(1, VOCAB)), jnp.float32)
  keys = jax.random.split(jax.random.key(3), 16)
  for mode in ("vanilla", "gumbel"):
    policy, state = st.soft_thinking_policy(table, 1, end_think_id=VOCAB - 1, mode=mode,
                                            temperature=1.0, top_k=VOCAB, top_p=1.0)
    tokens, embeds, _, _ = jax.jit(jax.vmap(policy, (None, None, 0)))(logits, state, keys)
    distinct_embeds = len(np.unique(np.asarray(embeds).round(5), axis=0))
    if mode == "vanilla":  # deterministic: the same soft input for every key
      assert distinct_embeds == 1 and len(np.unique(tokens)) == 1
    else:
      assert distinct_embeds == len(keys) and len(np.unique(tokens)) > 1


def test_probes_zero_for_identical_inputs_and_match_direct_forward(rng):
  model = _tiny_lm()
  tokens = jnp.asarray(rng.integers(0, VOCAB, size=(2, 5)))
  embeds = model.embed(tokens)
  position = jnp.array([4, 2])
  ids = jnp.array([[3, 3, 8], [6, 9, 1]])
  weights = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
  probe = st.js_top1_probe(model, embeds, position, weights, ids)
  assert probe["js_soft_top1"][0] == pytest.approx(0.0, abs=1e-7)
  assert probe["js_top1_top2"][0] == pytest.approx(0.0, abs=1e-7)
  assert probe["js_soft_top1"][1] > 0

  # Independent path: build row 1's soft input by hand and run the model on it.
  table = np.asarray(model.embedding_matrix(), np.float64)
  soft = np.asarray(weights[1]) @ table[np.asarray(ids[1])]
  seq_soft = np.asarray(embeds[1]).copy()
  seq_soft[2] = soft
  seq_top1 = np.asarray(embeds[1]).copy()
  seq_top1[2] = table[6]
  logits = model(inputs_embeds=jnp.asarray(np.stack([seq_soft, seq_top1]), jnp.float32)).logits
  p, q = _np_softmax(logits[0, 2]), _np_softmax(logits[1, 2])
  m = 0.5 * (p + q)
  want = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
  np.testing.assert_allclose(probe["js_soft_top1"][1], want, rtol=1e-3, atol=1e-8)


def test_logit_lens_final_layer_matches_probe_and_identical_inputs_give_zero(rng):
  model = _tiny_lm(layers=2)
  embeds = model.embed(jnp.asarray(rng.integers(0, VOCAB, size=(2, 4))))
  position = jnp.array([3, 1])
  ids = jnp.array([[2, 7], [4, 4]])
  lens = st.logit_lens(model, embeds, position, ids, top1_weight=0.6)
  assert lens["js_soft_top1"].shape == (3, 2)
  probe = st.js_top1_probe(model, embeds, position, jnp.array([[0.6, 0.4]] * 2), ids)
  for name in probe:
    np.testing.assert_allclose(lens[name][-1], probe[name], rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(lens["js_top1_top2"][:, 1], 0.0, atol=1e-7)
  assert np.all(lens["js_top1_top2"][:, 0] > 0)


@pytest.mark.slow
def test_tiny_reasoner_is_single_threaded(tmp_path):
  """Paper-scale check on the in-repo tiny reasoner (arXiv 2508.03440's probe finding)."""
  from experiments import soft_thinking as experiment
  from experiments.configs import soft_thinking as experiment_config
  from logitlab.models import hf_checkpoint
  from logitlab.tasks import arithmetic

  config = experiment_config.get_config()
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(config.checkpoint)
  problems = arithmetic.generate_problems(32, seed=config.problem_seed, num_ops=(2, 3),
                                          split="test")
  probes = experiment.run_probes(config, model, tokenizer, problems)
  assert probes["num_probes"] > 10
  assert probes["probe"]["js_soft_top1"] < 0.25 * probes["probe"]["js_top1_top2"]
  assert probes["probe"]["agree_top1"] > probes["probe"]["agree_top2"]
