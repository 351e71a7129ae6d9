"""Math JSONL task (loader, answer extraction / normalization, reward), special token ids
resolved from a checkpoint's tokenizer, and the GRPO demo on a Qwen2-style folder."""
import json
from fractions import Fraction

import numpy as np
import pytest

from experiments import llm_demo_common as common
from logitlab.rl import rewards
from logitlab.tasks import math_jsonl
from test_hf_checkpoint import QWEN2, _byte_level_bpe

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = "<|im_start|>user\n{question} Put the answer in \\boxed{}.<|im_end|>\n" \
                "<|im_start|>assistant\n"


def _fraction_string(value: Fraction) -> str:
  return str(value.numerator) if value.denominator == 1 else \
      f"{value.numerator}/{value.denominator}"


def test_normalize_equates_number_spellings(rng):
  """Every spelling of a random integer / fraction normalizes to the same canonical string,
  and a different value never does."""
  for _ in range(200):
    n = int(rng.integers(-10**7, 10**7))
    spellings = [str(n), f"{n:,}", f"{n}.0", f"{n}.00", f"${n}$", f" {n}. ", f"x = {n}",
                 f"\\text{{{n}}}", str(n).replace("-", "\u2212")]
    for s in spellings:
      assert math_jsonl.normalize_answer(s) == str(n), s
    assert math_jsonl.normalize_answer(str(n + 1)) != str(n)
    p, q = int(rng.integers(-50, 50)), int(rng.integers(1, 50))
    want = _fraction_string(Fraction(p, q))
    sign = "-" if p < 0 else ""
    for s in [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", f"{sign}\\frac{{{abs(p)}}}{{{q}}}",
              f"\\frac{{{-p}}}{{{-q}}}", f"{p}/{q}", f"{2 * p}/{2 * q}"]:
      assert math_jsonl.normalize_answer(s) == want, s
    if q in (2, 4, 5, 8, 10):  # finite decimals
      assert math_jsonl.normalize_answer(str(p / q)) == want
  assert math_jsonl.normalize_answer("(1,2)") == "(1,2)"  # not a thousands separator
  assert math_jsonl.normalize_answer("\\sqrt{2}") == "\\sqrt{2}"
  assert math_jsonl.normalize_answer("1/0") == "1/0"


@pytest.mark.parametrize("text, want", [
    ("so \\boxed{12}.", "12"),
    ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("nested \\boxed{2^{10} + \\{x\\}}", "2^{10} + \\{x\\}"),
    ("\\boxed{-7} and an unclosed \\boxed{3", "-7"),
    ("\\fbox{5}", "5"),
    ("\\boxed 9$", "9"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("#### -1,250\n", "-1,250"),
    ("#### 3 is wrong, final: \\boxed{4}", "4"),  # whichever comes last
    ("\\boxed{4} was a draft\n#### 5", "5"),
    ("answer: 42", None),
    ("\\boxed{", None),
])
def test_extract_answer(text, want):
  assert math_jsonl.extract_answer(text) == want


def test_math_correctness_reward():
  completions = ["<think>2+2</think> so \\boxed{4}<|im_end|>", "\\boxed{\\dfrac{8}{2}}",
                 "\\boxed{5}", "no answer", "#### 4.0", "\\boxed{-4}"]
  got = rewards.math_correctness(["q"] * 6, completions, answers=["4"] * 6, extra=[0] * 6)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [1, 1, 0, 0, 1, 0])
  # References are normalized too; an empty answer never matches a missing one.
  np.testing.assert_array_equal(
      rewards.math_correctness(None, ["\\boxed{1,000}", "x"], answers=["1000.0", ""]), [1, 0])


def _write_jsonl(path, records):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
  return path


