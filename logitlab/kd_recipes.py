"""Training objectives of the logit-distillation papers: the recipe layer over ``losses``.

``logitlab.losses`` holds the loss functions; a *recipe* adds what each paper's training
script does around them: which heads it trains, the CE and KD weights, the warmup and its
epoch count, the temperature, logit standardization, the head-1 / head-2 split and DHKD's
gradient alignment. Both paths of ``experiments/kd.py`` (embedded and TFDS) and the tests
call the one function here, :func:`objective`.

=========  ===========================================================================
method     objective (``w_ce = ce_weight``, ``w = kd_weight``, Z = standardize when
           ``logit_standardization``)
=========  ===========================================================================
ce         CE(z)
kd         w_ce CE(z) + w KD(Z(z), Z(z_t), T)
dkd        w_ce CE(z) + min(e / warmup, 1) w DKD(Z(z), Z(z_t), alpha, beta, T)
nkd        w_ce CE(z) + w NKD(z, z_t, T, gamma)
uskd       CE(z) + alpha L_t + beta L_non + mu L_weak(middle head)      (teacher-free)
dhkd       w_ce CE(head 1) + w BinaryKLNorm(head 2, z_t, T); optional gradient alignment
mlkd       w_ce (CE(z^w) + CE(z^s)) + w (kd + cc + bc)(weak, strong views)
ctkd       w_ce CE(z) + w KD(Z(z), Z(z_t), T = t_start + t_end sigmoid(GRL(theta, lambda(e))))
=========  ===========================================================================

``e`` is the epoch counted from 1, constant within an epoch, as mdistiller and CTKD pass it
(:func:`mdistiller_epoch`). The official sources of each row are cited in docs/distillation.md
and in the tests (tests/test_kd_recipes.py), which compare one batch's objective and
gradients with NumPy ports of the official code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from logitlab import losses, numerics
from logitlab.losses.mlkd import EXTRA_TEMPERATURES

METHODS = ("ce", "kd", "dkd", "nkd", "uskd", "dhkd", "mlkd", "ctkd")
TEACHER_FREE = ("ce", "uskd")
STANDARDIZABLE = ("kd", "dkd", "mlkd", "ctkd")
AUX_HEADS = ("linear", "dhkd_mlp")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One method's training objective; every field is a paper / official-script setting.

  Attributes:
    method: one of ``METHODS``.
    logit_standardization: Z-score both logits before the KD term (arXiv 2403.01427);
      only for ``STANDARDIZABLE`` methods.
    ce_weight: weight of the CE term (DHKD ``-r``/gamma, CTKD ``-r``).
    label_smoothing: ``eps`` of the CE term on the student's logits (the DeiT recipe's
      ``LabelSmoothLoss(0.1, mode="original")``: target ``(1 - eps) q + eps / C``, also for
      mixed labels ``q``).
    kd_weight: weight of the distillation term (DHKD ``-a``/alpha, LS ``--kd-weight``; for
      DKD it multiplies alpha and beta, as the LS script does).
    temperature: KD / DKD / NKD / BinaryKLNorm / MLKD base temperature (unused by CTKD,
      whose temperature is learned, and USKD).
    dkd_alpha, dkd_beta, dkd_warmup_epochs: DKD's TCKD / NCKD weights and linear warmup.
    nkd_gamma: NKD's non-target weight.
    uskd_alpha, uskd_beta, uskd_mu, uskd_rank_scores: USKD weights and the student scores of
      its ranking (``"log_probs"`` is the official code; ``"probs"`` the paper's formula).
    dhkd_aux_head: ``"linear"`` (official ImageNet) or ``"dhkd_mlp"`` (official CIFAR
      ``--nonlinear``: Linear(d, 200)-Dropout(0.1)-BN-ReLU-Linear(200, C)).
    dhkd_gradient_alignment: official ``--ga`` (CIFAR): the KD gradient's component that
      opposes the CE gradient is projected out, over all parameters.
    dhkd_sigmoid_eps: ``None`` (exact BinaryKLNorm) or the official clamp (1e-8).
    mlkd_extra_temperatures: MLKD's temperatures after the base one.
    ctkd_t_start, ctkd_t_end: CTKD's temperature range.
    ctkd_lambda_max, ctkd_lambda_min, ctkd_lambda_epochs: its cosine curriculum.
  """
  method: str
  logit_standardization: bool = False
  ce_weight: float = 1.0
  label_smoothing: float = 0.0
  kd_weight: float = 1.0
  temperature: float = 4.0
  dkd_alpha: float = 1.0
  dkd_beta: float = 8.0
  dkd_warmup_epochs: float = 20.0
  nkd_gamma: float = 1.5
  uskd_alpha: float = 1.0
  uskd_beta: float = 0.1
  uskd_mu: float = 0.005
  uskd_rank_scores: str = "log_probs"
  dhkd_aux_head: str = "linear"
  dhkd_gradient_alignment: bool = False
  dhkd_sigmoid_eps: float | None = None
  mlkd_extra_temperatures: tuple[float, ...] = EXTRA_TEMPERATURES
  ctkd_t_start: float = 1.0
  ctkd_t_end: float = 20.0
  ctkd_lambda_max: float = 0.0
  ctkd_lambda_min: float = -1.0
  ctkd_lambda_epochs: float = 10.0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}.")
    if self.logit_standardization and self.method not in STANDARDIZABLE:
      raise ValueError(f"`logit_standardization` applies to {STANDARDIZABLE}, not "
                       f"{self.method!r}.")
    if self.dhkd_aux_head not in AUX_HEADS:
      raise ValueError(f"`dhkd_aux_head` must be one of {AUX_HEADS}, got "
                       f"{self.dhkd_aux_head!r}.")
    if not 0.0 <= self.label_smoothing <= 1.0:
      raise ValueError(f"`label_smoothing` must be in [0, 1], got {self.label_smoothing}.")
    for name in ("temperature", "ce_weight", "kd_weight"):
      if not getattr(self, name) > 0 and not (name == "ce_weight" and self.method == "dhkd"):
        raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")

  @classmethod
  def from_config(cls, spec: Mapping[str, Any]) -> "Recipe":
    """Builds a recipe from a config block: ``method`` plus Recipe fields (unknown keys
    raise, so a misspelt setting cannot silently fall back to a default)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields)
    if unknown or "method" not in spec:
      raise ValueError(f"`recipe` must have `method` and a subset of "
                       f"{sorted(fields - {'method'})}; unknown keys {unknown}.")
    values = dict(spec)
    if "mlkd_extra_temperatures" in values:
      values["mlkd_extra_temperatures"] = tuple(values["mlkd_extra_temperatures"])
    return cls(**values)

  @property
  def needs_teacher(self) -> bool:
    return self.method not in TEACHER_FREE

  @property
  def needs_strong_view(self) -> bool:
    """MLKD trains on a weak (crop + flip) and a strong (RandAugment) view of each batch."""
    return self.method == "mlkd"


def _check_recipe(recipe) -> None:
  if not isinstance(recipe, Recipe):
    raise TypeError(f"`recipe` must be a kd_recipes.Recipe (e.g. `Recipe.from_config`), got "
                    f"{type(recipe).__name__}.")


def student_heads(recipe: Recipe) -> dict[str, Any]:
  """Keyword arguments of ``models.vision.build`` for the extra heads ``recipe`` trains."""
  _check_recipe(recipe)
  if recipe.method == "uskd":
    return {"middle_head": True}
  if recipe.method == "dhkd":
    return {"aux_head": recipe.dhkd_aux_head}
  return {}


class LearnedTemperatureStudent(nnx.Module):
  """A student plus CTKD's global temperature parameter (official ``Global_T``, init 1).

  ``forward`` adds ``"temperature_param"`` to the student's outputs; ``__call__`` returns
  the student's logits, so evaluation and checkpoints treat it like any classifier.
  """

  def __init__(self, student: nnx.Module):
    if not isinstance(student, nnx.Module) or not callable(getattr(student, "forward", None)):
      raise TypeError(f"`student` must be an nnx.Module with a `forward` method (a "
                      f"models.vision classifier), got {type(student).__name__}.")
    self.student = student
    self.temperature_param = nnx.Param(jnp.ones((), jnp.float32))

  def forward(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return {**self.student.forward(x, train=train),
            "temperature_param": self.temperature_param[...]}

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.student(x, train=train)


def build_student(recipe: Recipe, model_fn: Callable[..., nnx.Module], rngs: nnx.Rngs,
                  **kwargs) -> nnx.Module:
  """``model_fn(rngs=rngs, **student_heads(recipe), **kwargs)``, wrapped for CTKD."""
  _check_recipe(recipe)
  model = model_fn(rngs=rngs, **student_heads(recipe), **kwargs)
  return LearnedTemperatureStudent(model) if recipe.method == "ctkd" else model


def mdistiller_epoch(step: chex.Numeric, steps_per_epoch: int) -> jax.Array:
  """The epoch the official loops pass to the loss at 0-based optimizer ``step``: counted
  from 1 and constant within an epoch (mdistiller trainer ``epoch = 1 ... EPOCHS``, CTKD
  ``range(1, epochs + 1)``)."""
  if steps_per_epoch <= 0:
    raise ValueError(f"`steps_per_epoch` must be > 0, got {steps_per_epoch}.")
  return (jnp.asarray(step, jnp.int32) // steps_per_epoch + 1).astype(jnp.float32)


def _standardized(recipe: Recipe, student_logits, teacher_logits):
  if recipe.logit_standardization:
    return losses.standardize(student_logits), losses.standardize(teacher_logits)
  return student_logits, teacher_logits


def loss_terms(recipe: Recipe, student: Mapping[str, jax.Array],
               teacher: Mapping[str, jax.Array] | None, labels: chex.Array,
               epoch: chex.Numeric) -> dict[str, jax.Array]:
  """The weighted terms of ``recipe``'s objective on one batch; their sum is the loss.

  Args:
    recipe: the method and its settings.
    student: the student's outputs (``model.forward(x, train=True)``): ``logits`` and, by
      method, ``middle_logits`` (USKD), ``aux_logits`` (DHKD), ``strong_logits`` (MLKD, the
      strong view), ``temperature_param`` (CTKD).
    teacher: ``{"logits"}`` (and ``"strong_logits"`` for MLKD); None when teacher-free.
    labels: ``[N]`` integer or ``[N, C]`` soft labels (soft: CE, NKD, USKD).
    epoch: :func:`mdistiller_epoch` (DKD warmup, CTKD curriculum).
  """
  _check_recipe(recipe)
  if not isinstance(student, Mapping) or "logits" not in student:
    raise ValueError(f"`student` must be a mapping of outputs holding 'logits' "
                     f"(``model.forward(x, train=True)``), got {type(student).__name__}"
                     f"{' with keys ' + str(sorted(student)) if isinstance(student, Mapping) else ''}.")
  z = student["logits"]
  ce = losses.cross_entropy(z, labels, label_smoothing=recipe.label_smoothing)
  if recipe.method == "ce":
    return {"ce": ce}
  if recipe.method == "uskd":
    _, parts = losses.uskd(z, student["middle_logits"], labels, alpha=recipe.uskd_alpha,
                           beta=recipe.uskd_beta, mu=recipe.uskd_mu,
                           student_rank_scores=recipe.uskd_rank_scores)
    # parts["ce"] is the unsmoothed CE; the trainer's CE (label smoothing) replaces it.
    return {"ce": ce, "target": recipe.uskd_alpha * parts["target"],
            "non_target": recipe.uskd_beta * parts["non_target"],
            "weak": recipe.uskd_mu * parts["weak"]}
  if teacher is None:
    raise ValueError(f"`teacher` outputs are required by method {recipe.method!r}.")
  zt = teacher["logits"]
  w_ce, w = recipe.ce_weight, recipe.kd_weight
  if recipe.method == "kd":
    return {"ce": w_ce * ce, "kd": w * losses.kd(*_standardized(recipe, z, zt), labels,
                                                 temperature=recipe.temperature)}
  if recipe.method == "dkd":
    warmup = losses.dkd_warmup(epoch, recipe.dkd_warmup_epochs)
    term = losses.dkd(*_standardized(recipe, z, zt), labels, alpha=w * recipe.dkd_alpha,
                      beta=w * recipe.dkd_beta, temperature=recipe.temperature)
    return {"ce": w_ce * ce, "dkd": warmup * term}
  if recipe.method == "nkd":
    return {"ce": w_ce * ce, "nkd": w * losses.nkd(z, zt, labels, gamma=recipe.nkd_gamma,
                                                   temperature=recipe.temperature)}
  if recipe.method == "dhkd":
    _, parts = losses.dhkd(z, zt, labels, aux_logits=student["aux_logits"],
                           temperature=recipe.temperature,
                           sigmoid_eps=recipe.dhkd_sigmoid_eps)
    return {"ce": w_ce * parts["ce"], "binary_kl": w * parts["binary_kl"]}
  if recipe.method == "mlkd":
    strong_ce = losses.cross_entropy(student["strong_logits"], labels)
    _, parts = losses.mlkd(z, zt, labels, strong_student_logits=student["strong_logits"],
                           strong_teacher_logits=teacher["strong_logits"],
                           temperature=recipe.temperature,
                           extra_temperatures=recipe.mlkd_extra_temperatures,
                           logit_standardization=recipe.logit_standardization)
    return {"ce": w_ce * (ce + strong_ce), **{k: w * v for k, v in parts.items()}}
  if recipe.method == "ctkd":
    grad_scale = losses.ctkd_lambda(epoch, max_value=recipe.ctkd_lambda_max,
                                    min_value=recipe.ctkd_lambda_min,
                                    num_loops=recipe.ctkd_lambda_epochs)
    term = losses.ctkd(*_standardized(recipe, z, zt), labels,
                       temperature_param=student["temperature_param"], grad_scale=grad_scale,
                       t_start=recipe.ctkd_t_start, t_end=recipe.ctkd_t_end)
    return {"ce": w_ce * ce, "kd": w * term}
  raise ValueError(f"`method` must be one of {METHODS}, got {recipe.method!r}.")


def objective(recipe: Recipe, apply_fn: Callable[[Any], tuple[Mapping[str, jax.Array], Any]],
              params: Any, teacher: Mapping[str, jax.Array] | None, labels: chex.Array,
              epoch: chex.Numeric) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
  """``(loss, (terms, aux))`` whose gradient w.r.t. ``params`` is the recipe's update.

  ``apply_fn(params) -> (student_outputs, aux)`` runs the student (``aux``: e.g. updated
  BatchNorm statistics, returned untouched). Differentiate this function with
  ``jax.value_and_grad(..., has_aux=True)``.

  DHKD with gradient alignment (official ``OptimGradAlign``, DHKD helper/optimizer.py:47-60):
  with ``g_ce``, ``g_kd`` the gradients of the weighted CE and BinaryKLNorm terms over all
  parameters, the update gradient is ``g_ce + g_kd - c g_ce`` with
  ``c = min(g_kd . g_ce, 0) / |g_ce|^2``. That is the gradient of
  ``(1 - sg(c)) ce + binary_kl``, so the projection lives in the objective and any train step
  applies it (cost: two extra backward passes; ``c`` is logged as ``ga_coefficient``).
  """
  _check_recipe(recipe)
  if recipe.method == "dhkd" and recipe.dhkd_gradient_alignment:

    def two_terms(p):
      outputs, aux = apply_fn(p)
      terms = loss_terms(recipe, outputs, teacher, labels, epoch)
      return (terms["ce"], terms["binary_kl"]), (terms, aux)

    (ce, binary_kl), pullback, (terms, aux) = jax.vjp(two_terms, params, has_aux=True)
    (g_ce,) = pullback((jnp.ones_like(ce), jnp.zeros_like(binary_kl)))
    (g_kd,) = pullback((jnp.zeros_like(ce), jnp.ones_like(binary_kl)))
    dot = numerics.tree_vdot(g_kd, g_ce)
    norm_sq = numerics.tree_vdot(g_ce, g_ce)
    coefficient = jax.lax.stop_gradient(jnp.where(
        (dot < 0) & (norm_sq > 0), dot / jnp.where(norm_sq > 0, norm_sq, 1.0), 0.0))
    loss = (1.0 - coefficient) * ce + binary_kl
    return loss, ({**terms, "ga_coefficient": coefficient}, aux)
  outputs, aux = apply_fn(params)
  terms = loss_terms(recipe, outputs, teacher, labels, epoch)
  return sum(terms.values()), (terms, aux)


def module_loss(recipe: Recipe, model: nnx.Module, forward: Callable[[nnx.Module], Mapping],
                teacher: Mapping[str, jax.Array] | None, labels: chex.Array,
                epoch: chex.Numeric) -> tuple[jax.Array, dict[str, jax.Array]]:
  """:func:`objective` for a ``logitlab.training`` loss function ``(model, batch, rng)``.

  ``forward(module) -> student outputs`` runs the module in train mode; its non-parameter
  state (BatchNorm statistics, dropout RNG counters) is written back to ``model``.
  """
  _check_recipe(recipe)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(p):
    module = nnx.merge(graphdef, p, rest, copy=True)
    outputs = forward(module)
    return outputs, nnx.state(module, nnx.Not(nnx.Param))

  loss, (terms, new_rest) = objective(recipe, apply_fn, params, teacher, labels, epoch)
  nnx.update(model, new_rest)
  return loss, terms


# --- adapters to the shared training core (logitlab.training) -----------------------------


class EpochBatches:
  """Adds ``epoch [B]`` (:func:`mdistiller_epoch` of the batch's step, per example so it
  shards like the batch) to each batch of a resumable iterator.

  DKD's warmup and CTKD's curriculum read the epoch inside the jitted loss, whose signature is
  ``(model, batch, rng)``; ``get_state`` / ``set_state`` pass through, so resume keeps it.
  """

  def __init__(self, batches, steps_per_epoch: int):
    if steps_per_epoch <= 0:
      raise ValueError(f"`steps_per_epoch` must be > 0, got {steps_per_epoch}.")
    self.batches, self.steps_per_epoch = batches, steps_per_epoch

  def __iter__(self):
    return self

  def __next__(self):
    epoch = self.batches.get_state()["position"] // self.steps_per_epoch + 1
    batch = next(self.batches)
    return {**batch, "epoch": np.full(len(batch["label"]), epoch, np.float32)}

  def get_state(self):
    return self.batches.get_state()

  def set_state(self, state):
    self.batches.set_state(state)


def batch_loss_fn(recipe: Recipe, teacher_graphdef: nnx.GraphDef | None = None):
  """``loss_fn(model, batch, rng, teacher=None)`` for ``training.train`` running ``recipe``.

  ``batch`` has ``image``, ``label`` (``[B]`` or soft ``[B, C]``), ``epoch`` (see
  :class:`EpochBatches`) and, for MLKD, ``image_strong``. The teacher's arrays
  ``{"params", "model_state"}`` arrive as a jit argument (``training.train(frozen=...)``; a
  module closed over by the loss would be inlined as replicated constants) and are merged
  with ``teacher_graphdef``. MLKD runs the student on the weak view first, as the official
  ``forward_train`` (BatchNorm statistics order).
  """
  _check_recipe(recipe)
  if recipe.needs_teacher and teacher_graphdef is None:
    raise ValueError(f"`teacher_graphdef` is required by method {recipe.method!r}.")
  views = {"logits": "image"}
  if recipe.needs_strong_view:
    views["strong_logits"] = "image_strong"

  def forward(model, batch):
    outputs = model.forward(batch["image"], train=True)
    if recipe.needs_strong_view:
      outputs["strong_logits"] = model.forward(batch["image_strong"], train=True)["logits"]
    return outputs

  def loss_fn(model, batch, rng, teacher=None):
    del rng
    teacher_outputs = None
    if recipe.needs_teacher:
      if teacher is None:
        raise ValueError(f"`teacher` arrays are required by method {recipe.method!r}.")
      teacher_model = nnx.merge(teacher_graphdef, teacher["params"], teacher["model_state"])
      teacher_outputs = {key: jax.lax.stop_gradient(teacher_model(batch[view], train=False))
                         for key, view in views.items()}
    return module_loss(recipe, model, lambda m: forward(m, batch), teacher_outputs,
                       batch["label"], batch["epoch"][0])

  return loss_fn


def accuracy_metrics(model: nnx.Module, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """``training.make_eval_step`` metrics: summed top-1 hits and count over ``batch["mask"]``."""
  missing = {"image", "label", "mask"} - set(batch)
  if missing:
    raise ValueError(f"`batch` must have keys image, label, mask; missing {sorted(missing)}.")
  logits = model(batch["image"], train=False)
  correct = (jnp.argmax(logits, -1) == batch["label"]) & batch["mask"]
  return {"accuracy": jnp.sum(correct), "count": jnp.sum(batch["mask"])}


def best_and_final(history: Sequence[Mapping[str, float]]) -> dict[str, Any]:
  """Final and best evaluation of a run's ``history`` (``[{"step", "epoch", "accuracy"}]``).

  The official tables report the best epoch (mdistiller ``best_acc``, DHKD and CTKD
  ``best_acc``); logitlab's default reading is the final one. Both are returned.
  """
  if not history:
    raise ValueError("`history` must hold at least one evaluation.")
  best = max(history, key=lambda h: h["accuracy"])
  return {"accuracy": history[-1]["accuracy"], "best_accuracy": best["accuracy"],
          "best_epoch": best["epoch"], "history": list(history)}


def restore_teacher(model_fn: Callable[[nnx.Rngs], nnx.Module], tx, mesh,
                    workdir: str) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """The teacher a ``method="ce"`` run of ``training.train`` checkpointed under ``workdir``.

  ``tx`` must have the teacher run's optimizer-state structure (the checkpoint holds it).
  Returns ``(graphdef, {"params", "model_state"})``, sharded like a student's, for
  :func:`batch_loss_fn` and ``training.train(frozen=...)``.
  """
  from logitlab import training  # the training core is only needed by this adapter
  missing = FileNotFoundError(f"No teacher checkpoint under `workdir` {workdir}/checkpoints; "
                              "train it first with method='ce' (see kd_cifar100_teacher.py).")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise missing
  graphdef, abstract, _ = training.abstract_train_state(model_fn, tx, mesh)
  checkpointer = training.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  restored = checkpointer.restore(abstract)
  checkpointer.close()
  if restored is None:
    raise missing
  state, _ = restored
  return graphdef, {"params": state.params, "model_state": state.model_state}
