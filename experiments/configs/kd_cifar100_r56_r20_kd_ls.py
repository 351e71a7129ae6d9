"""R56 -> R20, KD + logit standardization (paper: 71.43% CIFAR-100 top-1).

Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet56 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r56_r20_kd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet56", "resnet20", "kd_ls", paper_top1=71.43)