def test_load_jsonl_formats_template_and_errors(tmp_path):
  records = [{"question": "Natalia sold 48 clips?", "answer": "She sold 48+24 = 72.\n#### 72"},
             {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
             {"problem": "DeepScaleR", "answer": "\\frac{3}{6}", "solution": "\\boxed{7}"},
             {"question": "LIMO {braces}", "solution": "long", "answer": "-1,000"}]
  path = _write_jsonl(tmp_path / "mixed.jsonl", records[:2] + [""] + records[2:])
  problems = math_jsonl.load_jsonl(path, template=CHAT_TEMPLATE)
  assert [p.answer for p in problems] == ["72", "1/2", "1/2", "-1000"]  # "answer" wins
  assert problems[3].question == "LIMO {braces}"
  assert problems[3].prompt == CHAT_TEMPLATE.replace("{question}", "LIMO {braces}")
  assert "\\boxed{}" in problems[0].prompt
  solutions = math_jsonl.load_jsonl(_write_jsonl(tmp_path / "s.jsonl", records[1:3]),
                                    answer_key="solution")
  assert [p.answer for p in solutions] == ["1/2", "7"]
  with pytest.raises(KeyError, match=r"missing.jsonl:2.*'question'.*config.data.question_key"):
    math_jsonl.load_jsonl(_write_jsonl(tmp_path / "missing.jsonl",
                                       [records[0], {"text": "q", "answer": "1"}]))
  with pytest.raises(KeyError, match=r":1.*'label'.*config.data.answer_key"):
    math_jsonl.load_jsonl(path, answer_key="label")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
    math_jsonl.load_jsonl(_write_jsonl(tmp_path / "bad.jsonl", [records[0], "{oops"]))
  with pytest.raises(ValueError, match=r"empty.jsonl:1: the answer field is empty"):
    math_jsonl.load_jsonl(_write_jsonl(tmp_path / "empty.jsonl", [{"question": "q",
                                                                   "answer": " "}]))
  with pytest.raises(ValueError, match=r"\{question\}"):
    math_jsonl.load_jsonl(path, template="no placeholder")
  with pytest.raises(FileNotFoundError, match="config.data.path"):
    math_jsonl.load_jsonl(tmp_path / "nope.jsonl")
  picked = math_jsonl.sample_problems(problems, 10, seed=0)
  assert len(picked) == 10 and all(picked.count(p) in (2, 3) for p in problems)  # epochs
  assert math_jsonl.sample_problems(problems, 10, seed=0, repeat=False) == picked[:4]


def chat_tokenizer():
  """A byte-level BPE (as Qwen2's) with the chat / think special tokens added."""
  tokenizer = _byte_level_bpe()
  tokenizer.add_special_tokens(CHAT_TOKENS)
  return tokenizer


def _tokens_config(**fields):
  _, tokens = common.task_config(**fields)
  return tokens


def test_resolve_tokens_from_tokenizer(tmp_path):
  tokenizer = chat_tokenizer()
  ids = {t: tokenizer.token_to_id(t) for t in CHAT_TOKENS + ["<|endoftext|>"]}
  assert len(set(ids.values())) == 5 and None not in ids.values()
  tokens = common.resolve_tokens(
      _tokens_config(eos=("<|im_end|>", "<|endoftext|>"), pad="<|endoftext|>"), tokenizer)
  assert tokens.eos == (ids["<|im_end|>"], ids["<|endoftext|>"])
  assert (tokens.pad, tokens.think_open, tokens.think_close) == (
      ids["<|endoftext|>"], ids["<think>"], ids["</think>"])
  assert tokens.rollout_kwargs() == {"end_think_id": ids["</think>"],
                                     "stop_tokens": tokens.eos, "pad_id": ids["<|endoftext|>"]}
  # No think block, pad defaults to the first eos; eos from the checkpoint's files.
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids[
      "<|im_end|>"], 7]}))
  bare = common.resolve_tokens(_tokens_config(eos="", pad="", think_open="", think_close=""),
                               tokenizer, str(tmp_path))
  assert (bare.eos, bare.pad, bare.think_open, bare.think_close) == (
      (ids["<|im_end|>"], 7), ids["<|im_end|>"], None, None)
  assert bare.eos_text[0] == "<|im_end|>" and bare.rollout_kwargs()["end_think_id"] == -1
  with pytest.raises(ValueError, match="SofT-GRPO needs a think block.*config.tokens.think_open"):
    bare.require_think("SofT-GRPO")
  # The arithmetic defaults name tokens this tokenizer lacks: the error names the field.
  with pytest.raises(ValueError, match=r"config.tokens.eos = '<eos>' is not a token.*"
                                       r"<\|im_end\|>"):
    common.resolve_tokens(_tokens_config(), tokenizer, "ckpt")
  with pytest.raises(ValueError, match=r"config.tokens.think_open = '<reason>'"):
    common.resolve_tokens(_tokens_config(eos="<|im_end|>", pad="", think_open="<reason>"),
                          tokenizer)
  with pytest.raises(ValueError, match="both config.tokens.think_open and"):
    common.resolve_tokens(_tokens_config(eos="<|im_end|>", pad="", think_close=""), tokenizer)
  with pytest.raises(ValueError, match=r"config.tokens.think_open = '<think>' has id \d+ >= "
                                       r"the model's vocab_size"):
    common.resolve_tokens(_tokens_config(eos="<|endoftext|>", pad=""), tokenizer,
                          vocab_size=ids["<think>"])
  with pytest.raises(ValueError, match="no eos_token_id.*set config.tokens.eos"):
    common.resolve_tokens(_tokens_config(eos=""), tokenizer, str(tmp_path / "none"))


def test_arithmetic_defaults_resolve_to_the_task_ids():
  from logitlab.tasks import arithmetic
  tokens = common.resolve_tokens(_tokens_config(), arithmetic.build_tokenizer())
  assert (tokens.eos, tokens.pad, tokens.think_open, tokens.think_close) == (
      (arithmetic.EOS_ID,), arithmetic.PAD_ID, arithmetic.THINK_ID, arithmetic.END_THINK_ID)


