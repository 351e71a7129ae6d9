"""wrn_40_2 -> wrn_16_2, dkd_ls (paper: 76.39% CIFAR-100 top-1). Not run here.

Official setting: LS log dkd,wrn_40_2,wrn_16_2,2,12,2.0.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:wrn_40_2 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_wrn40_2_wrn16_2_dkd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("wrn_40_2", "wrn_16_2", "dkd_ls", paper_top1=76.39,
                               dkd_beta=2.0, temperature=2.0, kd_weight=12.0)
