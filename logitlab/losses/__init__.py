"""Logit-distillation losses: one module per method, all pure JAX functions.

One call signature (see docs/losses.md): ``loss(student_logits, teacher_logits, labels, *,
temperature, ..., where, weights, reduction)``; logits ``[..., C]`` with any leading batch
dims, integer labels ``[...]`` (soft / mixed ``[..., C]`` labels for ``cross_entropy``, ``nkd``
and ``uskd``), ``where`` mask and ``weights`` broadcastable to ``[...]``, float32 math for
bf16 inputs, mean over valid examples by default (``reduction="none"`` gives ``[...]``).
Teachers are constants (``stop_gradient``). One out-of-range label policy: concrete labels
outside ``[0, C)`` raise a ValueError naming ``labels``; under jit that example's loss is
NaN. The training objectives of the papers (weights, warmups, heads) are in
``logitlab.kd_recipes``.

=====================  ============================================  ==================
paper                  functions                                     arXiv
=====================  ============================================  ==================
supervised term        cross_entropy, soft_cross_entropy             -
KD (Hinton 2015)       kd                                            1503.02531
DKD (CVPR 2022)        dkd, tckd, nckd, dkd_warmup                   2203.08679
NKD (ICCV 2023)        nkd, nkd_target, nkd_non_target               2303.13005
USKD (ICCV 2023)       uskd, uskd_target_soft_labels,                2303.13005
                       uskd_zipf_labels
Logit standardization  standardize, with_standardized_logits         2403.01427
DHKD                   dhkd, binary_kl_norm, project_conflicting     2411.08937
MLKD (CVPR 2023)       mlkd                                          2303.14757
CTKD (AAAI 2023)       ctkd, ctkd_temperature, ctkd_lambda,          2211.16231
                       gradient_reversal
=====================  ============================================  ==================
"""

from logitlab.losses.cross_entropy import cross_entropy, soft_cross_entropy
from logitlab.losses.ctkd import ctkd, ctkd_lambda, ctkd_temperature, gradient_reversal
from logitlab.losses.dhkd import binary_kl_norm, dhkd, project_conflicting
from logitlab.losses.dkd import dkd, dkd_warmup, nckd, tckd
from logitlab.losses.kd import kd
from logitlab.losses.mlkd import mlkd
from logitlab.losses.nkd import nkd, nkd_non_target, nkd_target
from logitlab.losses.standardize import standardize, with_standardized_logits
from logitlab.losses.uskd import uskd, uskd_target_soft_labels, uskd_zipf_labels

__all__ = [
    "binary_kl_norm",
    "cross_entropy",
    "ctkd",
    "ctkd_lambda",
    "ctkd_temperature",
    "dhkd",
    "dkd",
    "dkd_warmup",
    "gradient_reversal",
    "kd",
    "mlkd",
    "nckd",
    "nkd",
    "nkd_non_target",
    "nkd_target",
    "project_conflicting",
    "soft_cross_entropy",
    "standardize",
    "tckd",
    "uskd",
    "uskd_target_soft_labels",
    "uskd_zipf_labels",
    "with_standardized_logits",
]
