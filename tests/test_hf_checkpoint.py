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
  bf16, tokenizer = hf_checkpoint.load_hf_checkpoint(tmp_path, dtype=jnp.bfloat16)
  assert tokenizer is None
  assert bf16.layers[1].self_attn.k_proj.kernel[...].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      bf16.layers[1].self_attn.k_proj.kernel[...],
      model.layers[1].self_attn.k_proj.kernel[...].astype(jnp.bfloat16))
  # A config that disagrees with the tensors names the tensor and the expected shape.
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 50}))
  with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight.*config.json implies"):
    hf_checkpoint.load_hf_checkpoint(tmp_path)
  # Qwen2 expects q/k/v biases that a Llama checkpoint lacks.
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
  with pytest.raises(KeyError, match="q_proj.bias"):
    hf_checkpoint.load_hf_checkpoint(tmp_path)


def test_name_mapping_round_trips():
  assert hf_checkpoint.hf_name_to_path("model.layers.3.mlp.down_proj.weight") == (
      ("layers", 3, "mlp", "down_proj", "kernel"), True)
  assert hf_checkpoint.hf_name_to_path("model.layers.0.self_attn.v_proj.bias") == (
      ("layers", 0, "self_attn", "v_proj", "bias"), False)
  with pytest.raises(KeyError, match="Unexpected tensor"):
    hf_checkpoint.hf_name_to_path("model.layers.0.self_attn.q_norm.weight")


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
  model, _ = hf_checkpoint.load_hf_checkpoint(tmp_path)
  assert model.config.rope_theta == 1e6 and model.config.tie_word_embeddings
  with torch.no_grad():
    ref_logits = reference(torch.as_tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(forward(model, jnp.asarray(TOKENS)).logits, ref_logits, atol=2e-5,
                             rtol=1e-4)
