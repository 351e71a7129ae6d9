"""ImageNet ResNet-18, USKD (teacher-free; paper: 69.90 -> 70.79% ImageNet top-1). Not run here.

USKD needs no teacher: the weak head on the middle feature (``middle_head``, added by
``kd_recipes.student_heads``) and the student itself give the soft labels. Loss weights and
ranking are cls_KD's (alpha=1, beta=0.1, mu=0.005; the student's *log*-softmax in the rank
score, mmcls/models/dis_losses/uskd.py:53,73, ``uskd_rank_scores="log_probs"``). The optimizer
is the mdistiller ImageNet protocol (batch 512, lr 0.2, 100 epochs), i.e. the usual
batch-256 / lr-0.1 ResNet recipe scaled linearly; the cls_KD (mmcls) schedule itself was not
compared. The CE baseline of the row is ``kd_imagenet_teacher.py:resnet18``.

Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_uskd_r18.py \
        --config.data_dir=/data/tfds
"""
from experiments.configs import kd_tfds_base


def get_config():
  return kd_tfds_base.imagenet("resnet18", "resnet18", "uskd", paper_top1=70.79)
