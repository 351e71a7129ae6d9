"""The generated arithmetic reasoning task and the committed tiny reasoner checkpoint."""
import itertools
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from logitlab import sampling
from logitlab.tasks import arithmetic

ASSET = Path(__file__).resolve().parent.parent / "experiments" / "assets" / "tiny_reasoner"


def test_worked_steps_are_correct_and_follow_precedence():
  for problem in arithmetic.generate_problems(300, seed=0, num_ops=(1, 4), split="all"):
    expression = problem.prompt[len("Q: "):-1]
    assert problem.answer == eval(expression)  # Python has the same precedence rules
    assert len(problem.steps) == sum(expression.count(op) for op in "+-*")
    value = None
    for step in problem.steps:  # each step is "a op b = c." with c correct
      lhs, rhs = step.rstrip(".").rsplit("=", 1)
      assert eval(lhs) == int(rhs)
      value = int(rhs)
    assert value == problem.answer
  assert arithmetic.solve([7, 5, 3, 2], ["+", "*", "-"]) == (("5*3=15.", "7+15=22.",
                                                              "22-2=20."), 20)


def test_splits_are_disjoint_and_difficulty_controls_steps():
  train = arithmetic.generate_problems(2000, seed=1, num_ops=(2, 2), split="train")
  test = arithmetic.generate_problems(200, seed=1, num_ops=(2, 2), split="test")
  assert not {p.prompt for p in train} & {p.prompt for p in test}
  assert {len(p.steps) for p in train} == {2}
  hard = arithmetic.generate_problems(50, seed=1, num_ops=(4, 4))
  assert {len(p.steps) for p in hard} == {4}


def test_tokenizer_round_trip_and_special_ids():
  tokenizer = arithmetic.build_tokenizer()
  problem = arithmetic.Problem("Q: 7+5*3-2=", ("5*3=15.", "7+15=22.", "22-2=20."), 20)
  text = problem.prompt + problem.completion
  assert text == "Q: 7+5*3-2=<think>5*3=15. 7+15=22. 22-2=20.</think>answer: 20<eos>"
  ids = tokenizer.encode(text).ids
  assert tokenizer.decode(ids, skip_special_tokens=False) == text
  assert ids[-1] == arithmetic.EOS_ID and ids.count(arithmetic.THINK_ID) == 1
  assert ids.count(arithmetic.END_THINK_ID) == 1
  assert len(ids) == len(text) - len("<think></think><eos>") + 3  # one id per character
  assert arithmetic.split_steps(problem.completion) == list(problem.steps)


def test_encode_examples_masks_exactly_the_completion():
  tokenizer = arithmetic.build_tokenizer()
  problems = arithmetic.generate_problems(5, seed=2)
  batch = arithmetic.encode_examples(tokenizer, problems, max_len=60)
  for i, problem in enumerate(problems):
    prompt = tokenizer.encode(problem.prompt).ids
    completion = tokenizer.encode(problem.completion).ids
    sequence = prompt + completion
    np.testing.assert_array_equal(batch["inputs"][i, :len(sequence) - 1], sequence[:-1])
    np.testing.assert_array_equal(batch["targets"][i, :len(sequence) - 1], sequence[1:])
    np.testing.assert_array_equal(batch["targets"][i][batch["loss_mask"][i]], completion)
  with pytest.raises(ValueError, match="max_len"):
    arithmetic.encode_examples(tokenizer, problems, max_len=10)


def test_answer_extraction_and_reward():
  assert arithmetic.extract_answer("<think>2-9=-7.</think>answer: -7<eos>") == -7
  assert arithmetic.extract_answer("answer: 3 ... answer: 12") == 12
  assert arithmetic.extract_answer("<think>1+1=2.</think>") is None
  assert arithmetic.reward("answer: 20", 20) == 1.0
  assert arithmetic.reward("answer: 21", 20) == 0.0
  assert arithmetic.reward("no answer", 20) == 0.0


def test_pass_at_k_matches_combinatorial_definition():
  correct = np.random.default_rng(3).random((20, 6)) < 0.3
  for k in (1, 2, 4, 6):
    brute = np.mean([
        np.mean([row[list(s)].any() for s in itertools.combinations(range(6), k)])
        for row in correct])
    assert math.isclose(arithmetic.pass_at_k(correct, k), brute, rel_tol=1e-9, abs_tol=1e-12)
  assert arithmetic.pass_at_k(correct, 1) == pytest.approx(correct.mean())


@pytest.mark.skipif(not (ASSET / "config.json").exists(), reason="tiny reasoner not trained")
def test_committed_tiny_reasoner_solves_held_out_problems():
  from logitlab.models import hf_checkpoint
  model, tokenizer = hf_checkpoint.load_hf_checkpoint(ASSET)
  problems = arithmetic.generate_problems(32, seed=123, num_ops=(1, 2), split="test")
  result = arithmetic.evaluate_policy(model, tokenizer, problems, key=jax.random.key(0),
                                      policy=sampling.GREEDY, max_new_tokens=40)
  assert result["correct"].mean() >= 0.5
  assert (result["lengths"] < 40).mean() > 0.9  # it stops with <eos>


@pytest.mark.slow
def test_training_from_scratch_reaches_target_accuracy(tmp_path):
  """Paper-free reproduction of the committed asset: the default config, end to end."""
  from experiments import train_tiny_lm
  from experiments.configs import tiny_lm
  config = tiny_lm.get_config()
  config.out_dir = str(tmp_path)
  config.num_eval_problems = 128
  metrics = train_tiny_lm.train_and_evaluate(config)
  assert 0.4 <= metrics["greedy_accuracy"]
  assert metrics["sampled_pass@8"] >= metrics["sampled_pass@1"]
  assert (tmp_path / "model.safetensors").exists()
