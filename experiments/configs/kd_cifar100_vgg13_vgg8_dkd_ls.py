"""vgg13 -> vgg8, dkd_ls (paper: 74.81% CIFAR-100 top-1). Not run here.

Official setting: LS log dkd,vgg13,vgg8,2,15,2.0 (beta 2, not the DKD row's 6).
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:vgg13 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_vgg13_vgg8_dkd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("vgg13", "vgg8", "dkd_ls", paper_top1=74.81,
                               dkd_beta=2.0, temperature=2.0, kd_weight=15.0)
