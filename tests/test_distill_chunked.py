"""Chunked distillation loss == naive full-logits loss (value and gradient), float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import distill_chunked

B, T, D, V = 2, 11, 6, 40


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_loss(s, t, mask, divergence, beta, temp):
  ls, lt = _np_log_softmax(s / temp), _np_log_softmax(t / temp)
  ps, pt = np.exp(ls), np.exp(lt)
  if divergence == "forward_kl":
    d = (pt * (lt - ls)).sum(-1)
  elif divergence == "reverse_kl":
    d = (ps * (ls - lt)).sum(-1)
  else:
    m = beta * pt + (1 - beta) * ps
    d = beta * (pt * (lt - np.log(m))).sum(-1) + (1 - beta) * (ps * (ls - np.log(m))).sum(-1)
  return temp**2 * d[mask].sum() / mask.sum()


@pytest.fixture
def data(rng):
  hs = rng.normal(size=(B, T, D))
  ht = rng.normal(size=(B, T, D))
  ws = rng.normal(size=(D, V)) * 2
  wt = rng.normal(size=(D, V)) * 2
  mask = rng.random((B, T)) > 0.3
  return hs, ht, ws, wt, mask


@pytest.mark.parametrize("divergence,beta,temp,fused", [("forward_kl", 0.5, 1.0, True),
                                                        ("reverse_kl", 0.5, 2.0, False),
                                                        ("jsd", 0.3, 1.0, True)])
def test_chunked_equals_reference_and_naive_gradient(data, divergence, beta, temp, fused):
  hs, ht, ws, wt, mask = data
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  @jax.jit
  def chunked(ws, hs):
    common = dict(teacher_hidden=f32(ht), teacher_logits_fn=lambda h: h @ f32(wt),
                  divergence=divergence, beta=beta, temperature=temp, chunk_size=4)
    if fused:  # gradient computed inside the forward scan (custom VJP)
      return distill_chunked.chunked_distill_loss(hs, lambda w, h: h @ w, mask,
                                                  student_params=ws, **common)
    return distill_chunked.chunked_distill_loss(hs, lambda h: h @ ws, mask, **common)

  @jax.jit
  def naive(ws, hs):
    d = distill_chunked.divergence_from_logits(f32(ht) @ f32(wt), hs @ ws, divergence=divergence,
                                               beta=beta, temperature=temp)
    return temp**2 * jnp.sum(jnp.where(mask, d, 0)) / mask.sum()

  ref = _np_loss(hs @ ws, ht @ wt, mask, divergence, beta, temp)
  np.testing.assert_allclose(chunked(f32(ws), f32(hs)), ref, rtol=1e-4)
  gc = jax.grad(chunked, argnums=(0, 1))(f32(ws), f32(hs))
  gn = jax.grad(naive, argnums=(0, 1))(f32(ws), f32(hs))
  for a, b in zip(gc, gn):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(gc[1])[~mask]).max() == 0.0  # masked tokens get no gradient


def test_topk_teacher_and_global_normalizer(data):
  hs, ht, ws, wt, mask = data
  k = 5
  t_logits = ht @ wt
  ids = np.argsort(-t_logits, -1)[..., :k]
  vals = np.take_along_axis(t_logits, ids, -1)
  loss = distill_chunked.chunked_distill_loss(
      jnp.asarray(hs, jnp.float32), lambda h: h @ jnp.asarray(ws, jnp.float32), mask,
      teacher_topk_logits=jnp.asarray(vals, jnp.bfloat16).astype(jnp.float32),
      teacher_topk_ids=jnp.asarray(ids, jnp.int32), chunk_size=3, num_valid_tokens=100)
  lt = _np_log_softmax(np.asarray(jnp.asarray(vals, jnp.bfloat16).astype(jnp.float32), np.float64))
  ls = np.take_along_axis(_np_log_softmax(hs @ ws), ids, -1)
  ref = (np.exp(lt) * (lt - ls)).sum(-1)[mask].sum() / 100
  np.testing.assert_allclose(loss, ref, rtol=1e-4)
  # Gradient (fused path) equals the naive top-k loss on full student logits.
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  fused = lambda w, h: distill_chunked.chunked_distill_loss(
      h, lambda w_, h_: h_ @ w_, mask, teacher_topk_logits=f32(vals),
      teacher_topk_ids=jnp.asarray(ids, jnp.int32), temperature=2.0, chunk_size=3,
      student_params=w)
  naive = lambda w, h: 4.0 * jnp.sum(jnp.where(mask, distill_chunked.topk_forward_kl(
      f32(vals), jnp.asarray(ids, jnp.int32), h @ w, temperature=2.0), 0.0)) / mask.sum()
  np.testing.assert_allclose(fused(f32(ws), f32(hs)), naive(f32(ws), f32(hs)), rtol=1e-5)
  for a, b in zip(jax.grad(fused, argnums=(0, 1))(f32(ws), f32(hs)),
                  jax.grad(naive, argnums=(0, 1))(f32(ws), f32(hs))):
    assert np.abs(np.asarray(b)).max() > 1e-3
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="top-k teacher"):
    distill_chunked.chunked_distill_loss(
        jnp.asarray(hs), lambda h: h, mask, teacher_topk_logits=jnp.asarray(vals),
        teacher_topk_ids=jnp.asarray(ids), divergence="reverse_kl")


def test_stable_at_large_logits_and_bf16(rng):
  hs = jnp.asarray(rng.normal(size=(B, T, D)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(D, V)) * 1e4 / 3, jnp.float32)
  mask = np.ones((B, T), bool)
  loss = distill_chunked.chunked_distill_loss(
      hs, lambda h: h.astype(jnp.float32) @ w, mask, teacher_hidden=hs[:, ::-1],
      teacher_logits_fn=lambda h: h.astype(jnp.float32) @ w, divergence="jsd", chunk_size=5)
  assert np.isfinite(loss) and 0 <= float(loss) <= np.log(2) + 1e-5
  with pytest.raises(ValueError, match="student_hidden"):
    distill_chunked.chunked_distill_loss(hs[0], lambda h: h, mask, teacher_hidden=hs,
                                         teacher_logits_fn=lambda h: h)
