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
  # The special <think> token is never a head; steps start at "5", "7", "2".
  assert heads == ["5", "*", "7", "+", "2", "2"], heads


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
