"""The digits-scale classifiers of `logitlab.models.small`."""

import jax
import numpy as np
import pytest
from flax import nnx

from logitlab.models import small


@pytest.mark.parametrize("kernel_size,in_features", [((3, 3), 1), ((3, 3), 5), ((2, 2), 3),
                                                      ((1, 3), 4)])
def test_conv_as_matmul_equals_xla_convolution(kernel_size, in_features):
  conv = nnx.Conv(in_features, 6, kernel_size, rngs=nnx.Rngs(0))
  h = jax.random.normal(jax.random.key(1), (4, 8, 8, in_features))
  np.testing.assert_allclose(small._conv_same_as_matmul(conv, h), conv(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", small.ARCHITECTURES)
def test_every_architecture_maps_images_to_logits(name):
  model = small.build(name, 10, rngs=nnx.Rngs(0))
  model.eval()
  x = jax.random.uniform(jax.random.key(0), (3, 8, 8))
  logits = model(x)
  assert logits.shape == (3, 10) and bool(np.isfinite(np.asarray(logits)).all())
  np.testing.assert_allclose(model(x[..., None]), logits, rtol=1e-6)  # [B, H, W, 1] too


def test_bad_input_and_unknown_architecture_raise_clear_errors():
  model = small.build("cnn", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"`x` must be images \[B, H, W\]"):
    model(np.zeros((3, 64), np.float32))
  with pytest.raises(ValueError, match="Unknown architecture 'resnet'"):
    small.build("resnet", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_transformer_internals_logits_equal_the_plain_forward(num_layers):
  model = small.TinyTransformer(10, num_layers=num_layers, rngs=nnx.Rngs(num_layers))
  x = jax.random.uniform(jax.random.key(2), (16, 8, 8))
  out = model.internals(x)
  np.testing.assert_allclose(out["logits"], model(x), rtol=0, atol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda m, x: m.internals(x)["logits"])(model, x),
                             jax.jit(lambda m, x: m(x))(model, x), rtol=0, atol=1e-6)
  assert [a.shape for a in out["attention_logits"]] == [(16, 2, 8, 8)] * num_layers
  assert [u.shape for u in out["ffn_preactivations"]] == [(16, 8, 64)] * num_layers
  assert out["attention_mask"] is None


def _layer_norm(h, norm):
  mean = h.mean(-1, keepdims=True)
  var = ((h - mean) ** 2).mean(-1, keepdims=True)
  return (h - mean) / np.sqrt(var + norm.epsilon) * _f64(norm.scale) + _f64(norm.bias)


def _f64(param):
  return np.asarray(param[...], np.float64)


def test_transformer_internals_equal_a_float64_numpy_forward_from_the_kernels():
  """Attention logits (q / sqrt(d_head)) k^T per head and GELU inputs of both layers, from the
  layers' own kernels in float64: the quantities the network-wide radius differentiates."""
  model = small.TinyTransformer(10, num_layers=2, rngs=nnx.Rngs(3))
  x = np.asarray(jax.random.uniform(jax.random.key(4), (6, 8, 8)), np.float64)
  out = model.internals(x.astype(np.float32))
  h = x @ _f64(model.embed.kernel) + _f64(model.embed.bias) + _f64(model.position)
  for i, attn in enumerate(model.attns):
    a = _layer_norm(h, model.attn_norms[i])
    q, k, v = (np.einsum("btd,dhe->bthe", a, _f64(p.kernel)) + _f64(p.bias)
               for p in (attn.query, attn.key, attn.value))
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(q.shape[-1])
    np.testing.assert_allclose(out["attention_logits"][i], s, rtol=1e-4, atol=1e-5)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    h = h + np.einsum("bqhe,hed->bqd", np.einsum("bhqk,bkhe->bqhe", w, v),
                      _f64(attn.out.kernel)) + _f64(attn.out.bias)
    u = _layer_norm(h, model.mlp_norms[i]) @ _f64(model.mlps_in[i].kernel) + _f64(
        model.mlps_in[i].bias)
    np.testing.assert_allclose(out["ffn_preactivations"][i], u, rtol=1e-4, atol=1e-5)
    gelu = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))  # tanh form
    h = h + gelu @ _f64(model.mlps_out[i].kernel) + _f64(model.mlps_out[i].bias)
  logits = _layer_norm(h, model.final_norm).mean(1) @ _f64(model.out.kernel) + _f64(
      model.out.bias)
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-5)
