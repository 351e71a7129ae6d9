"""ImageNet ResNet-34 teacher (CE, mdistiller ImageNet protocol) for the R34 -> R18 rows.

Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_teacher.py \\
          --config.data_dir=/data/tfds --config.mesh.data=-1
"""
from experiments.configs import kd_tfds_base


def get_config(model="resnet34"):
  return kd_tfds_base.imagenet(model, model, "ce", paper_top1=73.31)
