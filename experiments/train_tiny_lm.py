"""Trains the tiny in-repo reasoner on generated arithmetic and saves it in HF format.

The model (``DecoderLM``, Llama layout) learns ``Q: 7+5*3-2=`` ->
``<think>5*3=15. 7+15=22. 22-2=20.</think>answer: 20<eos>`` by next-token cross-entropy on
the completion tokens. After training it is evaluated on the held-out split (greedy
accuracy, sampled Pass@1 and Pass@k) and written to ``config.out_dir`` as an HF checkpoint
folder (config.json, model.safetensors, tokenizer.json) plus ``metrics.json`` and
``loss.png``.

Run:  python -m experiments.train_tiny_lm                          (configs/tiny_lm.py)
      python -m experiments.train_tiny_lm --config.num_steps=200 --config.out_dir=/tmp/tiny
      python -m experiments.train_tiny_lm --config.eval_only   (re-evaluate out_dir's model)
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
import optax
from absl import app
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from logitlab import sampling
from logitlab.losses import cross_entropy
from logitlab.models import decoder_lm, hf_checkpoint
from logitlab.tasks import arithmetic


def build_model(config, vocab_size: int) -> decoder_lm.DecoderLM:
  lm_config = decoder_lm.LMConfig(
      vocab_size=vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_layers=config.num_layers,
      num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
      rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings,
      qkv_bias=config.model_type == "qwen2", model_type=config.model_type,
      max_position_embeddings=2 * config.max_len, eos_token_id=arithmetic.EOS_ID,
      pad_token_id=arithmetic.PAD_ID)
  return decoder_lm.DecoderLM(lm_config, rngs=nnx.Rngs(config.seed))


def loss_fn(model: decoder_lm.DecoderLM, batch: dict) -> jax.Array:
  """Mean next-token cross-entropy over completion positions."""
  logits = model(batch["inputs"]).logits
  return cross_entropy(logits, batch["targets"], where=batch["loss_mask"])


@nnx.jit
def train_step(model, optimizer, batch):
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
  optimizer.update(model, grads)
  return loss


def evaluate(config, model, tokenizer, key) -> dict[str, float]:
  """Greedy accuracy and sampled Pass@1 / Pass@k on held-out problems."""
  problems = arithmetic.generate_problems(
      config.num_eval_problems, seed=config.seed + 1, num_ops=(config.min_ops, config.max_ops),
      max_operand=config.max_operand, split="test")
  greedy_key, sample_key = jax.random.split(key)
  greedy = arithmetic.evaluate_policy(model, tokenizer, problems, key=greedy_key,
                                      policy=sampling.GREEDY,
                                      max_new_tokens=config.max_new_tokens)
  sampled = arithmetic.evaluate_policy(
      model, tokenizer, problems, key=sample_key,
      policy=sampling.SamplingPolicy(temperature=config.eval_temperature),
      num_samples=config.eval_k, max_new_tokens=config.max_new_tokens)
  num_ops = np.array([len(p.steps) for p in problems])
  by_difficulty = {f"greedy_accuracy_{n}_ops": float(greedy["correct"][num_ops == n].mean())
                   for n in sorted(set(num_ops))}
  return {
      "greedy_accuracy": float(greedy["correct"].mean()),
      **by_difficulty,
      "greedy_mean_tokens": float(greedy["lengths"].mean()),
      "sampled_pass@1": arithmetic.pass_at_k(sampled["correct"], 1),
      f"sampled_pass@{config.eval_k}": arithmetic.pass_at_k(sampled["correct"], config.eval_k),
      "num_eval_problems": len(problems),
  }


def plot_loss(losses: list[tuple[int, float]], path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  steps, values = zip(*losses)
  ax.plot(steps, values)
  ax.set(xlabel="step", ylabel="completion cross-entropy (nats/token)", yscale="log",
         title="tiny reasoner training")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def train_and_evaluate(config) -> dict:
  tokenizer = arithmetic.build_tokenizer()
  problems = arithmetic.generate_problems(
      config.num_train_problems, seed=config.seed, num_ops=(config.min_ops, config.max_ops),
      max_operand=config.max_operand, split="train")
  data = arithmetic.encode_examples(tokenizer, problems, config.max_len)
  model = build_model(config, tokenizer.get_vocab_size())
  warmup = min(config.warmup_steps, config.num_steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                config.num_steps, config.learning_rate * 0.05)
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adamw(schedule, weight_decay=config.weight_decay))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(config.seed)
  losses, start = [], time.time()
  for step in (bar := tqdm(range(config.num_steps), desc="train")):
    rows = rng.integers(0, len(problems), config.batch_size)
    loss = train_step(model, optimizer, {k: v[rows] for k, v in data.items()})
    if step % config.log_every == 0 or step == config.num_steps - 1:
      losses.append((step, float(loss)))
      bar.set_postfix(loss=f"{float(loss):.4f}")
  train_seconds = time.time() - start
  metrics = evaluate(config, model, tokenizer, jax.random.key(config.seed))
  metrics.update(train_seconds=train_seconds, final_loss=losses[-1][1],
                 num_params=sum(int(np.prod(p.shape)) for p in
                                jax.tree.leaves(nnx.state(model, nnx.Param))),
                 config=config.to_dict())
  out_dir = Path(config.out_dir)
  hf_checkpoint.save_hf_checkpoint(model, tokenizer, out_dir)
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
  plot_loss(losses, out_dir / "loss.png")
  print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
  return metrics


def main(argv):
  del argv
  config = _CONFIG.value
  if config.eval_only:
    model, tokenizer = hf_checkpoint.load_hf_checkpoint(config.out_dir)
    metrics = evaluate(config, model, tokenizer, jax.random.key(config.seed))
    print(json.dumps(metrics, indent=2))
  else:
    train_and_evaluate(config)


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "tiny_lm.py"),
      "Experiment config file.")
  app.run(main)