MATH_RECORDS = [{"question": "the cat sat on 2 mats?", "answer": "#### 2"},
                {"problem": "a dog ate 3 bones?", "answer": "3"},
                {"question": "the mat?", "answer": "so \\boxed{\\frac{1}{2}}"},
                {"problem": "the bone?", "solution": "\\boxed{-4}"}]


def _qwen2_folder_and_data(tmp_path):
  """A random Qwen2-style HF folder with the chat BPE tokenizer, and a 4-problem JSONL."""
  from logitlab.models import hf_checkpoint
  from logitlab.models.decoder_lm import LMConfig
  from test_decoder_lm import random_model

  tokenizer = chat_tokenizer()
  model = random_model(LMConfig(**{**QWEN2, "vocab_size": tokenizer.get_vocab_size()}))
  hf_checkpoint.save_hf_checkpoint(model, tokenizer, tmp_path / "ckpt")
  return str(tmp_path / "ckpt"), str(_write_jsonl(tmp_path / "train.jsonl", MATH_RECORDS))


def _use_folder(config, folder, data, out_dir, **fields):
  config.update(init_dir=folder, out_dir=str(out_dir), task="math_jsonl", num_eval_problems=2,
                eval_k=2, chunk_size=8, **fields)
  config.data.update(path=data, eval_path=data, template=CHAT_TEMPLATE)
  config.tokens.update(eos=("<|im_end|>", "<|endoftext|>"), pad="<|endoftext|>")
  return config


def test_grpo_demo_on_qwen2_folder_and_math_jsonl(tmp_path):
  """experiments.grpo end to end on a random Qwen2-style HF folder with a byte-level BPE
  tokenizer, a 4-problem JSONL file and the boxed-answer reward: 2 GRPO steps."""
  from experiments import grpo as experiment
  from experiments.configs import grpo_qwen

  folder, data = _qwen2_folder_and_data(tmp_path)
  config = _use_folder(grpo_qwen.get_config(), folder, data, tmp_path / "out",
                       methods=("grpo",), num_steps=2, prompts_per_step=2, group_size=2,
                       max_new_tokens=6)
  results = experiment.run(config)
  assert [h["step"] for h in results["history"]["grpo"]] == [0, 1]
  assert 0.0 <= results["grpo"]["discrete_eval"]["pass@1"] <= 1.0
  assert "sft_soft_eval" in results  # the think block exists
  assert (tmp_path / "out" / "results.json").exists()
  config.update(methods=("soft_grpo",))
  config.tokens.update(think_open="", think_close="")
  with pytest.raises(ValueError, match="SofT-GRPO.*needs a think block"):
    experiment.run(config)


@pytest.mark.slow
def test_ssb_and_aslec_demos_on_qwen2_folder_and_math_jsonl(tmp_path, monkeypatch):
  """SSB (no think block, Qwen2.5-Instruct-like) and ASLEC (think block) on the same
  folder. A random model never boxes the right answer, so SSB's sampler is wrapped to
  replace every other completion by a boxed right / wrong answer (curation needs both)."""
  from experiments import aslec, ssb
  from experiments.configs import aslec_qwen, ssb_qwen

  folder, data = _qwen2_folder_and_data(tmp_path)
  results = aslec.run(_use_folder(aslec_qwen.get_config(), folder, data, tmp_path / "aslec",
                                  num_questions=2, responses_per_question=4, select_k=2,
                                  sft_steps=2, sft_batch_size=4, max_new_tokens=12))
  assert set(results["methods"]) == {"random", "avg_logp", "drop", "casl"}

  sample, contexts = ssb.sample, []

  def sample_with_answers(model, demo, prompt_rows, key, **kw):
    rows, texts = sample(model, demo, prompt_rows, key, **kw)
    contexts.append(demo.tokenizer.decode(prompt_rows[0], skip_special_tokens=False))
    for j in range(0, len(rows), 2):
      texts[j] = "so \\boxed{2}<|im_end|>" if j % 4 == 0 else "\\boxed{7}<|im_end|>"
      rows[j] = demo.tokenizer.encode(texts[j], add_special_tokens=False).ids
    return rows, texts

  monkeypatch.setattr(ssb, "sample", sample_with_answers)
  config = _use_folder(ssb_qwen.get_config(), folder, data, tmp_path / "ssb", num_questions=4,
                       rollouts=4, teacher_samples=2, train_steps=2, batch_size=2,
                       max_new_tokens=8, grpo_results=str(tmp_path / "none.json"))
  config.tokens.update(think_open="", think_close="")
  results = ssb.run(config)
  assert results["data"]["curated"] >= 1 and results["data"]["teacher_solutions_kept"] >= 1
  teacher = contexts[1]  # hinted context: chat format around the SSB instruction
  assert teacher.startswith("<|im_start|>user\nWe have two sample responses")  # official text
  assert "the correct response from a student:\n---\nso \\boxed{2}\n---" in teacher  # no eos
  assert teacher.endswith("<|im_start|>assistant\n")
  assert (tmp_path / "ssb" / "lora").exists()
