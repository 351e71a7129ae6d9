"""vgg13 -> vgg8, kd_ls (paper: 74.36% CIFAR-100 top-1). Not run here.

Official setting: LS log kd,vgg13,vgg8,3,9.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:vgg13 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_vgg13_vgg8_kd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("vgg13", "vgg8", "kd_ls", paper_top1=74.36,
                               temperature=3.0, kd_weight=9.0)
