"""resnet34 -> resnet18, kd (paper: 71.03% ImageNet top-1). Not run here.

Official setting: mdistiller configs/imagenet/r34_r18/kd.yaml.
Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_teacher.py --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_imagenet_r34_r18_kd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.imagenet("resnet34", "resnet18", "kd", paper_top1=71.03)
