"""ImageNet DeiT-Tiny, USKD (teacher-free; paper: 74.42 -> 74.97% ImageNet top-1). Not run here.

cls_KD configs/distillers/imagenet/deit-t_sd_img.py: USKDLoss alpha=1, beta=0.1, mu=0.005 on
the cls token at depth / 2 (channel 192), on top of mmcls's deit-tiny_pt-4xb256_in1k recipe
(configs/deit/deit-small_pt-4xb256_in1k.py, imagenet_bs64_swin_224.py,
imagenet_bs1024_adamw_swin.py), which this config reproduces:

* batch 4 x 256 = 1024, 300 epochs; AdamW lr 5e-4 x 1024 / 512 = 1e-3, weight decay 0.05
  (none on 1-D params, cls_token, pos_embed), betas 0.9 / 0.999, grad clip 5; linear warmup
  from 1e-3 x lr over 20 epochs, cosine to 1e-5 (``training.optimizers.adamw_warmup_cosine``);
* CE with label smoothing 0.1 on the mixed labels (``recipe.label_smoothing``);
* per image: random-resized crop 224 + flip, RandAugment (2 ops), RandomErasing 0.25
  (``data_recipe="deit"``); per batch: Mixup 0.8 or CutMix 1.0, one of them uniformly
  (``mixing``, ``training.mixing.MixedBatches``); USKD takes the mixed labels (top-2).
* No drop path and no EMA: mmcls removed both for DeiT-Small / Tiny
  (deit-small_pt-4xb256_in1k.py:1-2); no repeated augmentation (DefaultSampler).

Deviations are listed in docs/distillation.md (RandAugment operation list, bilinear resize,
per-step cosine).

Run:  python -m experiments.kd --config=experiments/configs/kd_imagenet_uskd_deit_tiny.py \
        --config.data_dir=/data/tfds
"""
import ml_collections

from experiments.configs import kd_tfds_base

EPOCHS, BATCH_SIZE = 300, 1024


def get_config():
  c = kd_tfds_base.imagenet("deit_tiny", "deit_tiny", "uskd", paper_top1=74.97,
                            label_smoothing=0.1)
  c.student.kwargs = {"image_size": 224, "patch_size": 16}
  c.teacher.kwargs = dict(c.student.kwargs)
  c.data_recipe = "deit"
  c.mixing = ml_collections.ConfigDict({"mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                                        "switch_prob": 0.5})
  steps_per_epoch = kd_tfds_base.IMAGENET_TRAIN_SIZE // BATCH_SIZE
  c.train.update({"steps": EPOCHS * steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                  "batch_size": BATCH_SIZE, "eval_every": steps_per_epoch,
                  "checkpoint_every": steps_per_epoch})
  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw_warmup_cosine", "learning_rate": 5e-4 * BATCH_SIZE / 512,
      "weight_decay": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "clip_norm": 5.0,
      "warmup_epochs": 20, "warmup_start_factor": 1e-3, "end_learning_rate": 1e-5})
  return c
