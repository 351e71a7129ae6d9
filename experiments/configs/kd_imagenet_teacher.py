"""ImageNet CE run (mdistiller ImageNet protocol): the ResNet-34 teacher of the R34 -> R18 rows
(default) or, with the argument ``resnet18``, the CE baseline of those rows and of USKD.

Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_teacher.py \\
          --config.data_dir=/data/tfds --config.mesh.data=-1
      python -m experiments.kd --config=experiments/configs/kd_imagenet_teacher.py:resnet18 ...
"""
from experiments.configs import kd_tfds_base


# Reported CE top-1 (%): torchvision ResNet-34; the papers' ResNet-18 baseline.
PAPER_TOP1 = {"resnet34": 73.31, "resnet18": 69.90}


def get_config(model="resnet34"):
  return kd_tfds_base.imagenet(model, model, "ce", paper_top1=PAPER_TOP1.get(model))
