"""resnet56 -> resnet20, dkd (paper: 71.97% CIFAR-100 top-1). Not run here.

Official setting: mdistiller configs/cifar100/dkd/res56_res20.yaml.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet56 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r56_r20_dkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet56", "resnet20", "dkd", paper_top1=71.97, dkd_beta=2.0)
