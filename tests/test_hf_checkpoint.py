"""HF checkpoint folders: safetensors round trips, error reporting, PyTorch parity."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from logitlab.models import hf_checkpoint
from logitlab.models.decoder_lm import LMConfig
from logitlab.tasks import arithmetic
from test_decoder_lm import forward, random_model

LLAMA = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=12, rope_theta=500.0, rms_norm_eps=1e-5)
QWEN2 = {**LLAMA, "model_type": "qwen2", "qkv_bias": True, "tie_word_embeddings": True,
         "num_kv_heads": 1}


TOKENS = np.random.default_rng(7).integers(0, 40, (2, 8))


@pytest.mark.parametrize("fields, shard_bytes", [(LLAMA, None), (QWEN2, 6000)])
def test_save_load_round_trip(tmp_path, fields, shard_bytes):
  model = random_model(LMConfig(**fields))
  tokenizer = arithmetic.build_tokenizer()
  hf_checkpoint.save_hf_checkpoint(model, tokenizer, tmp_path, max_shard_bytes=shard_bytes)
  if shard_bytes:
    index = json.loads((tmp_path / hf_checkpoint.SAFETENSORS_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert "lm_head.weight" not in index["weight_map"]  # tied
    assert "model.layers.0.self_attn.q_proj.bias" in index["weight_map"]
  loaded, loaded_tokenizer = hf_checkpoint.load_hf_checkpoint(tmp_path)
  assert loaded.config == model.config
  np.testing.assert_array_equal(forward(loaded, jnp.asarray(TOKENS)).logits,
                                forward(model, jnp.asarray(TOKENS)).logits)
  text = "Q: 1+2=<think>1+2=3.</think>answer: 3<eos>"
  assert loaded_tokenizer.encode(text).ids == tokenizer.encode(text).ids


def test_load_bf16_and_errors(tmp_path):
  model = random_model(LMConfig(**LLAMA))
  hf_checkpoint.save_hf_checkpoint(model, None, tmp_path)
  bf16, tokenizer = hf_checkpoint.load_hf_checkpoint(tmp_path, dtype=jnp.bfloat16,
                                                    require_tokenizer=False)
  assert tokenizer is None
  assert bf16.layers[1].self_attn.k_proj.kernel[...].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      bf16.layers[1].self_attn.k_proj.kernel[...],
      model.layers[1].self_attn.k_proj.kernel[...].astype(jnp.bfloat16))
  # A config that disagrees with the tensors names the tensor and the expected shape.
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 50}))
  with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight.*config.json implies"):
    hf_checkpoint.load_hf_checkpoint(tmp_path, require_tokenizer=False)
  # Qwen2 expects q/k/v biases that a Llama checkpoint lacks.
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
  with pytest.raises(KeyError, match="q_proj.bias"):
    hf_checkpoint.load_hf_checkpoint(tmp_path, require_tokenizer=False)


def test_name_mapping_round_trips():
  assert hf_checkpoint.hf_name_to_path("model.layers.3.mlp.down_proj.weight") == (
      ("layers", 3, "mlp", "down_proj", "kernel"), True)
  assert hf_checkpoint.hf_name_to_path("model.layers.0.self_attn.v_proj.bias") == (
      ("layers", 0, "self_attn", "v_proj", "bias"), False)
  assert hf_checkpoint.hf_name_to_path("model.layers.0.self_attn.q_norm.weight") == (
      ("layers", 0, "self_attn", "q_norm", "weight"), False)
  assert hf_checkpoint.hf_name_to_path("model.layers.2.post_feedforward_layernorm.weight") == (
      ("layers", 2, "post_feedforward_layernorm", "weight"), False)
  with pytest.raises(KeyError, match="Unexpected tensor"):
    hf_checkpoint.hf_name_to_path("model.layers.0.self_attn.q_layernorm.weight")


# Llama 3.1 RoPE scaling; on these 8 positions it moves the logits by ~0.1 vs plain RoPE.
LLAMA3 = {**LLAMA, "llama3_rope_scaling": (8.0, 1.0, 4.0, 64)}


@pytest.mark.parametrize("fields", [LLAMA, QWEN2, LLAMA3], ids=["llama", "qwen2", "llama3"])
def test_logits_match_transformers(tmp_path, fields):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = random_model(LMConfig(**fields), seed=1)
  hf_checkpoint.save_hf_checkpoint(model, None, tmp_path)
  reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  expected = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model.config.model_type]
  assert type(reference).__name__ == expected
  with torch.no_grad():
    ref_logits = reference(torch.as_tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(forward(model, jnp.asarray(TOKENS)).logits, ref_logits, atol=2e-5,
                             rtol=1e-4)


def test_loads_checkpoint_written_by_transformers(tmp_path):
  """A folder from ``save_pretrained`` (transformers' own config/safetensors layout)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_config = transformers.Qwen2Config(
      vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True,
      max_position_embeddings=64)
  reference = transformers.Qwen2ForCausalLM(hf_config).eval()
  with torch.no_grad():  # HF zero-inits biases and ones-inits norms: randomize them
    for param in reference.parameters():
      param.normal_(0.0, 0.3)
  reference.save_pretrained(tmp_path)
  model, _ = hf_checkpoint.load_hf_checkpoint(tmp_path, require_tokenizer=False)
  assert model.config.rope_theta == 1e6 and model.config.tie_word_embeddings
  with torch.no_grad():
    ref_logits = reference(torch.as_tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(forward(model, jnp.asarray(TOKENS)).logits, ref_logits, atol=2e-5,
                             rtol=1e-4)


def _byte_level_bpe() -> "tokenizers.Tokenizer":
  """A GPT-2/Qwen2-style byte-level BPE tokenizer trained in-process (no download)."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(["the cat sat on the mat", "a dog ate the bone"] * 20, trainer)
  return tokenizer


def test_loads_foreign_bf16_sharded_qwen2_folder(tmp_path):
  """A folder laid out as transformers writes it, built without ``save_hf_checkpoint``.

  HF tensor names and ``[out, in]`` layouts in bf16 over two shards plus an index, a
  transformers-v4 Qwen2 ``config.json`` (no ``head_dim``, ``eos_token_id`` list, sliding
  window fields present but off, ``torch_dtype``), a stale ``rotary_emb.inv_freq`` buffer, a
  tied ``lm_head`` copy and a byte-level BPE ``tokenizer.json``. Every tensor must land on the
  named parameter (checked by attribute, independently of ``hf_name_to_path``) and the
  forward must match the float64 reference.
  """
  import ml_dtypes
  from safetensors import numpy as safetensors_numpy
  from test_decoder_lm import reference_logits

  vocab, d, f, heads, kv_heads, layers = 288, 32, 48, 4, 2, 2
  hd = d // heads
  config = {
      "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 256,
      "eos_token_id": [256, 257], "hidden_act": "silu", "hidden_size": d,
      "initializer_range": 0.02, "intermediate_size": f, "max_position_embeddings": 128,
      "max_window_layers": layers, "model_type": "qwen2", "num_attention_heads": heads,
      "num_hidden_layers": layers, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-6,
      "rope_scaling": None, "rope_theta": 1e6, "sliding_window": None,
      "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.45.0",
      "use_cache": True, "use_sliding_window": False, "vocab_size": vocab}
  shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({
        p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        p + "self_attn.q_proj.weight": (heads * hd, d), p + "self_attn.q_proj.bias": (heads * hd,),
        p + "self_attn.k_proj.weight": (kv_heads * hd, d),
        p + "self_attn.k_proj.bias": (kv_heads * hd,),
        p + "self_attn.v_proj.weight": (kv_heads * hd, d),
        p + "self_attn.v_proj.bias": (kv_heads * hd,),
        p + "self_attn.o_proj.weight": (d, heads * hd),
        p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
        p + "mlp.down_proj.weight": (d, f)})
  rng = np.random.default_rng(11)
  tensors = {name: rng.normal(0.0, 0.3, shape).astype(ml_dtypes.bfloat16)
             for name, shape in shapes.items()}
  extras = {"lm_head.weight": tensors["model.embed_tokens.weight"],  # tied duplicate
            "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(hd // 2, np.float32)}
  names = sorted({**tensors, **extras})
  shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
            "model-00002-of-00002.safetensors": names[len(names) // 2:]}
  for file, members in shards.items():
    safetensors_numpy.save_file({n: {**tensors, **extras}[n] for n in members},
                                str(tmp_path / file), metadata={"format": "pt"})
  (tmp_path / hf_checkpoint.SAFETENSORS_INDEX).write_text(json.dumps(
      {"metadata": {"total_size": 0},
       "weight_map": {n: file for file, members in shards.items() for n in members}}))
  (tmp_path / "config.json").write_text(json.dumps(config))
  tokenizer = _byte_level_bpe()
  tokenizer.save(str(tmp_path / "tokenizer.json"))

  model, loaded_tokenizer = hf_checkpoint.load_hf_checkpoint(tmp_path)
  cfg = model.config
  assert (cfg.head_dim, cfg.num_kv_heads, cfg.eos_token_id) == (hd, kv_heads, (256, 257))
  assert cfg.qkv_bias and cfg.tie_word_embeddings and model.lm_head is None
  f32 = {name: np.asarray(t, np.float32) for name, t in tensors.items()}
  np.testing.assert_array_equal(model.embed_tokens.embedding[...],
                                f32["model.embed_tokens.weight"])
  np.testing.assert_array_equal(model.final_norm.weight[...], f32["model.norm.weight"])
  for i, layer in enumerate(model.layers):
    p = f"model.layers.{i}."
    np.testing.assert_array_equal(layer.input_layernorm.weight[...],
                                  f32[p + "input_layernorm.weight"])
    np.testing.assert_array_equal(layer.post_attention_layernorm.weight[...],
                                  f32[p + "post_attention_layernorm.weight"])
    for proj in ("q", "k", "v", "o"):  # nn.Linear [out, in] -> NNX kernel [in, out]
      module = getattr(layer.self_attn, f"{proj}_proj")
      np.testing.assert_array_equal(module.kernel[...],
                                    f32[p + f"self_attn.{proj}_proj.weight"].T)
      if proj != "o":
        np.testing.assert_array_equal(module.bias[...], f32[p + f"self_attn.{proj}_proj.bias"])
    for proj in ("gate", "up", "down"):
      np.testing.assert_array_equal(getattr(layer.mlp, f"{proj}_proj").kernel[...],
                                    f32[p + f"mlp.{proj}_proj.weight"].T)

  text = "the cat ate the bone"
  ids = loaded_tokenizer.encode(text).ids
  assert ids == tokenizer.encode(text).ids and loaded_tokenizer.decode(ids) == text
  tokens = np.asarray([ids])
  np.testing.assert_allclose(forward(model, jnp.asarray(tokens)).logits,
                             reference_logits(model, tokens), rtol=2e-4, atol=2e-4)
