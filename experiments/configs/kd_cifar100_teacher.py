"""CIFAR-100 teacher (CE, mdistiller protocol) for the KD rows; argument: the model name.

Run:  python -m experiments.kd --config=experiments/configs/kd_cifar100_teacher.py:resnet32x4 \\
          --config.data_dir=/data/tfds
      (teachers of the table: resnet32x4, resnet56, wrn_40_2, vgg13; checkpoints land in
      experiments/out/kd_cifar100_teacher_<model>, where the student configs look for them)
"""
from experiments.configs import kd_tfds_base


def get_config(model="resnet32x4"):
  return kd_tfds_base.cifar100(model, model, "ce")
