"""resnet34 -> resnet18, nkd (paper: 71.96% ImageNet top-1). Not run here.

Official setting: cls_KD configs/distillers/imagenet/res34_distill_res18_img.py.
Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_teacher.py --config.data_dir=/data/tfds
      python -m experiments.kd --config=experiments/configs/kd_imagenet_r34_r18_nkd.py --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.imagenet("resnet34", "resnet18", "nkd", paper_top1=71.96)
