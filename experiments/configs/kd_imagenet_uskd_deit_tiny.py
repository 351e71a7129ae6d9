"""ImageNet DeiT-Tiny, USKD (teacher-free; paper: 74.42 -> 74.97% ImageNet top-1). Not runnable yet.

cls_KD configs/distillers/imagenet/deit-t_sd_img.py: USKDLoss alpha=1, beta=0.1, mu=0.005 on
the cls token at depth / 2 (channel 192), on top of mmcls's deit-tiny_pt-4xb256_in1k recipe
(AdamW, 300 epochs, mixup 0.8 + CutMix 1.0 soft labels, RandAugment, ...). The loss side is in
the library (``uskd`` takes the mixed labels: top-2 classes, cls_KD uskd.py:33-36); the data
and optimizer side (``data_recipe="deit"``) is not in ``logitlab.training`` yet, so the
launcher stops with NotImplementedError naming it rather than train a different recipe.

Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_uskd_deit_tiny.py \
        --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  c = kd_tfds_base.imagenet("deit_tiny", "deit_tiny", "uskd", paper_top1=74.97)
  c.student.kwargs = {"image_size": 224, "patch_size": 16}
  c.teacher.kwargs = dict(c.student.kwargs)
  c.data_recipe = "deit"
  return c
