"""Shared builders of the TFDS KD configs (one ``kd_*.py`` file per paper table row).

CIFAR-100 follows the mdistiller protocol (SGD momentum 0.9, batch 64, 240 epochs, lr 0.05
x0.1 at epochs 150/180/210, weight decay 5e-4, pad-4 crop + flip); ImageNet the mdistiller
ImageNet one (batch 512, lr 0.2, 100 epochs, x0.1 at 30/60/90, weight decay 1e-4,
random-resized crop + flip). Teachers are trained by the same launcher (``method="ce"``,
``kd_cifar100_teacher.py`` / ``kd_imagenet_teacher.py``) and restored from ``teacher_workdir``.
"""
import ml_collections

from experiments.configs import kd_embedded

CIFAR100_TRAIN_SIZE = 50_000
IMAGENET_TRAIN_SIZE = 1_281_167


def _config(dataset, num_classes, teacher, student, method, *, batch_size, epochs, train_size,
            learning_rate, decay_epochs, weight_decay, loss, paper_top1):
  steps_per_epoch = train_size // batch_size
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.data_dir = ""               # TFDS data_dir with the prepared dataset ("" = TFDS default)
  c.num_classes = num_classes
  c.teacher = ml_collections.ConfigDict({"name": teacher, "kwargs": {}})
  c.student = ml_collections.ConfigDict({"name": student, "kwargs": {}})
  c.method = method
  c.teacher_workdir = f"experiments/out/kd_{dataset}_teacher_{teacher}"
  c.workdir = (c.teacher_workdir if method == "ce" and student == teacher else
               f"experiments/out/kd_{dataset}_{teacher}_{student}_{method}")
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.train = ml_collections.ConfigDict({
      "steps": epochs * steps_per_epoch, "steps_per_epoch": steps_per_epoch,
      "batch_size": batch_size, "seed": 0, "log_every": 100, "eval_every": steps_per_epoch * 10,
      "checkpoint_every": steps_per_epoch, "num_threads": 16, "progress": True})
  c.optimizer = ml_collections.ConfigDict({
      "learning_rate": learning_rate, "momentum": 0.9, "nesterov": False,
      "weight_decay": weight_decay, "decay_at": tuple(e / epochs for e in decay_epochs),
      "decay_factor": 0.1})
  c.loss = loss
  c.paper_top1 = paper_top1     # the paper's reported top-1 (%) for this row, for RESULTS.md
  return c


def cifar100(teacher, student, method, *, paper_top1=None, **loss_overrides):
  return _config("cifar100", 100, teacher, student, method, batch_size=64, epochs=240,
                 train_size=CIFAR100_TRAIN_SIZE, learning_rate=0.05,
                 decay_epochs=(150, 180, 210), weight_decay=5e-4,
                 loss=kd_embedded.loss_defaults(**loss_overrides), paper_top1=paper_top1)


def imagenet(teacher, student, method, *, paper_top1=None, **loss_overrides):
  # mdistiller ImageNet: KD T=1, CE 0.5 + KD 0.5; DKD alpha=beta=0.5, T=1, 1 warmup epoch;
  # NKD (cls_KD) T=1, gamma=1.5.
  loss = kd_embedded.loss_defaults(
      kd_temperature=1.0, kd_ce_weight=0.5, kd_weight=0.5, dkd_alpha=0.5, dkd_beta=0.5,
      dkd_warmup_epochs=1.0, nkd_temperature=1.0, nkd_gamma=1.5, uskd_alpha=1.0,
      uskd_beta=0.1, uskd_mu=0.005)
  loss.update(loss_overrides)
  return _config("imagenet2012", 1000, teacher, student, method, batch_size=512, epochs=100,
                 train_size=IMAGENET_TRAIN_SIZE, learning_rate=0.2, decay_epochs=(30, 60, 90),
                 weight_decay=1e-4, loss=loss, paper_top1=paper_top1)
