"""Filtering, sampling and the KV-cache decode loop against NumPy / naive references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import sampling
from logitlab.models.decoder_lm import LMConfig
from test_decoder_lm import forward, random_model


def reference_filter(logits, top_k=None, top_p=None, min_p=None):
  """float64 boolean keep-mask, filter by filter, from the definitions."""
  logits = np.asarray(logits, np.float64)
  keep = np.ones(logits.shape, bool)
  for row in np.ndindex(logits.shape[:-1]):
    z = logits[row]
    alive = np.ones(z.shape, bool)
    if top_k is not None:
      alive &= z >= np.sort(z)[::-1][top_k - 1]
    if top_p is not None and top_p < 1.0:  # top_p = 1 disables the filter (as in HF)
      p = np.where(alive, np.exp(z - z[alive].max()), 0.0)
      p /= p.sum()
      order = np.argsort(-p, kind="stable")
      cum = 0.0
      kept = np.zeros(z.shape, bool)
      for i in order:  # add tokens until the mass reaches top_p
        if cum >= top_p or p[i] == 0:
          break
        kept[i] = True
        cum += p[i]
      alive &= kept
    if min_p is not None:
      p = np.where(alive, np.exp(z - z[alive].max()), 0.0)
      alive &= p >= min_p * p.max()
    keep[row] = alive
  return keep


@pytest.mark.parametrize("kwargs", [
    dict(top_k=5), dict(top_p=0.7), dict(min_p=0.2), dict(top_k=12, top_p=0.8, min_p=0.05),
    dict(top_p=1.0),
])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_filter_logits_matches_reference(kwargs, scale):
  logits = scale * np.random.default_rng(0).normal(size=(4, 3, 30)).astype(np.float32) / 2
  filtered = sampling.filter_logits(jnp.asarray(logits), **kwargs)
  keep = reference_filter(logits, **kwargs)
  np.testing.assert_array_equal(np.isfinite(np.asarray(filtered)), keep)
  np.testing.assert_array_equal(np.asarray(filtered)[keep], logits[keep])
  assert keep.sum(-1).min() >= 1


def test_filter_keeps_minus_inf_and_accepts_bf16():
  logits = jnp.asarray([[0.0, -jnp.inf, 1.0, 2.0]], jnp.bfloat16)
  out = sampling.filter_logits(logits, top_k=3, top_p=0.9)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.isfinite(out), reference_filter(
      np.asarray(logits, np.float32), top_k=3, top_p=0.9))
  assert not np.isfinite(out[0, 1])


def test_filter_argument_errors():
  with pytest.raises(ValueError, match="top_k"):
    sampling.filter_logits(jnp.zeros((2, 5)), top_k=0)
  with pytest.raises(ValueError, match="top_p"):
    sampling.filter_logits(jnp.zeros((2, 5)), top_p=1.5)
  with pytest.raises(ValueError, match="min_p"):
    sampling.SamplingPolicy(min_p=-0.1)
  with pytest.raises(TypeError, match="logits"):
    sampling.filter_logits(jnp.zeros((2, 5), jnp.int32))


def test_sample_token_frequencies_follow_filtered_softmax():
  logits = jnp.asarray([2.0, 1.5, 1.0, 0.0, -1.0, 3.0])
  temperature, n = 0.7, 40_000
  # One call on n identical rows: each row draws independently from the same distribution.
  draws = sampling.sample_token(jnp.broadcast_to(logits, (n, 6)), jax.random.key(0),
                                temperature=temperature, top_k=4, top_p=0.9)
  z = np.asarray(logits, np.float64) / temperature
  keep = reference_filter(z, top_k=4, top_p=0.9)
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  freq = np.bincount(np.asarray(draws), minlength=6) / n
  assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9), (freq, p)
  assert freq[~keep].sum() == 0
  assert int(sampling.sample_token(logits * 1e4, jax.random.key(1), temperature=0.0)) == 5


@pytest.fixture(scope="module")
def model():
  cfg = LMConfig(vocab_size=24, hidden_size=32, intermediate_size=48, num_layers=2,
                 num_heads=4, num_kv_heads=2)
  return random_model(cfg, seed=0)


def naive_greedy(model, prompt, steps):
  """Re-runs the full forward on the growing sequence: no cache, no padding."""
  seq, log_probs = list(prompt), []
  for _ in range(steps):
    # Pad to a fixed width so the jitted forward compiles once; causality ignores the tail.
    padded = jnp.asarray([seq + [0] * (16 - len(seq))])
    logits = forward(model, padded).logits[0, len(seq) - 1]
    seq.append(int(jnp.argmax(logits)))
    log_probs.append(float(jax.nn.log_softmax(logits)[seq[-1]]))
  return seq[len(prompt):], log_probs


PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [11, 12, 13]]
NEW = 6


@pytest.fixture(scope="module")
def greedy_run(model):
  tokens = np.zeros((3, 5), np.int32)  # right padding
  for i, p in enumerate(PROMPTS):
    tokens[i, :len(p)] = p
  out = sampling.generate(model, jnp.asarray(tokens), jnp.asarray([5, 2, 3]),
                          max_new_tokens=NEW, key=jax.random.key(0), policy=sampling.GREEDY,
                          pad_id=0)
  return out


def test_generate_greedy_equals_naive_loop(model, greedy_run):
  for i, prompt in enumerate(PROMPTS):
    expected, log_probs = naive_greedy(model, prompt, NEW)
    np.testing.assert_array_equal(greedy_run.tokens[i], expected)
    np.testing.assert_allclose(greedy_run.extras["log_prob"][i], log_probs, atol=1e-4)
  np.testing.assert_array_equal(greedy_run.lengths, [NEW] * 3)


@dataclasses.dataclass(frozen=True)
class EmbeddingGreedy:
  """Feeds the argmax token's embedding row (from policy_state) as inputs_embeds."""

  def __call__(self, logits, embedding, key):
    tokens = jnp.argmax(logits, -1).astype(jnp.int32)
    return tokens, embedding[tokens], embedding, {"top_logit": jnp.max(logits, -1)}


