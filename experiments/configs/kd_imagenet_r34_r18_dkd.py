"""resnet34 -> resnet18, dkd (paper: 71.7% ImageNet top-1). Not run here.

Official setting: mdistiller configs/imagenet/r34_r18/dkd.yaml.
Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_teacher.py --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_imagenet_r34_r18_dkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.imagenet("resnet34", "resnet18", "dkd", paper_top1=71.7)
