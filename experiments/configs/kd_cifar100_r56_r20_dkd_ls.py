"""resnet56 -> resnet20, dkd_ls (paper: 72.32% CIFAR-100 top-1). Not run here.

Official setting: LS log dkd,resnet56,resnet20,3,18,2.0.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet56 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r56_r20_dkd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet56", "resnet20", "dkd_ls", paper_top1=72.32,
                               dkd_beta=2.0, temperature=3.0, kd_weight=18.0)
