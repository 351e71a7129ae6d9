"""ImageNet-1k ResNet-18 classifier (SGD 0.1 x batch/256, 100 epochs, cosine) for a pod slice.

Needs imagenet2012 prepared in ``data_dir`` (manual download; a local or gcsfuse-mounted path:
array_record cannot read gs://; see docs/scaling.md). With a global batch of 1024:
100 epochs x 1,281,167 / 1024 = 125,100 steps.

Run (every host of a TPU slice, same command; checkpoints on storage all hosts share):
      python -m experiments.train_classifier --config=experiments/configs/classifier_imagenet.py \
          --distributed --config.data_dir=$HOME/gcs/tfds --config.workdir=/tmp/r18 \
          --config.checkpoint_dir=gs://BUCKET/runs/r18/checkpoints --config.mesh.data=-1
"""
import ml_collections

from experiments.configs import classifier_digits


def get_config():
  c = classifier_digits.get_config()
  c.dataset = "imagenet2012"
  c.num_classes = 1000
  c.model = "resnet18"
  c.model_kwargs = ml_collections.ConfigDict()
  c.train.update({"steps": 125_100, "global_batch_size": 1024, "log_every": 100,
                  "eval_every": 5_000, "checkpoint_every": 2_500, "num_threads": 32})
  c.optimizer.update({"name": "sgd", "learning_rate": 0.4, "momentum": 0.9,
                      "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 6_255})
  c.workdir = "experiments/out/classifier_imagenet"
  return c
