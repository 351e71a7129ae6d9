"""CIFAR-100 ResNet-32x4 classifier (the KD teacher recipe: SGD 0.05, 240 epochs) for GPU/TPU.

Needs cifar100 prepared in ``data_dir`` (``tfds build cifar100`` where internet is available,
then copy the folder; see docs/scaling.md). 240 epochs x 50k / 64 = 187,500 steps.

Run:  python -m experiments.train_classifier --config=experiments/configs/classifier_cifar.py \
          --config.data_dir=/data/tfds --config.workdir=/ckpt/cifar100_resnet32x4
      (cifar10: --config.dataset=cifar10 --config.num_classes=10)
"""
import ml_collections

from experiments.configs import classifier_digits


def get_config():
  c = classifier_digits.get_config()
  c.dataset = "cifar100"
  c.num_classes = 100
  c.model = "resnet32x4"
  c.model_kwargs = ml_collections.ConfigDict()
  c.train.update({"steps": 187_500, "global_batch_size": 64, "log_every": 100,
                  "eval_every": 3_910, "checkpoint_every": 3_910, "num_threads": 16})
  c.optimizer.update({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "cosine"})
  c.workdir = "experiments/out/classifier_cifar100"
  return c
