"""Tests for logitlab.ngram against an independent float64 NumPy/dict reference."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import ngram

VOCAB = 9
DISCOUNT = 0.6


def _corpus(rng):
  # Tokens 7 and 8 never occur, so unseen-token smoothing is exercised.
  return [rng.integers(0, 7, size=rng.integers(1, 25)) for _ in range(12)]


def _reference_probs(sequences, vocab, max_order, discount):
  """Returns f(context tuple of length max_order-1 with None for absent) -> [N, V] float64."""
  counts = [collections.Counter() for _ in range(max_order)]
  for s in sequences:
    s = [int(t) for t in s]
    for n in range(1, max_order + 1):
      for i in range(len(s) - n + 1):
        counts[n - 1][tuple(s[i:i + n])] += 1

  def probs(context):
    lower = np.full(vocab, 1.0 / vocab)
    out, matched = [], []
    for n in range(1, max_order + 1):
      history = tuple(context[len(context) - (n - 1):]) if n > 1 else ()
      followers = {g[-1]: c for g, c in counts[n - 1].items() if g[:-1] == history}
      total = sum(followers.values())
      if None in history or total == 0:
        current, hit = lower, False
      else:
        current = np.array([max(followers.get(x, 0) - discount, 0.0) / total
                            for x in range(vocab)])
        current += discount * len(followers) / total * lower
        hit = True
      out.append(current)
      matched.append(hit)
      lower = current
    return np.stack(out), np.array(matched)

  return probs


@pytest.fixture
def corpus(rng):
  return _corpus(rng)


def test_order_log_probs_match_reference_and_normalize_for_every_context(corpus):
  model = ngram.build_ngram(corpus, VOCAB, max_order=3, discount=DISCOUNT)
  reference = _reference_probs(corpus, VOCAB, 3, DISCOUNT)
  tokens = [-1, *range(VOCAB)]
  contexts = np.array(list(itertools.product(tokens, tokens)), np.int32)
  log_probs, matched = jax.jit(ngram.order_log_probs)(model, jnp.asarray(contexts))
  probs = np.exp(np.asarray(log_probs, np.float64))
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  for context, p, m in zip(contexts, probs, np.asarray(matched)):
    want_p, want_m = reference(tuple(None if t < 0 else int(t) for t in context))
    np.testing.assert_allclose(p, want_p, rtol=1e-5, atol=1e-7, err_msg=str(context))
    np.testing.assert_array_equal(m, want_m, err_msg=str(context))
  assert np.asarray(matched)[:, 2].any() and not np.asarray(matched)[:, 2].all()


def test_lambda_zero_is_identity_and_injection_matches_formula(corpus, rng):
  model = ngram.build_ngram(corpus, VOCAB, max_order=3, discount=DISCOUNT)
  reference = _reference_probs(corpus, VOCAB, 3, DISCOUNT)
  logits = jnp.asarray(rng.normal(size=(4, VOCAB)) * 1e4, jnp.float32)
  context = jnp.array([[0, 1], [-1, 2], [8, 8], [3, 4]], jnp.int32)
  np.testing.assert_array_equal(
      ngram.inject_style(logits, model, context, strength=0.0), logits)
  weights = np.array([0.2, 0.3, 0.5])
  steered = jax.jit(lambda l, c: ngram.inject_style(l, model, c, strength=0.4,
                                                    order_weights=tuple(weights)))(logits, context)
  for row in range(4):
    probs, matched = reference(tuple(None if t < 0 else int(t) for t in context[row]))
    w = np.where(matched, weights, 0.0)
    prior = (w / w.sum()) @ np.log(probs)
    np.testing.assert_allclose(steered[row], np.asarray(logits[row], np.float64) + 0.4 * prior,
                               rtol=1e-6, atol=1e-3)


def test_bf16_logits_accepted_with_float32_math(corpus):
  model = ngram.build_ngram(corpus, VOCAB)
  logits = jnp.linspace(-3, 3, VOCAB, dtype=jnp.bfloat16)[None]
  steered = ngram.inject_style(logits, model, jnp.array([[1, 2]]), strength=0.1)
  assert steered.dtype == jnp.float32
  assert np.all(np.isfinite(steered))


def test_style_perplexity_matches_reference(corpus, rng):
  model = ngram.build_ngram(corpus, VOCAB, max_order=3, discount=DISCOUNT)
  reference = _reference_probs(corpus, VOCAB, 3, DISCOUNT)
  tokens = rng.integers(0, VOCAB, size=(3, 7))
  where = np.ones_like(tokens, bool)
  where[1, 4:] = False
  log_likelihood = []
  for b, t in zip(*np.nonzero(where)):
    history = [None, None] + [int(x) for x in tokens[b, :t]]
    log_likelihood.append(np.log(reference(tuple(history[-2:]))[0][-1, tokens[b, t]]))
  want = np.exp(-np.mean(log_likelihood))
  got = ngram.style_perplexity(model, jnp.asarray(tokens), jnp.asarray(where))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Text drawn from the corpus is more "in style" than uniform noise over the vocabulary.
  in_style = jnp.asarray(np.stack([np.resize(s, 7) for s in corpus[:3]]))
  assert ngram.style_perplexity(model, in_style) < got


def test_base_perplexity_and_steering_metrics(rng):
  logits = rng.normal(size=(2, 5, VOCAB)).astype(np.float32)
  targets = rng.integers(0, VOCAB, size=(2, 5))
  where = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  want = np.exp(-np.take_along_axis(log_p, targets[..., None], -1)[..., 0][where].mean())
  np.testing.assert_allclose(ngram.base_perplexity(logits, targets, where), want, rtol=1e-5)

  assert ngram.steering_js(logits, logits) == pytest.approx(0.0, abs=1e-7)
  shifted = logits.copy()
  shifted[..., 0] += 5.0
  assert 0.0 < ngram.steering_js(logits, shifted) <= np.log(2)

  other = targets.copy()
  other[0, 0] = (other[0, 0] + 1) % VOCAB
  # Unigram overlap: the changed token is the only unmatched one among 8 masked tokens
  # (unless it also occurs elsewhere in the row).
  changed_elsewhere = other[0, 0] in targets[0, 1:3]
  np.testing.assert_allclose(ngram.token_overlap(targets, other, where, where, n=1),
                             (8 - (not changed_elsewhere)) / 8)


def test_style_vocab_overlap_counts_tokens_seen_in_corpus(corpus):
  model = ngram.build_ngram(corpus, VOCAB)
  tokens = jnp.array([[0, 1, 7, 8]])  # 7 and 8 never occur in the corpus
  np.testing.assert_allclose(ngram.style_vocab_overlap(model, tokens), 0.5)


def test_errors_name_the_argument(corpus):
  model = ngram.build_ngram(corpus, VOCAB)
  with pytest.raises(ValueError, match="context"):
    ngram.order_log_probs(model, jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match="logits"):
    ngram.inject_style(jnp.zeros((2, VOCAB + 1)), model, jnp.zeros((2, 2), jnp.int32),
                       strength=0.1)
  with pytest.raises(ValueError, match="order_weights"):
    ngram.style_log_prior(model, jnp.zeros((2, 2), jnp.int32), (0.5, 0.5))
  with pytest.raises(ValueError, match="sequences"):
    ngram.build_ngram([[0, VOCAB]], VOCAB)
  with pytest.raises(ValueError, match=r"prompt_lengths.*\(2,\)"):
    ngram.ngram_style_policy(model, jnp.zeros((2, 4), jnp.int32), jnp.array([3]), strength=0.1)
  with pytest.raises(ValueError, match="prompt_tokens"):
    ngram.ngram_style_policy(model, jnp.zeros((4,), jnp.int32), jnp.array([3]), strength=0.1)


def test_style_policy_identity_at_lambda_zero_follows_prior_when_strong(corpus, rng):
  model = ngram.build_ngram(corpus, VOCAB, max_order=3, discount=DISCOUNT)
  prompts = jnp.array([[4, 1, 2, 0], [5, 0, 0, 0]])  # right-padded, lengths 3 and 1
  logits = jnp.asarray(rng.normal(size=(2, VOCAB)), jnp.float32)
  policy, state = ngram.ngram_style_policy(model, prompts, jnp.array([3, 1]), strength=0.0)
  np.testing.assert_array_equal(state.context, [[1, 2], [-1, 5]])
  step = jax.jit(policy)
  tokens, embeds, new_state, extras = step(logits, state, jax.random.key(0))
  assert embeds is None
  np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))
  np.testing.assert_allclose(extras["js"], 0.0, atol=1e-6)
  np.testing.assert_array_equal(new_state.context[:, 0], [2, 5])
  np.testing.assert_array_equal(new_state.context[:, 1], tokens)
  log_p = logits - jax.nn.logsumexp(logits, -1, keepdims=True)
  np.testing.assert_allclose(extras["lm_log_prob"], log_p[jnp.arange(2), tokens], rtol=1e-5)

  strong = state._replace(strength=jnp.float32(1e3))
  tokens, _, _, extras = step(logits, strong, jax.random.key(0))
  prior = ngram.style_log_prior(model, state.context)
  np.testing.assert_array_equal(tokens, jnp.argmax(prior, -1))
  assert np.all(extras["js"] > 0.01)
