"""Transformers parity of every supported family on tiny random configs (no downloads).

Each case builds a random transformers model, writes it with ``save_pretrained`` (safetensors),
loads it with ``hf_checkpoint.load_hf_checkpoint`` and compares
(a) the logits of unpadded rows, (b) greedy ``generate`` on a left-padded batch (prefill with
padding, then the KV cache) against transformers ``generate`` with the same attention mask.
Windows and soft-caps are set small so that they change the result on these short sequences.
Needs the ``torch`` extra; run with ``python3 -m pytest -q tests/test_model_families.py``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import sampling
from logitlab.models import decoder_lm, hf_checkpoint
from test_decoder_lm import forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=48, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "qwen3": lambda: transformers.Qwen3Config(**SHAPE, rope_theta=1e4),
    "mistral": lambda: transformers.MistralConfig(**SHAPE, sliding_window=3),
    "gemma2": lambda: transformers.Gemma2Config(
        **SHAPE, sliding_window=3, query_pre_attn_scalar=16, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **SHAPE, sliding_window=3, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}
TOKENS = np.random.default_rng(0).integers(3, 48, (2, 9))


def _reference(family, path):
  torch.manual_seed(0)
  config = FAMILIES[family]()
  config._attn_implementation = "eager"
  reference = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # HF inits norms to ones/zeros: randomize everything
    for param in reference.parameters():
      param.normal_(0.0, 0.3)
  reference.save_pretrained(path)
  return reference


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_padded_greedy_decode_match_transformers(tmp_path, family):
  reference = _reference(family, tmp_path)
  model, _ = hf_checkpoint.load_hf_checkpoint(tmp_path, require_tokenizer=False)
  assert model.config.model_type == family
  with torch.no_grad():
    ref_logits = reference(torch.as_tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(forward(model, jnp.asarray(TOKENS)).logits, ref_logits,
                             atol=1e-4, rtol=1e-4)

  # Left-padded batch: row 0 has 3 pad slots; greedy, 6 new tokens through the KV cache.
  mask = np.ones_like(TOKENS, dtype=bool)
  mask[0, :3] = False
  prompts = np.where(mask, TOKENS, 0)
  with torch.no_grad():
    ref = reference.generate(torch.as_tensor(prompts), attention_mask=torch.as_tensor(mask),
                             max_new_tokens=6, do_sample=False, eos_token_id=None,
                             pad_token_id=0).numpy()[:, TOKENS.shape[1]:]
  out = sampling.generate(model, jnp.asarray(prompts), prompt_mask=jnp.asarray(mask),
                          max_new_tokens=6, key=jax.random.key(0), policy=sampling.GREEDY,
                          stop_tokens=())
  np.testing.assert_array_equal(out.tokens, ref)

  # Our writer produces a folder transformers reads back to the same logits.
  hf_checkpoint.save_hf_checkpoint(model, None, tmp_path / "ours")
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
  again.config._attn_implementation = "eager"
  with torch.no_grad():
    np.testing.assert_allclose(again(torch.as_tensor(TOKENS)).logits.numpy(), ref_logits,
                               atol=1e-5, rtol=1e-5)
  assert hf_checkpoint.load_hf_checkpoint(tmp_path / "ours", require_tokenizer=False
                                          )[0].config == model.config


def test_family_features_change_the_logits():
  """Guards against a parity test passing because a feature is inert at these sizes."""
  config = decoder_lm.LMConfig.from_hf_dict(FAMILIES["gemma2"]().to_dict())
  assert config.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
  assert config.attention_scale == 16 ** -0.5 and config.final_logit_softcapping == 3.0
  gemma3 = decoder_lm.LMConfig.from_hf_dict(FAMILIES["gemma3_text"]().to_dict())
  assert (gemma3.rope_theta, gemma3.local_rope_theta, gemma3.linear_rope_factor) == (
      1e6, 1e4, 2.0)
  np.testing.assert_allclose(decoder_lm.rope_frequencies(gemma3, sliding=True)[1],
                             1e4 ** -0.25)
  np.testing.assert_allclose(decoder_lm.rope_frequencies(gemma3)[1], 1e6 ** -0.25 / 2)


def test_unsupported_families_and_settings_are_refused():
  base = FAMILIES["qwen3"]().to_dict()
  with pytest.raises(NotImplementedError, match="model_type 'phi3'"):
    decoder_lm.LMConfig.from_hf_dict({**base, "model_type": "phi3"})
  with pytest.raises(NotImplementedError, match="attention_bias"):
    decoder_lm.LMConfig.from_hf_dict({**base, "attention_bias": True})
  with pytest.raises(NotImplementedError, match="yarn"):
    decoder_lm.LMConfig.from_hf_dict({**base, "rope_parameters": {"rope_type": "yarn",
                                                                  "factor": 4.0}})
  with pytest.raises(ValueError, match="`sliding_window` must be a positive int"):
    decoder_lm.LMConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1,
                        num_heads=2, num_kv_heads=1, layer_types=("sliding_attention",))
