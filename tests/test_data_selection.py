"""ASLEC scores: CASL removes a planted step-length confound (synthetic pool)."""
import jax.numpy as jnp
import numpy as np
import pytest

from logitlab import data_selection
from logitlab.tasks import arithmetic


def _pool(rng, n=400, t=60):
  """Responses with random quality q (shifting every token's log-prob) and step count; step
  heads sit 3 nats below the rest, so the number of steps confounds the average log-prob."""
  quality = rng.uniform(-1.0, -0.2, n)
  steps = rng.integers(2, 15, n)
  logp = np.empty((n, t))
  head = np.zeros((n, t), bool)
  for i in range(n):
    starts = np.linspace(0, t, steps[i], endpoint=False).astype(int)
    head[i, starts] = True
    logp[i] = quality[i] + rng.normal(0, 0.05, t)
    logp[i, starts] += -3.0
  return quality, steps, logp, head


def test_casl_removes_planted_step_length_confound(rng):
  quality, steps, logp, head = _pool(rng)
  mask = np.ones_like(head)
  scores = data_selection.step_scores(jnp.asarray(logp, jnp.float32), mask, head)
  casl, coef = data_selection.casl_scores(scores)
  corr = lambda a: np.corrcoef(np.asarray(a), steps)[0, 1]
  assert abs(corr(scores["s_logp"])) > 0.5  # plain average log-prob tracks step count
  assert abs(corr(casl)) < 0.15
  assert np.corrcoef(np.asarray(casl), quality)[0, 1] > 0.95
  np.testing.assert_allclose(coef[2], -3.0, atol=0.3)  # gamma recovers the planted head gap
  # Top-k by CASL picks higher-quality responses than top-k by the plain score.
  groups = np.repeat(np.arange(20), 20)
  top_plain = data_selection.select_top_k(scores["s_logp"], groups, 5)
  top_casl = data_selection.select_top_k(casl, groups, 5)
  assert quality[top_casl].mean() > quality[top_plain].mean()
  # Masked-out tokens do not change the scores.
  padded = np.concatenate([logp, np.full((len(logp), 5), 1e4)], 1)
  pmask = np.concatenate([mask, np.zeros((len(logp), 5), bool)], 1)
  phead = np.concatenate([head, np.ones((len(logp), 5), bool)], 1)
  again = data_selection.step_scores(jnp.asarray(padded, jnp.float32), pmask, phead)
  for name in scores:
    np.testing.assert_allclose(again[name], scores[name], rtol=1e-5, atol=1e-6)


def test_scores_match_reference_and_topk(rng):
  logp = rng.normal(size=(6, 9)) - 1
  mask = rng.random((6, 9)) > 0.2
  head = rng.random((6, 9)) > 0.6
  s = data_selection.step_scores(jnp.asarray(logp, jnp.float32), mask, head)
  for i in range(6):
    np.testing.assert_allclose(s["s_logp"][i], logp[i][mask[i]].mean(), rtol=1e-5)
    np.testing.assert_allclose(s["s_first"][i], logp[i][mask[i] & head[i]].mean(), rtol=1e-5)
    np.testing.assert_allclose(s["s_drop"][i], logp[i][mask[i] & ~head[i]].mean(), rtol=1e-5)
    np.testing.assert_allclose(s["z"][i], (mask[i] & head[i]).sum() / mask[i].sum(), rtol=1e-5)
  chosen = data_selection.select_top_k(np.array([.1, .9, .5, .3, .2, .8]),
                                       np.array([0, 0, 0, 1, 1, 1]), 2)
  np.testing.assert_array_equal(chosen, [1, 2, 3, 5])


def test_step_head_mask_on_task_tokenizer():
  tok = arithmetic.build_tokenizer()
  text = "<think>5*3=15. 7+15=22. 22-2=20.</think>answer: 20"
  enc = tok.encode(text)
  special = [t in arithmetic.SPECIAL_TOKENS for t in enc.tokens]
  head = data_selection.step_head_mask(text, enc.offsets, num_head_tokens=2, never_head=special)
  heads = [enc.tokens[i] for i in np.flatnonzero(head)]
  # The special <think> token is never a head. With a character-level tokenizer the
  # official first token of ' ' + step is the space itself, so later steps open with " ".
  # (The official search itself drops this response: its first step has no leading space.)
  assert heads == ["5", "*", " ", "7", " ", "2"], heads


