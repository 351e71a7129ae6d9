"""Classifier on scikit-learn digits (embedded, no download): the CPU default of the launcher.

Run:  python -m experiments.train_classifier --config=experiments/configs/classifier_digits.py
      python -m experiments.train_classifier --config=experiments/configs/classifier_digits.py \
          --config.train.steps=100 --config.mesh.fsdp=2 --config.optimizer.radius_guard=True
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"          # digits | cifar10 | cifar100 | imagenet2012
  c.data_dir = ""               # TFDS data_dir (prepared beforehand; "" = TFDS default)
  c.num_classes = 10
  c.model = "mlp"               # a name in logitlab.models.vision.REGISTRY
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": (64, 64)})
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.train = ml_collections.ConfigDict({
      "steps": 300, "global_batch_size": 64, "seed": 0, "log_every": 10, "eval_every": 100,
      "checkpoint_every": 50, "keep_checkpoints": 3, "num_threads": 2,
      "on_nonfinite": "stop"})
  # eval_every: 0 = evaluate only at the end, < 0 = never. on_nonfinite: stop | skip.
  c.optimizer = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
      "warmup_steps": 0, "schedule": "constant",  # constant | cosine
      "radius_guard": False, "max_ratio": 1.0})
  c.workdir = "experiments/out/classifier_digits"  # metrics.jsonl, tb/ (local or mounted)
  c.checkpoint_dir = ""         # "" = <workdir>/checkpoints; gs://... on a multi-host slice
  return c
