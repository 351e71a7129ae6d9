"""wrn_40_2 -> wrn_16_2, kd (paper: 74.92% CIFAR-100 top-1). Not run here.

Official setting: mdistiller configs/cifar100/kd.yaml.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:wrn_40_2 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_wrn40_2_wrn16_2_kd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("wrn_40_2", "wrn_16_2", "kd", paper_top1=74.92)