def _official_heads(tokens, tokenize, skip):
  """NumPy port of the official step split (wangbing1416/ASLEC merge_cal_limo_ours.py:
  ``split_step`` lines 60-73, the step-start search lines 221-265 and the head indices of
  ``output_causal_score`` lines 125-131). ``tokens``: per-token texts of the response;
  ``tokenize``: the tokenizer's token strings of a text. None where the official code drops
  the response."""
  import re
  output = "".join(tokens)
  parts = re.split(r"(\. |\? )", output)
  sentences = [parts[i] + (parts[i + 1] if i + 1 < len(parts) and parts[i + 1] else "")
               for i in range(0, len(parts), 2) if parts[i]]
  pointer, starts = 0, []
  for sent in sentences:
    if not sent.strip():
      continue
    seg = [t.replace("\u0120", " ").replace("\u010a", "\n") for t in tokenize(" " + sent)]
    start = next((i for i in range(max(pointer - 3, 0), min(pointer + 3, len(tokens)))
                  if tokens[i].strip() == seg[0].strip()), None)
    if start is None:
      break
    starts.append(start)
    pointer = start + len(seg)
  if len(sentences) != len(starts):
    return None
  starts = sorted(set(starts))
  lengths = [b - a for a, b in zip(starts, starts[1:] + [len(tokens)])]
  if sum(lengths) != len(tokens):
    return None
  head = np.zeros(len(tokens), bool)
  for a, n in zip(starts, lengths):
    head[a:a + min(skip, n)] = True
  return head


def test_step_heads_match_official_split_on_byte_level_bpe(tmp_path):
  """On a byte-level BPE ``tokenizer.json`` (space attached to the next word, as Qwen /
  Llama / GPT) the step heads equal the official ones. Before, the token " The" that opens
  a step was given to the previous step, so every step's head was its second token."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  rng = np.random.default_rng(0)
  words = ["The", "sum", "is", "Then", "we", "add", "so", "the", "answer", "Next", "multiply",
           "by", "Is", "it", "right", "Yes", "total", "equals"]
  def sentence():
    n = rng.integers(2, 7)
    body = " ".join([words[rng.integers(len(words))]] + [
        str(rng.integers(0, 100)) if rng.random() < 0.3 else words[rng.integers(len(words))]
        for _ in range(n)])
    return body + ("? " if rng.random() < 0.2 else ". ")
  texts = ["".join(sentence() for _ in range(rng.integers(2, 6))).rstrip() for _ in range(40)]
  bpe = tokenizers.Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(texts * 3, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  bpe.save(str(tmp_path / "tokenizer.json"))
  tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  compared = mismatched = 0
  for text in texts:
    ids = tok.encode(text).ids
    pieces = [tok.decode([i]) for i in ids]  # per-token texts, as experiments/aslec.py
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    offsets = list(zip([0] + ends[:-1], ends))
    official = _official_heads(pieces, lambda t: tok.encode(t).tokens, skip=2)
    if official is None:
      continue
    ours = data_selection.step_head_mask("".join(pieces), offsets)  # default: 2 head tokens
    assert pieces[np.flatnonzero(ours)[2]].startswith(" ")  # step 2 opens with " Word"
    if not np.array_equal(ours, official):
      # The official +-3 token window can match an equal word *inside the previous step*
      # (e.g. "... Is equals. equals 24"): then its head starts before the step's text.
      step_starts = [m.end() - 1 for m in data_selection.STEP_SEPARATOR.finditer(text)]
      wrong = [offsets[i][0] for i in np.flatnonzero(official & ~ours)]
      assert all(min(abs(w - s) for s in step_starts) > 0 for w in wrong), text
      mismatched += 1
      continue
    compared += 1
  assert compared >= 30, (compared, mismatched)


def test_empty_head_and_non_head_sets_as_official():
  """merge_cal_limo_ours.py: ``output_drop_score`` returns 0.0 without non-head tokens
  (lines 101-104); ``safe_mean`` gives -16 for an empty head / non-head set (lines 135-141)."""
  logp = jnp.array([[-1.0, -2.0, 0.0], [-0.5, -1.5, -2.5]])
  mask = jnp.array([[True, True, False], [True, True, True]])
  head = jnp.array([[True, True, False], [False, False, False]])
  s = data_selection.step_scores(logp, mask, head)
  np.testing.assert_allclose(s["s_drop"], [0.0, -1.5])
  np.testing.assert_allclose(s["s_non_head"], [-16.0, -1.5])
  np.testing.assert_allclose(s["s_first"], [-1.5, -16.0])


@pytest.mark.slow
def test_aslec_experiment_runs(tmp_path):
  """End-to-end demo (shrunk): ASLEC selections on the tiny reasoner's own samples."""
  import os
  if not os.path.exists("experiments/assets/tiny_reasoner/config.json"):
    pytest.skip("tiny reasoner checkpoint not trained yet")
  from experiments import aslec as experiment
  from experiments.configs import aslec as aslec_config
  config = aslec_config.get_config()
  config.update(init_dir="experiments/assets/tiny_reasoner", out_dir=str(tmp_path),
                num_questions=4, responses_per_question=4, select_k=2, sft_steps=2,
                sft_batch_size=4, num_eval_problems=4, eval_k=2)
  results = experiment.run(config)
  assert set(results["methods"]) == {"random", "avg_logp", "drop", "casl"}
