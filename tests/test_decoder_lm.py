"""DecoderLM against a float64 NumPy reference written from the Llama/Qwen2 equations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab.models import decoder_lm
from logitlab.models.decoder_lm import DecoderLM, LMConfig


def tiny_config(**overrides) -> LMConfig:
  fields = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=12, rope_theta=100.0, rms_norm_eps=1e-5)
  fields.update(overrides)
  return LMConfig(**fields)


def random_model(config: LMConfig, seed: int = 0, scale: float = 0.3) -> DecoderLM:
  """A model with every parameter (norm weights and biases too) drawn from N(0, scale^2).

  Built from ``nnx.eval_shape`` and filled from NumPy: eager NNX initialization costs
  seconds per op shape on a busy CPU.
  """
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))))
  state = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype), state)
  return nnx.merge(graphdef, state)


@nnx.jit
def forward(model, tokens=None, inputs_embeds=None, attention_mask=None, cache=None):
  """Jitted ``model(...)``: one compile per shape instead of one per op (eager)."""
  return model(tokens, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache)


def np_params(model: DecoderLM) -> dict:
  return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model)))


def reference_logits(model: DecoderLM, tokens: np.ndarray) -> np.ndarray:
  """Float64 forward for unpadded tokens [B, T], from the equations (no cache)."""
  cfg, p = model.config, np_params(model)
  b, t = tokens.shape
  hd, groups = cfg.head_dim, cfg.num_heads // cfg.num_kv_heads

  def rms(x, w):
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + cfg.rms_norm_eps) * w

  def rope(x):  # x: [B, T, N, hd], rotate_half pairs (i, i + hd/2)
    half = hd // 2
    freq = cfg.rope_theta ** (-np.arange(half) / half)
    ang = np.arange(t)[:, None] * freq  # [T, half]
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)

  def proj(layer, name, x):
    out = x @ layer[name]["kernel"]
    return out + layer[name]["bias"] if "bias" in layer[name] else out

  h = p["embed_tokens"]["embedding"][tokens]
  for i in range(cfg.num_layers):
    layer = p["layers"][i]
    attn = layer["self_attn"]
    n = rms(h, layer["input_layernorm"]["weight"])
    q = rope(proj(attn, "q_proj", n).reshape(b, t, cfg.num_heads, hd))
    k = rope(proj(attn, "k_proj", n).reshape(b, t, cfg.num_kv_heads, hd))
    v = proj(attn, "v_proj", n).reshape(b, t, cfg.num_kv_heads, hd)
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # GQA: head j uses j//g
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, -1)
    h = h + o @ attn["o_proj"]["kernel"]
    m = rms(h, layer["post_attention_layernorm"]["weight"])
    mlp = layer["mlp"]
    gate = m @ mlp["gate_proj"]["kernel"]
    h = h + (gate / (1 + np.exp(-gate)) * (m @ mlp["up_proj"]["kernel"])) @ mlp["down_proj"][
        "kernel"]
  h = rms(h, p["final_norm"]["weight"])
  head = p["embed_tokens"]["embedding"].T if cfg.tie_word_embeddings else p["lm_head"]
  return h @ head


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, num_kv_heads=1),
])
def test_forward_matches_float64_reference(overrides):
  model = random_model(tiny_config(**overrides))
  tokens = np.random.default_rng(1).integers(0, 40, (2, 10))
  out = forward(model, jnp.asarray(tokens))
  assert out.logits.dtype == jnp.float32 and out.logits.shape == (2, 10, 40)
  np.testing.assert_allclose(out.logits, reference_logits(model, tokens), rtol=2e-4, atol=2e-4)


@pytest.fixture(scope="module")
def model():
  return random_model(tiny_config(), seed=3)


def test_cache_decode_equals_full_forward(model):
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 40, (2, 10)))
  full = forward(model, tokens).logits
  cache = decoder_lm.init_cache(model.config, 2, 12)
  pieces = []
  for start, stop in [(0, 4), (4, 5), (5, 6), (6, 10)]:  # prefill, single steps, a chunk
    out = forward(model, tokens[:, start:stop], cache=cache)
    cache = out.cache
    pieces.append(out.logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
  assert int(cache.index) == 10
  np.testing.assert_array_equal(cache.next_position, [10, 10])


def test_left_padding_is_invisible(model):
  """A left-padded row (prefill and cached decode) gives the logits of the unpadded row."""
  seq = jnp.asarray(np.random.default_rng(4).integers(0, 40, (2, 10)))
  ref = forward(model, seq).logits
  # Row 0 has 3 junk pad tokens before its first 4 tokens; row 1 is unpadded.
  padded = seq.at[0, :7].set(jnp.concatenate([jnp.full((3,), 7), seq[0, :4]]))[:, :7]
  mask = jnp.stack([jnp.arange(7) >= 3, jnp.ones(7, bool)])
  cache = decoder_lm.init_cache(model.config, 2, 12)
  out = forward(model, padded, attention_mask=mask, cache=cache)
  np.testing.assert_allclose(out.logits[0, 3:], ref[0, :4], atol=1e-5)
  np.testing.assert_allclose(out.logits[1], ref[1, :7], atol=1e-5)
  next_tokens = jnp.stack([seq[0, 4:7], seq[1, 7:10]])
  out2 = forward(model, next_tokens, attention_mask=jnp.ones((2, 3), bool), cache=out.cache)
  np.testing.assert_allclose(out2.logits[0], ref[0, 4:7], atol=1e-5)
  np.testing.assert_allclose(out2.logits[1], ref[1, 7:10], atol=1e-5)
  np.testing.assert_array_equal(out2.cache.next_position, [7, 10])
  # Without a cache the same mask gives the same logits on the real tokens.
  np.testing.assert_allclose(forward(model, padded, attention_mask=mask).logits[0, 3:],
                             ref[0, :4], atol=1e-5)


def test_embeddings_hidden_states_and_unembed(model):
  tokens = jnp.asarray([[1, 5, 9, 2]])
  out = nnx.jit(lambda m, t: m(t, return_hidden_states=True))(model, tokens)
  by_embeds = forward(model, inputs_embeds=model.embed(tokens))
  np.testing.assert_allclose(by_embeds.logits, out.logits, atol=1e-5)
  assert len(out.hidden_states) == model.config.num_layers + 1
  np.testing.assert_allclose(out.hidden_states[0], model.embedding_matrix()[tokens[0]][None])
  np.testing.assert_allclose(model.unembed(out.hidden_states[-1]), out.logits, atol=1e-4)
  # A mixed (soft) input embedding differs from both of its pure tokens.
  e = model.embedding_matrix()
  embeds = jnp.stack([0.6 * e[5] + 0.4 * e[9], e[5], e[9]])[:, None]
  mixed, pure5, pure9 = forward(model, inputs_embeds=embeds).logits[:, 0]
  assert not np.allclose(mixed, pure5, atol=1e-3) and not np.allclose(mixed, pure9, atol=1e-3)


def test_bf16_params_give_float32_logits_close_to_float32(model):
  graphdef, state = nnx.split(model)
  bf16 = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), state))
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 40, (2, 10)))
  assert bf16.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  logits = forward(bf16, tokens).logits
  assert logits.dtype == jnp.float32
  ref = forward(model, tokens).logits
  np.testing.assert_allclose(logits, ref, atol=0.1 * float(jnp.std(ref)) + 0.05)
  # Huge inputs stay finite (RMSNorm rescales; attention softmax is float32).
  embeds = 1e4 * jax.random.normal(jax.random.key(0), (2, 10, model.config.hidden_size))
  assert np.isfinite(np.asarray(forward(bf16, inputs_embeds=embeds).logits)).all()


_E, _A = jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto


def _sharded_jit(fn, mesh, out_shardings):
  """``jax.jit(fn)`` on ``mesh`` with its Explicit axes switched to Auto for the body, as the
  training step and ``sampling.generate`` run the model (docs/scaling.md, "Sharding modes")."""
  from logitlab.training import mesh as mesh_lib
  return jax.jit(mesh_lib.auto_axes(fn, mesh, out_shardings), out_shardings=out_shardings)


# Explicit (the jax.make_mesh default), Auto and mixed axis types; the batch is sharded too.
@pytest.mark.parametrize("axis_types", [(_E, _E), (_A, _A), (_E, _A)],
                         ids=["explicit", "auto", "mixed"])
def test_shard_model_on_fsdp_tensor_mesh(axis_types):
  model = random_model(tiny_config(vocab_size=64))
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 64, (2, 10)))
  ref = forward(model, tokens).logits
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=axis_types)
  decoder_lm.shard_model(model, mesh)  # no `data` axis: the default rules replicate over it
  q_kernel = model.layers[0].self_attn.q_proj.kernel[...]
  assert q_kernel.sharding.spec == jax.P("fsdp", "tensor")
  assert model.embed_tokens.embedding[...].sharding.spec == jax.P("tensor", "fsdp")
  graphdef, state = nnx.split(model)
  rows = jax.sharding.NamedSharding(mesh, jax.P("fsdp"))
  logits_fn = lambda state, tokens: nnx.merge(graphdef, state)(tokens).logits
  with jax.set_mesh(mesh):
    logits = _sharded_jit(logits_fn, mesh, rows)(state, jax.device_put(tokens, rows))
  assert logits.sharding.spec == jax.P("fsdp")
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-6)


def _next_token_loss(model, tokens):
  logits = model(tokens[:, :-1]).logits
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))


def _untied_model_and_tokens():
  model = random_model(tiny_config(vocab_size=64, tie_word_embeddings=False), scale=0.1)
  return model, jnp.asarray(np.random.default_rng(6).integers(0, 64, (4, 8)))


@functools.cache
def _one_device_gradients():
  model, tokens = _untied_model_and_tokens()
  return nnx.to_pure_dict(nnx.jit(nnx.grad(_next_token_loss))(model, tokens))


@pytest.mark.parametrize("axis_types", ["explicit", "auto", (_E, _E, _A)],
                         ids=["explicit", "auto", "mixed"])
def test_shard_model_on_3_axis_mesh_shared_rules_alternating_kernels_and_gradients(axis_types):
  from logitlab.training import mesh as mesh_lib
  assert decoder_lm.LOGICAL_AXIS_RULES is mesh_lib.LOGICAL_AXIS_RULES  # one source of truth
  reference = _one_device_gradients()
  model, tokens = _untied_model_and_tokens()
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, axis_types=axis_types)
  decoder_lm.shard_model(model, mesh)
  layer = model.layers[0]
  column, row = jax.P("fsdp", "tensor"), jax.P("tensor", "fsdp")
  # Megatron-style: each kernel's output axis is the next one's input axis.
  for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
               layer.mlp.gate_proj, layer.mlp.up_proj):
    assert proj.kernel[...].sharding.spec == column
  assert layer.self_attn.o_proj.kernel[...].sharding.spec == row
  assert layer.mlp.down_proj.kernel[...].sharding.spec == row
  assert model.lm_head[...].sharding.spec == column
  assert model.embed_tokens.embedding[...].sharding.spec == row
  graphdef, state = nnx.split(model)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  grad_fn = jax.grad(lambda state, tokens: _next_token_loss(nnx.merge(graphdef, state), tokens))
  with jax.set_mesh(mesh):
    grads = _sharded_jit(grad_fn, mesh, shardings)(state, mesh_lib.put_batch(tokens, mesh))
  sharded = nnx.to_pure_dict(grads)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(reference),
                          jax.tree.leaves(sharded)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max() + 1e-8,
                               err_msg=jax.tree_util.keystr(path))


def test_llama3_rope_frequencies_match_reference():
  cfg = tiny_config(head_dim=64, rope_theta=5e5, llama3_rope_scaling=(8.0, 1.0, 4.0, 8192))
  f = 5e5 ** (-np.arange(32) / 32.0)
  expected = []
  for fi in f:  # the three bands of Llama 3.1 scaling, from the definition
    wavelength = 2 * np.pi / fi
    if wavelength < 8192 / 4.0:
      expected.append(fi)
    elif wavelength > 8192 / 1.0:
      expected.append(fi / 8.0)
    else:
      s = (8192 / wavelength - 1.0) / (4.0 - 1.0)
      expected.append((1 - s) * fi / 8.0 + s * fi)
  got = decoder_lm.rope_frequencies(cfg)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert (np.asarray(got) < f * 0.99).sum() >= 8  # the scaling changes a band


def test_config_hf_dict_round_trip_and_validation():
  cfg = tiny_config(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, eos_token_id=1)
  assert LMConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
  assert LMConfig(vocab_size=8, hidden_size=32, intermediate_size=8, num_layers=1, num_heads=4,
                  num_kv_heads=4).head_dim == 8
  # transformers v5 writes RoPE settings under rope_parameters instead of top-level keys.
  llama3 = tiny_config(rope_theta=5e5, llama3_rope_scaling=(8.0, 1.0, 4.0, 64))
  v5 = {k: v for k, v in llama3.to_hf_dict().items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}
  assert LMConfig.from_hf_dict(v5) == llama3 == LMConfig.from_hf_dict(llama3.to_hf_dict())
  with pytest.raises(NotImplementedError, match="yarn"):
    LMConfig.from_hf_dict({**cfg.to_hf_dict(), "rope_scaling": {"rope_type": "yarn"}})
  with pytest.raises(ValueError, match="num_kv_heads"):
    tiny_config(num_kv_heads=3)
  model = random_model(tiny_config())
  with pytest.raises(ValueError, match="exactly one"):
    model()
  with pytest.raises(ValueError, match="attention_mask"):
    model(jnp.zeros((2, 3), jnp.int32), attention_mask=jnp.ones((2, 4), bool))
