"""resnet32x4 -> resnet8x4, dkd_ls (paper: 77.01% CIFAR-100 top-1). Not run here.

Official setting: LS log dkd,resnet32x4,resnet8x4,2,9 (alpha 9, beta 72).
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r32x4_r8x4_dkd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet32x4", "resnet8x4", "dkd_ls", paper_top1=77.01,
                               dkd_beta=8.0, temperature=2.0, kd_weight=9.0)