def _assert_greedy_until_stop(out, greedy_run, stop, *, pad_id):
  """Each row equals the greedy run up to and including its first `stop`, then `pad_id`."""
  for i in range(out.tokens.shape[0]):
    ref = np.asarray(greedy_run.tokens[i])
    hits = np.flatnonzero(ref == stop)
    length = hits[0] + 1 if hits.size else NEW
    assert int(out.lengths[i]) == length
    np.testing.assert_array_equal(out.tokens[i, :length], ref[:length])
    assert (np.asarray(out.tokens[i, length:]) == pad_id).all()


def test_embedding_policy_stop_tokens_and_left_padding(model, greedy_run):
  """Embeddings path + stop tokens + left-padded mask in one compiled call."""
  stop = int(greedy_run.tokens[1, 2])
  tokens = np.full((3, 5), 23, np.int32)  # left padding with a non-zero junk id
  for i, p in enumerate(PROMPTS):
    tokens[i, 5 - len(p):] = p
  mask = tokens != 23
  out = sampling.generate(model, jnp.asarray(tokens), prompt_mask=jnp.asarray(mask),
                          max_new_tokens=NEW, key=jax.random.key(1), policy=EmbeddingGreedy(),
                          policy_state=model.embedding_matrix(), stop_tokens=(stop,), pad_id=22)
  _assert_greedy_until_stop(out, greedy_run, stop, pad_id=22)
  assert int(out.lengths[1]) <= 3
  assert out.extras["top_logit"].shape == (3, NEW)


@pytest.mark.parametrize("policy", [sampling.SamplingPolicy(temperature=1.3, min_p=1.0),
                                    sampling.SamplingPolicy(temperature=0.8, top_k=1)],
                         ids=["min_p=1", "top_k=1"])
def test_sampling_policy_token_path_right_padding_and_stop(model, greedy_run, policy):
  """Token-feeding path: min-p = 1 / top-k = 1 keep only the argmax, so a T > 0 sampler on
  right-padded prompts must reproduce greedy decoding up to and including the stop token."""
  stop = int(greedy_run.tokens[0, 1])
  tokens = np.zeros((3, 5), np.int32)
  for i, p in enumerate(PROMPTS):
    tokens[i, :len(p)] = p
  out = sampling.generate(model, jnp.asarray(tokens), jnp.asarray([5, 2, 3]), max_new_tokens=NEW,
                          key=jax.random.key(2), policy=policy, stop_tokens=(stop,), pad_id=21)
  _assert_greedy_until_stop(out, greedy_run, stop, pad_id=21)
  assert int(out.lengths[0]) <= 2  # the stop token fired early


def test_generate_argument_errors(model):
  prompt = jnp.ones((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="prompt_lengths"):
    sampling.generate(model, prompt, jnp.asarray([1, 2, 3]), max_new_tokens=2,
                      key=jax.random.key(0))
  with pytest.raises(ValueError, match="at most one"):
    sampling.generate(model, prompt, jnp.asarray([1, 2]), prompt_mask=prompt > 0,
                      max_new_tokens=2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="prompt_tokens"):
    sampling.generate(model, prompt.astype(jnp.float32), max_new_tokens=2,
                      key=jax.random.key(0))
