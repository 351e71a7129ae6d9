"""resnet32x4 -> resnet8x4, mlkd_ls (paper: 78.28% CIFAR-100 top-1). Not run here.

Official setting: LS configs/cifar100/mlkd/resnet32x4_resnet8x4.yaml (lr 0.025, 480 epochs) + log mlkd,resnet32x4,resnet8x4,2,9.
Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4 --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_cifar100_r32x4_r8x4_mlkd_ls.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.cifar100("resnet32x4", "resnet8x4", "mlkd_ls", paper_top1=78.28,
                               learning_rate=0.025, epochs=480, temperature=2.0, kd_weight=9.0)
