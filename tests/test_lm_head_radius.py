"""LM-head per-token spread in token x vocabulary chunks vs the naive full-vocabulary tangent."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import logitlab
from logitlab import ghosts, lm_head_radius
from logitlab.models.decoder_lm import DecoderLM, LMConfig


def _arrays(b=2, t=7, d=5, v=37, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  make = lambda *s: rng.normal(size=s)
  x, dx, w, dw, db = make(b, t, d), make(b, t, d), make(d, v), make(d, v), make(v)
  return x, dx, w, dw, db


def _reference(x, dx, w, dw, db, where):
  a = dx @ w + x @ dw + db  # float64 [B, T, V], written from a = dx W + x dW + db
  return np.where(where, a.max(-1) - a.min(-1), 0.0)


@pytest.mark.parametrize("token_chunk,vocab_chunk", [(3, 8), (128, 5), (2, None), (7, 37)])
def test_chunked_spread_equals_the_full_vocabulary_spread(token_chunk, vocab_chunk):
  x, dx, w, dw, db = _arrays()
  where = np.ones((2, 7), bool)
  where[1, 4:] = False
  got = lm_head_radius.lm_head_spread(
      *(jnp.asarray(a, jnp.float32) for a in (x, dx, w, dw)), bias_tangent=jnp.asarray(db),
      where=where, token_chunk_size=token_chunk, vocab_chunk_size=vocab_chunk)
  assert got.shape == (2, 7) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _reference(x, dx, w, dw, db, where), rtol=1e-5, atol=1e-5)


def test_bf16_inputs_reduce_in_float32():
  x, dx, w, dw, _ = _arrays(seed=1)
  args = [jnp.asarray(a, jnp.bfloat16) for a in (x, dx, w, dw)]
  got = lm_head_radius.lm_head_spread(*args, token_chunk_size=4, vocab_chunk_size=16)
  ref = _reference(*(np.asarray(a, np.float64) for a in args), np.zeros(37), True)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_frozen_head_and_stable_at_large_logits():
  x, dx, w, _, _ = _arrays(seed=2)
  x = 1e4 * x  # features (hence logits) at 1e4 scale: the spread is linear, nothing overflows
  got = lm_head_radius.lm_head_spread(jnp.asarray(x, jnp.float32), jnp.asarray(dx, jnp.float32),
                                      jnp.asarray(w, jnp.float32), vocab_chunk_size=8)
  np.testing.assert_allclose(got, _reference(x, dx, w, 0 * w, 0, True), rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=jnp.ones((2, 3))), "`features`"),
    (dict(kernel=jnp.ones((4, 9))), "`kernel`"),
    (dict(kernel_tangent=jnp.ones((5, 8))), "`kernel_tangent`"),
    (dict(bias_tangent=jnp.ones((8,))), "`bias_tangent`"),
    (dict(where=jnp.ones((2, 1, 1), bool)), "`where`"),
    (dict(vocab_chunk_size=0), "`vocab_chunk_size`"),
    (dict(token_chunk_size=1.5), "`token_chunk_size`"),
    (dict(features_tangent=jnp.ones((2, 3, 4))), "`features`"),
])
def test_bad_inputs_name_the_argument(kwargs, match):
  args = dict(features=jnp.ones((2, 3, 5)), features_tangent=jnp.ones((2, 3, 5)),
              kernel=jnp.ones((5, 9)), kernel_tangent=jnp.ones((5, 9)))
  args.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    lm_head_radius.lm_head_spread(**args)


def _tiny_lm(tied):
  config = LMConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=1,
                    num_heads=2, num_kv_heads=1, tie_word_embeddings=tied)
  # eval_shape + NumPy fill: eager NNX initialization compiles every op (seconds on 2 cores).
  graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  return nnx.merge(graphdef, jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), state))


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_lm_step_ratio_equals_the_naive_tangent(tied):
  model = _tiny_lm(tied)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 9)))
  mask = jnp.arange(9)[None] < jnp.array([[9], [6]])
  params = nnx.state(model, nnx.Param)
  step = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.key(1), p.shape), params)
  naive_fn = logitlab.nnx_logits_fn(model, tokens, attention_mask=mask,
                                    forward=lambda m, *a, **k: m(*a, **k).logits)
  tangent = jax.jit(lambda s: ghosts.directional_logits(naive_fn, params, s)[1])(step)
  naive = ghosts.normalized_step(tangent, where=mask)
  spread_fn = jax.jit(lm_head_radius.lm_head_spread_fn(
      lm_head_radius.decoder_lm_head_inputs(model, tokens, attention_mask=mask), params,
      where=mask, token_chunk_size=4, vocab_chunk_size=16))
  spread = spread_fn(step)
  np.testing.assert_allclose(spread, naive.spread, rtol=1e-4, atol=1e-6)
  got = ghosts.normalized_step_from_spread(spread)
  np.testing.assert_allclose(got.ratio, naive.ratio, rtol=1e-4)
  assert int(got.binding_index) == int(naive.binding_index)


def test_guard_with_logits_spread_applies_the_same_update_as_with_logits_fn():
  model = _tiny_lm(False)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, (2, 9)))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
  tx = logitlab.radius_guard(optax.sgd(10.0), max_ratio=0.5)
  state = tx.init(params)
  naive_fn = logitlab.nnx_logits_fn(model, tokens, forward=lambda m, t: m(t).logits)
  spread_fn = lm_head_radius.lm_head_spread_fn(
      lm_head_radius.decoder_lm_head_inputs(model, tokens), params, vocab_chunk_size=8)
  u_naive, s_naive = jax.jit(lambda g: tx.update(g, state, params, logits_fn=naive_fn))(grads)
  u_chunk, s_chunk = jax.jit(
      lambda g: tx.update(g, state, params, logits_spread=spread_fn))(grads)
  assert float(s_naive.ratio_proposed) > 0.5  # the cap binds: the scale is the one under test
  np.testing.assert_allclose(s_chunk.ratio_proposed, s_naive.ratio_proposed, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(u_chunk), jax.tree.leaves(u_naive)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("axis_types", ["explicit", "auto"])
@pytest.mark.parametrize("vocab_chunk", [None, 8])
def test_sharded_tokens_and_vocabulary_give_the_one_device_spread(axis_types, vocab_chunk):
  """Tokens on (data, fsdp), the head's vocabulary on tensor, 8 forced CPU devices."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from logitlab import training
  mesh = training.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, axis_types=axis_types)
  x, dx, w, dw, db = (jnp.asarray(a, jnp.float32) for a in _arrays(b=4, t=6, v=40, seed=3))
  where = jnp.arange(6)[None] < jnp.array([[6], [5], [2], [6]])
  fn = jax.jit(lambda *a: lm_head_radius.lm_head_spread(
      *a[:4], bias_tangent=a[4], where=a[5], token_chunk_size=4, vocab_chunk_size=vocab_chunk))
  want = fn(x, dx, w, dw, db, where)
  put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
  rows, vocab = P(("data", "fsdp")), P(None, "tensor")
  got = fn(put(x, rows), put(dx, rows), put(w, vocab), put(dw, vocab), put(db, P("tensor")),
           put(where, rows))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
