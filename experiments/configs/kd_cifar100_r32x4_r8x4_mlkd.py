"""resnet32x4 -> resnet8x4, mlkd (paper: 77.08% CIFAR-100 top-1). Not run here.

Official setting: MLKD configs/cifar100/ours/res32x4_res8x4.yaml (lr 0.025, 240 epochs).
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r32x4_r8x4_mlkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet32x4", "resnet8x4", "mlkd", paper_top1=77.08,
                               learning_rate=0.025)
