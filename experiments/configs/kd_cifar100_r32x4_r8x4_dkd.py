"""resnet32x4 -> resnet8x4, dkd (paper: 76.32% CIFAR-100 top-1). Not run here.

Official setting: mdistiller configs/cifar100/dkd/res32x4_res8x4.yaml.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r32x4_r8x4_dkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet32x4", "resnet8x4", "dkd", paper_top1=76.32, dkd_beta=8.0)
