"""resnet56 -> resnet20, kd_ls (paper: 71.43% CIFAR-100 top-1). Not run here.

Official setting: LS log kd,resnet56,resnet20,2,9.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet56 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r56_r20_kd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet56", "resnet20", "kd_ls", paper_top1=71.43,
                               temperature=2.0, kd_weight=9.0)
