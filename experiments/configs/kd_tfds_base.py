"""Shared builders of the TFDS KD configs (one ``kd_*.py`` file per paper table row).

CIFAR-100 follows the mdistiller protocol (SGD momentum 0.9, batch 64, 240 epochs, lr 0.05
x0.1 at epochs 150/180/210, weight decay 5e-4, pad-4 crop + flip); ImageNet the mdistiller
ImageNet one (batch 512, lr 0.2, 100 epochs, x0.1 at 30/60/90, weight decay 1e-4,
random-resized crop + flip). Teachers are trained by the same launcher (``method="ce"``,
``kd_cifar100_teacher.py`` / ``kd_imagenet_teacher.py``) and restored from ``teacher_workdir``.
"""
import ml_collections

CIFAR100_TRAIN_SIZE = 50_000
IMAGENET_TRAIN_SIZE = 1_281_167

# Official defaults per method (a config row overrides what its official command changes).
CIFAR100_RECIPES = {
    # mdistiller configs/cifar100/kd.yaml + cfg.py: CE 0.1, KD 0.9, T 4.
    "ce": {},
    "kd": {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
    # mdistiller cfg.py DKD: CE 1, alpha 1, beta 8, T 4, warmup 20 (beta per row).
    "dkd": {"ce_weight": 1.0, "kd_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0,
            "temperature": 4.0, "dkd_warmup_epochs": 20.0},
    # MLKD repo cfg.py KD block (CE 0.1, KD 0.9, T 4) and configs/cifar100/ours/*.yaml.
    "mlkd": {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
    # CTKD scripts/run_cifar_distill.sh: -r 0.1 -a 0.9, T in (1, 21), lambda 0 -> -1 over 10.
    "ctkd": {"ce_weight": 0.1, "kd_weight": 0.9},
    # DHKD README quick start: --dual_head --nonlinear --ga -r 1 -a 1 --BinaryKL_T 2.
    "dhkd": {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 2.0,
             "dhkd_aux_head": "dhkd_mlp", "dhkd_gradient_alignment": True},
}
# logit-standardization-KD tools/train.py:110-121 (--logit-stand --base-temp 2 --kd-weight 9):
# KD / MLKD get T and the KD weight; DKD gets T and alpha, beta x kd weight; CTKD (its own
# script, CTKD/scripts/run_cifar_distill.sh) gets -a 9. Rows override T and the weight.
LS_DEFAULTS = {"kd": {"temperature": 2.0, "kd_weight": 9.0},
               "dkd": {"temperature": 2.0, "kd_weight": 9.0},
               "mlkd": {"temperature": 2.0, "kd_weight": 9.0},
               "ctkd": {"kd_weight": 9.0}}


def recipe_block(name: str, defaults: dict, **overrides) -> ml_collections.ConfigDict:
  """``recipe`` block of a row: ``name`` is a method, ``<method>_ls`` adds logit
  standardization and its official defaults; ``overrides`` are the row's own settings."""
  method = name[:-3] if name.endswith("_ls") else name
  recipe = {"method": method, **defaults[method]}
  if name.endswith("_ls"):
    recipe.update(logit_standardization=True, **LS_DEFAULTS[method])
  recipe.update(overrides)
  return ml_collections.ConfigDict(recipe)


def _config(dataset, num_classes, teacher, student, name, *, batch_size, epochs, train_size,
            learning_rate, decay_epochs, weight_decay, recipe, paper_top1):
  steps_per_epoch = train_size // batch_size
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.data_dir = ""               # TFDS data_dir with the prepared dataset ("" = TFDS default)
  c.data_recipe = "crop_flip"   # the training augmentation the row needs
  c.num_classes = num_classes
  c.teacher = ml_collections.ConfigDict({"name": teacher, "kwargs": {}})
  c.student = ml_collections.ConfigDict({"name": student, "kwargs": {}})
  c.method = name
  c.teacher_workdir = f"experiments/out/kd_{dataset}_teacher_{teacher}"
  c.workdir = (c.teacher_workdir if name == "ce" and student == teacher else
               f"experiments/out/kd_{dataset}_{teacher}_{student}_{name}")
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Evaluated every epoch, as the official loops, so the best epoch (what the papers
  # report) and the final one are both recorded (results.json).
  c.train = ml_collections.ConfigDict({
      "steps": epochs * steps_per_epoch, "steps_per_epoch": steps_per_epoch,
      "batch_size": batch_size, "seed": 0, "log_every": 100, "eval_every": steps_per_epoch,
      "checkpoint_every": steps_per_epoch, "num_threads": 16, "progress": True})
  c.optimizer = ml_collections.ConfigDict({
      "learning_rate": learning_rate, "momentum": 0.9, "nesterov": False,
      "weight_decay": weight_decay, "decay_at": tuple(e / epochs for e in decay_epochs),
      "decay_factor": 0.1})
  c.recipe = recipe
  c.paper_top1 = paper_top1     # the paper's reported (best-epoch) top-1 (%) of this row
  c.run_status = "not run"      # "not run" | a RESULTS.md reference once a run is committed
  return c


def cifar100(teacher, student, name, *, paper_top1=None, learning_rate=0.05, epochs=240,
             **recipe_overrides):
  return _config("cifar100", 100, teacher, student, name, batch_size=64, epochs=epochs,
                 train_size=CIFAR100_TRAIN_SIZE, learning_rate=learning_rate,
                 decay_epochs=(150, 180, 210), weight_decay=5e-4,
                 recipe=recipe_block(name, CIFAR100_RECIPES, **recipe_overrides),
                 paper_top1=paper_top1)


# mdistiller configs/imagenet/r34_r18/{kd,dkd}.yaml: KD T=1, CE 0.5 + KD 0.5; DKD alpha 0.5,
# beta 0.5, T 1, warmup 1, CE 1. cls_KD NKD T 1, gamma 1.5; USKD 1 / 0.1 / 0.005.
IMAGENET_RECIPES = {
    "ce": {},
    "kd": {"ce_weight": 0.5, "kd_weight": 0.5, "temperature": 1.0},
    "dkd": {"ce_weight": 1.0, "kd_weight": 1.0, "dkd_alpha": 0.5, "dkd_beta": 0.5,
            "temperature": 1.0, "dkd_warmup_epochs": 1.0},
    "nkd": {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 1.0, "nkd_gamma": 1.5},
    "uskd": {"uskd_alpha": 1.0, "uskd_beta": 0.1, "uskd_mu": 0.005,
             "uskd_rank_scores": "log_probs"},
    # DHKD README ImageNet command: -r 1 -a 0.1 --linear --BinaryKL_T 2, no --ga.
    "dhkd": {"ce_weight": 1.0, "kd_weight": 0.1, "temperature": 2.0, "dhkd_aux_head": "linear",
             "dhkd_gradient_alignment": False},
}


def imagenet(teacher, student, name, *, paper_top1=None, **recipe_overrides):
  return _config("imagenet2012", 1000, teacher, student, name, batch_size=512, epochs=100,
                 train_size=IMAGENET_TRAIN_SIZE, learning_rate=0.2, decay_epochs=(30, 60, 90),
                 weight_decay=1e-4,
                 recipe=recipe_block(name, IMAGENET_RECIPES, **recipe_overrides),
                 paper_top1=paper_top1)
