"""resnet56 -> resnet20, ctkd (paper: 71.19% CIFAR-100 top-1). Not run here.

Official setting: CTKD scripts/run_cifar_distill.sh (its example row).
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet56 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r56_r20_ctkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet56", "resnet20", "ctkd", paper_top1=71.19)
