"""wrn_40_2 -> wrn_16_2, kd_ls (paper: 76.11% CIFAR-100 top-1). Not run here.

Official setting: LS log kd,wrn_40_2,wrn_16_2,2,9.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:wrn_40_2 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_wrn40_2_wrn16_2_kd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("wrn_40_2", "wrn_16_2", "kd_ls", paper_top1=76.11,
                               temperature=2.0, kd_weight=9.0)
