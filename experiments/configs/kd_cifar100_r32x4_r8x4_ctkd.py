"""resnet32x4 -> resnet8x4, ctkd (paper: 73.39% CIFAR-100 top-1). Not run here.

Official setting: CTKD scripts/run_cifar_distill.sh (-r 0.1 -a 0.9).
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r32x4_r8x4_ctkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet32x4", "resnet8x4", "ctkd", paper_top1=73.39)
