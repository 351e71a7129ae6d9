"""vgg13 -> vgg8, kd (paper: 72.98% CIFAR-100 top-1). Not run here.

Official setting: mdistiller configs/cifar100/kd.yaml.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:vgg13 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_vgg13_vgg8_kd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("vgg13", "vgg8", "kd", paper_top1=72.98)
