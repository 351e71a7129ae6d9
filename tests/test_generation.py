"""What a transformers user expects from ``generate`` and no silent garbage (issue 17).

generation_config.json rules, temperature 0, repetition penalty (vs transformers), chat
templates (vs transformers), tokenizer checks, prompt bucketing, and one test per bad input.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import ngram, numerics, sampling
from logitlab import soft_thinking as st
from logitlab.models import decoder_lm, hf_checkpoint
from logitlab.models.chat_template import ChatTemplate
from logitlab.tasks import arithmetic
from test_decoder_lm import forward, random_model, tiny_config


@pytest.fixture(scope="module")
def model():
  return random_model(tiny_config(), seed=5)


PROMPTS = jnp.asarray([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]], jnp.int32)
LENGTHS = jnp.asarray([5, 2])


def _greedy(model, **kwargs):
  return sampling.generate(model, PROMPTS, LENGTHS, max_new_tokens=8, key=jax.random.key(0),
                           **{"policy": sampling.GREEDY, **kwargs})


# --- generation_config.json -------------------------------------------------------------

def test_generation_config_reads_every_eos_id_and_transformers_defaults(tmp_path):
  config = {"model_type": "llama", "eos_token_id": 7, "pad_token_id": 3}
  (tmp_path / "config.json").write_text(json.dumps(config))
  assert hf_checkpoint.load_generation_config(tmp_path) == sampling.GenerationConfig(
      eos_token_ids=(7,), pad_token_id=3)  # no generation_config.json: config.json's ids
  (tmp_path / "generation_config.json").write_text(json.dumps(
      {"eos_token_id": [11, 12, 13], "do_sample": True, "temperature": 0.7, "top_p": 0.8,
       "repetition_penalty": 1.05}))
  gen = hf_checkpoint.load_generation_config(tmp_path)
  assert gen.eos_token_ids == (11, 12, 13) and gen.pad_token_id == 3
  # Unset sampling fields take transformers' defaults (top-k 50).
  assert gen.policy() == sampling.SamplingPolicy(temperature=0.7, top_k=50, top_p=0.8)
  assert gen.repetition_penalty == 1.05
  assert sampling.GenerationConfig.from_hf_dict({}).policy() == sampling.GREEDY  # do_sample off
  assert sampling.GenerationConfig.from_hf_dict(
      {"do_sample": True, "temperature": 0.0}).policy() == sampling.GREEDY
  assert sampling.GenerationConfig.from_hf_dict(
      {"do_sample": True, "top_k": 0, "top_p": 1.0}).policy() == sampling.SamplingPolicy()
  loaded = decoder_lm.LMConfig.from_hf_dict({**tiny_config().to_hf_dict(),
                                             "eos_token_id": [4, 9]})
  assert loaded.eos_token_ids == (4, 9)


def test_generate_stops_at_every_eos_id_by_default():
  model = random_model(tiny_config(), seed=3)
  tokens = np.asarray(_greedy(model, stop_tokens=()).tokens)
  # One EOS id per row: a token of that row that the other row never emits.
  first = [next(int(t) for t in row if t not in tokens[1 - r]) for r, row in enumerate(tokens)]
  steps = np.asarray([list(row).index(t) for row, t in zip(tokens, first)])
  assert steps.max() > 0 and steps.min() < 7  # both rows stop early, not at the same step
  eos_model = random_model(tiny_config(eos_token_id=tuple(first)), seed=3)
  np.testing.assert_array_equal(_greedy(eos_model).lengths, steps + 1)
  gen = sampling.GenerationConfig(eos_token_ids=tuple(first), pad_token_id=1)
  out = _greedy(model, generation_config=gen)
  np.testing.assert_array_equal(out.lengths, steps + 1)
  row = int(np.argmin(steps))
  assert int(out.tokens[row, steps[row] + 1]) == 1  # the config's pad id after the stop


def test_temperature_zero_is_greedy(model):
  greedy = _greedy(model, stop_tokens=())
  zero = _greedy(model, stop_tokens=(), policy=sampling.SamplingPolicy(temperature=0.0,
                                                                       top_k=3))
  np.testing.assert_array_equal(zero.tokens, greedy.tokens)
  logits = jax.random.normal(jax.random.key(1), (4, 40))
  weights, ids = st.filtered_top_k(logits, temperature=0.0, top_k=5)
  np.testing.assert_array_equal(ids[:, 0], jnp.argmax(logits, -1))
  np.testing.assert_array_equal(weights[:, 0], 1.0)


def test_prompt_lengths_share_a_bucket_and_one_compile(model):
  assert [sampling.prompt_bucket(p) for p in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 32]
  kwargs = dict(max_new_tokens=3, key=jax.random.key(0), policy=sampling.GREEDY,
                stop_tokens=())
  sampling.generate(model, jnp.ones((2, 9), jnp.int32), **kwargs)
  compiled = sampling._generate._cache_size()
  out = sampling.generate(model, jnp.ones((2, 13), jnp.int32), **kwargs)
  assert sampling._generate._cache_size() == compiled
  # Bucketing padding is invisible: same tokens as the naive full forward.
  seq = [1] * 13
  for _ in range(3):
    seq.append(int(jnp.argmax(forward(model, jnp.asarray([seq])).logits[0, -1])))
  np.testing.assert_array_equal(out.tokens[0], seq[13:])


# --- repetition penalty -------------------------------------------------------------------

def test_repetition_penalty_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  logits = np.random.default_rng(0).normal(0, 3, (3, 40)).astype(np.float32)
  ids = np.random.default_rng(1).integers(0, 40, (3, 6))
  seen = np.zeros((3, 40), bool)
  np.put_along_axis(seen, ids, True, axis=1)
  want = transformers.RepetitionPenaltyLogitsProcessor(1.3)(
      torch.as_tensor(ids), torch.as_tensor(logits)).numpy()
  np.testing.assert_allclose(sampling.apply_repetition_penalty(logits, seen, 1.3), want,
                             rtol=1e-6)
  # End to end: greedy decoding with a penalty, unpadded prompts, against HF generate.
  model = random_model(tiny_config(), seed=5)
  hf_checkpoint.save_hf_checkpoint(model, None, tmp_path)
  reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  prompts = np.asarray([[5, 6, 7, 5, 6], [3, 4, 3, 4, 3]])
  with torch.no_grad():
    ref = reference.generate(torch.as_tensor(prompts), max_new_tokens=8, do_sample=False,
                             repetition_penalty=1.5, eos_token_id=None,
                             pad_token_id=0).numpy()[:, 5:]
  out = sampling.generate(model, jnp.asarray(prompts), max_new_tokens=8, key=jax.random.key(0),
                          policy=sampling.GREEDY, stop_tokens=(), repetition_penalty=1.5)
  np.testing.assert_array_equal(out.tokens, ref)
  plain = _greedy(model, stop_tokens=())
  assert not np.array_equal(plain.tokens, _greedy(model, stop_tokens=(),
                                                  repetition_penalty=1.5).tokens)


# --- checkpoint folder: tokenizer and chat template ------------------------------------

def test_missing_tokenizer_and_vocab_mismatch_raise(tmp_path):
  model = random_model(tiny_config(vocab_size=20, num_layers=1))
  hf_checkpoint.save_hf_checkpoint(model, None, tmp_path)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    hf_checkpoint.load_hf_checkpoint(tmp_path)
  assert hf_checkpoint.load_hf_checkpoint(tmp_path, require_tokenizer=False)[1] is None
  tokenizer = arithmetic.build_tokenizer()  # 28 ids > vocab_size 20
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="tokenizer.json has 28 token ids.*vocab_size is 20"):
    hf_checkpoint.load_hf_checkpoint(tmp_path)


QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('roles must be user/assistant') }}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


@pytest.mark.parametrize("template", [QWEN_TEMPLATE, LLAMA_TEMPLATE], ids=["qwen", "llama3"])
def test_chat_template_renders_as_transformers(tmp_path, template):
  transformers = pytest.importorskip("transformers")
  hf_tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=arithmetic.build_tokenizer(), bos_token="<think>", eos_token="<eos>")
  hf_tokenizer.chat_template = template
  hf_tokenizer.save_pretrained(tmp_path)
  messages = [{"role": "user", "content": " What is 2+3? "},
              {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4*4?"}]
  ours = ChatTemplate.from_pretrained(tmp_path)
  for add in (True, False):
    assert ours.render(messages, add_generation_prompt=add) == hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add)
  if template is LLAMA_TEMPLATE:
    with pytest.raises(Exception, match="roles must be user/assistant"):
      ours.render([{"role": "system", "content": "x"}])


def test_chat_template_missing_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No chat template"):
    ChatTemplate.from_pretrained(tmp_path)


# --- no silent garbage (issue 17, point 4) ----------------------------------------------

def test_out_of_vocabulary_prompt_ids_raise_eagerly_and_give_nan_under_jit(model):
  for bad in (40, -1):
    with pytest.raises(ValueError, match=r"`prompt_tokens` must be ids in \[0, 40\)"):
      sampling.generate(model, PROMPTS.at[0, 1].set(bad), LENGTHS, max_new_tokens=2,
                        key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`tokens` must be ids in \[0, 40\)"):
      model(PROMPTS.at[1, 0].set(bad))
    logits = forward(model, PROMPTS.at[1, 0].set(bad)).logits
    assert np.isnan(logits[1]).all() and np.isfinite(logits[0]).all()
  # Padding positions may hold anything (e.g. -1 padding).
  out = sampling.generate(model, PROMPTS.at[1, 3].set(-1), LENGTHS, max_new_tokens=2,
                          key=jax.random.key(0), policy=sampling.GREEDY)
  np.testing.assert_array_equal(out.tokens, _greedy(model).tokens[:, :2])


def test_overfilled_cache_raises_eagerly_and_gives_nan_under_jit(model):
  cache = decoder_lm.init_cache(model.config, 2, 6)
  out = forward(model, PROMPTS, cache=cache)
  with pytest.raises(ValueError, match="`cache` must be a KVCache with room for 2 more"):
    model(PROMPTS[:, :2], cache=out.cache)
  assert np.isnan(forward(model, PROMPTS[:, :2], cache=out.cache).logits).all()
  assert np.isfinite(forward(model, PROMPTS[:, :1], cache=out.cache).logits).all()
  with pytest.raises(ValueError, match="`max_len` must be a positive int"):
    decoder_lm.init_cache(model.config, 2, 0)


@pytest.mark.parametrize("lengths", [[5, 0], [6, 2], [-1, 2]])
def test_bad_prompt_lengths_raise(model, lengths):
  with pytest.raises(ValueError, match=r"`prompt_lengths` must be in \[1, P=5\]"):
    sampling.generate(model, PROMPTS, jnp.asarray(lengths), max_new_tokens=2,
                      key=jax.random.key(0))
  style = ngram.build_ngram([[1, 2, 3, 4]], 40)
  with pytest.raises(ValueError, match=r"`prompt_lengths` must be in \[1, P=5\]"):
    ngram.ngram_style_policy(style, PROMPTS, jnp.asarray(lengths), strength=0.5)


def test_prompt_row_without_real_tokens_raises_and_traced_rows_are_flagged(model):
  mask = jnp.asarray([[True] * 5, [False] * 5])
  with pytest.raises(ValueError, match="`prompt_mask` must be True on at least one token"):
    sampling.generate(model, PROMPTS, prompt_mask=mask, max_new_tokens=2, key=jax.random.key(0))

  @jax.jit
  def traced(lengths):
    out = sampling.generate(model, PROMPTS, lengths, max_new_tokens=2, key=jax.random.key(0),
                            policy=sampling.GREEDY, stop_tokens=())
    return out.lengths
  np.testing.assert_array_equal(traced(jnp.asarray([5, 0])), [2, -1])


def test_bad_sampling_and_soft_thinking_settings_raise():
  nan = float("nan")
  with pytest.raises(ValueError, match="`temperature` must be a finite number >= 0"):
    sampling.SamplingPolicy(temperature=nan)
  with pytest.raises(ValueError, match="`temperature` must be a finite number >= 0"):
    sampling.sample_token(jnp.zeros((2, 5)), jax.random.key(0), temperature=nan)
  with pytest.raises(ValueError, match="`temperature` must be a finite number >= 0"):
    st.SoftThinkingPolicy(end_think_id=3, temperature=nan)
  with pytest.raises(ValueError, match="`max_topk` must be an int >= 1"):
    st.SoftThinkingPolicy(end_think_id=3, max_topk=0)
  with pytest.raises(ValueError, match="`max_topk` must be an int >= 1"):
    st.truncate_sorted(jnp.ones((2, 4)), jnp.zeros((2, 4), jnp.int32), 0)
  with pytest.raises(ValueError, match=r"`end_think_id` must be a token id in \[0, 40\)"):
    st.soft_thinking_policy(jnp.zeros((40, 8)), 2, end_think_id=40)
  with pytest.raises(ValueError, match="`end_think_id` must be a token id >= 0"):
    st.soft_thinking_policy(jnp.zeros((40, 8)), 2, end_think_id=-1)
  with pytest.raises(ValueError, match="`patience` must be an int >= 1"):
    st.ColdStop(patience=0)
  with pytest.raises(ValueError, match="`repetition_penalty` must be a finite number > 0"):
    sampling.GenerationConfig(repetition_penalty=0.0)


def test_cold_stop_normalized_entropy_is_randomized_soft_thinking_rule():
  logits = jnp.zeros((1, 40))  # uniform: entropy log V, normalized 1
  policy, state = st.soft_thinking_policy(
      jnp.eye(40), 1, end_think_id=3,
      cold_stop=st.ColdStop(threshold=1.01, patience=1, normalize_entropy=True))
  tokens, _, _, extras = policy(logits, state, jax.random.key(0))
  np.testing.assert_allclose(extras["entropy"], 1.0, rtol=1e-6)
  assert int(tokens[0]) == 3  # 1 < 1.01: stops; unnormalized (log 40 = 3.7) it would not


def test_random_js_probe_is_zero_for_vanilla_and_positive_for_gumbel():
  logits = jax.random.normal(jax.random.key(2), (4, 40)) * 2
  for mode, positive in (("vanilla", False), ("gumbel", True), ("dirichlet", True)):
    policy, state = st.soft_thinking_policy(jnp.eye(40), 4, end_think_id=39, mode=mode)
    js = jax.jit(policy)(logits, state, jax.random.key(0))[3]["random_js"]
    assert (np.asarray(js) > 1e-4).all() if positive else np.allclose(js, 0.0, atol=1e-7)
    assert (np.asarray(js) <= np.log(2) + 1e-6).all()


def test_ngram_lambda_weights_and_order_one():
  style = ngram.build_ngram([[1, 2, 3, 1, 2, 4]], 6, max_order=1)  # used to ZeroDivisionError
  prior = ngram.style_log_prior(style, jnp.zeros((2, 0), jnp.int32), (1.0,))
  np.testing.assert_allclose(jnp.exp(prior).sum(-1), 1.0, rtol=1e-6)
  style3 = ngram.build_ngram([[1, 2, 3, 1, 2, 4]], 6)
  logits, context = jnp.zeros((2, 6)), jnp.asarray([[1, 2], [2, 3]])
  for bad in (-0.1, float("nan")):
    with pytest.raises(ValueError, match="`strength` must be a finite number >= 0"):
      ngram.inject_style(logits, style3, context, strength=bad)
    with pytest.raises(ValueError, match="`strength` must be a finite number >= 0"):
      ngram.ngram_style_policy(style3, PROMPTS, LENGTHS, strength=bad)
  jitted = jax.jit(lambda lam: ngram.inject_style(logits, style3, context, strength=lam))
  assert np.isnan(jitted(-1.0)).all() and np.isfinite(jitted(0.5)).all()
  with pytest.raises(ValueError, match="`order_weights` must be finite numbers >= 0 with a "
                                       "positive sum"):
    ngram.inject_style(logits, style3, context, strength=0.5, order_weights=(0.0, 0.0, 0.0))


def test_token_overlap_survives_an_insertion():
  reference = jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 8]])
  inserted = jnp.asarray([[1, 9, 2, 3, 4, 5, 6, 7]])  # one token inserted, last one dropped
  positional = float(jnp.mean(inserted == reference))
  assert positional == 1 / 8
  # 7 bigrams, of which (1,9), (9,2) are new: 5/7 shared.
  np.testing.assert_allclose(ngram.token_overlap(inserted, reference), 5 / 7, rtol=1e-6)
  np.testing.assert_allclose(ngram.token_overlap(reference, reference), 1.0)
  # Clipping: a repeated bigram counts at most as often as the reference has it.
  np.testing.assert_allclose(ngram.token_overlap(jnp.asarray([[1, 2, 1, 2, 1]]),
                                                 jnp.asarray([[1, 2, 7, 7, 7]])), 1 / 4)
  # Masks drop n-grams that reach into padding.
  where = jnp.asarray([[True] * 4 + [False] * 4])
  np.testing.assert_allclose(ngram.token_overlap(inserted, reference, where), 1 / 3)  # (2,3)


def test_demo_prompts_use_the_checkpoint_chat_template(tmp_path):
  from experiments import llm_demo_common as common
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
  data, _ = common.task_config()
  assert common.prompt_template(data, str(tmp_path)) == "{question}"  # off by default
  data.update(chat_template=True, system="Be brief.")
  assert common.prompt_template(data, str(tmp_path)) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
      "<|im_start|>assistant\n")


@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
def test_generate_on_a_sharded_model_equals_one_device(axis_types):
  """Parameters sharded fsdp x tensor (Auto and Explicit meshes): the same greedy tokens."""
  from logitlab.training import mesh as mesh_lib
  model = random_model(tiny_config(vocab_size=64), seed=5)
  prompts = jnp.asarray(np.random.default_rng(0).integers(1, 64, (4, 6)), jnp.int32)
  kwargs = dict(max_new_tokens=5, key=jax.random.key(0), policy=sampling.GREEDY, stop_tokens=())
  want = sampling.generate(model, prompts, **kwargs).tokens
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, axis_types=axis_types)
  decoder_lm.shard_model(model, mesh)
  with jax.set_mesh(mesh):
    got = sampling.generate(model, prompts, **kwargs).tokens
  np.testing.assert_array_equal(got, want)
