"""The public-API contract: every public symbol of logitlab rejects bad input (issue 16).

`public_symbols()` walks every non-private module of the package and collects the functions
and classes each defines (``__all__`` where a module has one, else every name without a
leading underscore). Every such symbol needs either

* one or more ROWS: a bad-input call and the error it must raise (kind + a regex that must
  match the message, which names the argument in backticks, docs/architecture.md), or a
  documented result (``returns=`` a predicate, e.g. the NaN of the jit-value policy); or
* an EXEMPT entry with the reason it has no bad input of its own (a result container built by
  library code, a total function of a string, ...).

`test_every_public_symbol_has_a_row` fails when a public symbol has neither, so a new public
function cannot land without its contract. Rows stay cheap (tiny arrays, no training).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import logitlab


def _modules(*names):
  return [importlib.import_module(f"logitlab.{n}") for n in names]


(data_selection, datasets, distill_chunked, ghosts, ngram, nnx_logits, numerics, radius_guard,
 sampling, soft_thinking, ssb) = _modules(
     "data_selection", "datasets", "distill_chunked", "ghosts", "ngram", "nnx_logits",
     "numerics", "radius_guard", "sampling", "soft_thinking", "ssb")
(baselines, brute_force, cascade, distributions, instances, mechanisms, mnl) = _modules(
    *(f"auctions.{n}" for n in ("baselines", "brute_force", "cascade", "distributions",
                               "instances", "mechanisms", "mnl")))
(cross_entropy, dhkd, dkd, kd, nkd, standardize, uskd) = _modules(
    *(f"losses.{n}" for n in ("cross_entropy", "dhkd", "dkd", "kd", "nkd", "standardize",
                             "uskd")))
(decoder_lm, hf_checkpoint, small, vision, vision_base, mobilenet, resnet, toy, vgg, vit,
 wrn) = _modules("models.decoder_lm", "models.hf_checkpoint", "models.small", "models.vision",
                 *(f"models.vision.{n}" for n in ("base", "mobilenet", "resnet", "toy", "vgg",
                                                  "vit", "wrn")))
(grpo, logprobs, rewards, soft_grpo, trainer) = _modules(
    *(f"rl.{n}" for n in ("grpo", "logprobs", "rewards", "soft_grpo", "trainer")))
(curvature, problems, solver, transform) = _modules(
    *(f"second_order.{n}" for n in ("curvature", "problems", "solver", "transform")))
(arithmetic, math_jsonl) = _modules("tasks.arithmetic", "tasks.math_jsonl")
(checkpoint, data, loop, mesh, metrics, state, step) = _modules(
    *(f"training.{n}" for n in ("checkpoint", "data", "loop", "mesh", "metrics", "state",
                               "step")))


# ---------------------------------------------------------------------------------------------
# Enumeration.


def public_symbols() -> set[str]:
  """``module.qualname`` of every public function/class defined in a public logitlab module."""
  found = set()
  for info in pkgutil.walk_packages(logitlab.__path__, "logitlab."):
    if any(part.startswith("_") for part in info.name.split(".")[1:]):
      continue
    module = importlib.import_module(info.name)
    names = getattr(module, "__all__", None)
    if names is None:
      names = [n for n in vars(module) if not n.startswith("_")]
    for name in names:
      obj = getattr(module, name)
      if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        continue
      home = getattr(obj, "__module__", "") or ""
      if home.startswith("logitlab") and not any(p.startswith("_") for p in home.split(".")[1:]):
        found.add(f"{home}.{obj.__qualname__}")
  return found


@dataclasses.dataclass(frozen=True)
class Row:
  symbol: str                      # "module.qualname", as public_symbols() spells it
  call: Callable[[], Any]
  match: str | None = None         # regex the error message must match (names the argument)
  exc: type[BaseException] | tuple = ValueError
  returns: Callable[[Any], bool] | None = None   # documented result instead of an error
  case: str = ""
  owner: str = ""   # a known gap whose fix another issue owns: xfail (not strict) until it lands

  @property
  def id(self):
    return f"{self.symbol.removeprefix('logitlab.')}{'-' + self.case if self.case else ''}"


def arg(name: str) -> str:
  """The regex for an error naming argument ``name`` in backticks."""
  return f"`{name}`"


def is_nan(out) -> bool:
  return bool(np.all(np.isnan(np.asarray(out))))


def jit_nan(fn, *args):
  """Calls ``fn`` under jit with ``args`` traced (the traced half of the jit-value policy)."""
  return jax.jit(fn)(*args)


# ---------------------------------------------------------------------------------------------
# Small shared inputs (built lazily so collection stays cheap).

F = jnp.zeros((2, 3))                        # logits [B=2, C=3]
Y = jnp.array([0, 1])                        # labels [2]
KEY = jax.random.key(0)


@functools.cache
def tiny_lm():
  cfg = decoder_lm.LMConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1,
                            num_heads=2, num_kv_heads=1)
  return decoder_lm.DecoderLM(cfg, rngs=nnx.Rngs(0))


@functools.cache
def tokenizer():
  return arithmetic.build_tokenizer()


@functools.cache
def ngram_model():
  return ngram.build_ngram([[1, 2, 3, 1, 2]], vocab_size=5, max_order=3)


@functools.cache
def cpu_mesh():
  return mesh.make_mesh({"data": 1}, devices=jax.devices()[:1])


def one_pair_problem():
  return problems.logistic_regression(jnp.ones((4, 2)), jnp.array([0, 1, 0, 1]))


S = "logitlab."


def rows_for(module, *rows):
  return [dataclasses.replace(r, symbol=f"{module.__name__}.{r.symbol}") for r in rows]


def R(name, call, match=None, exc=ValueError, returns=None, case="", owner=""):
  return Row(name, call, match, exc, returns, case, owner)


# ---------------------------------------------------------------------------------------------
# The table.

ROWS: list[Row] = []

ROWS += rows_for(
    numerics,
    R("check_logits", lambda: numerics.check_logits("logits", jnp.zeros(())), arg("logits")),
    R("check_logits", lambda: numerics.check_logits("logits", Y), arg("logits"), TypeError,
      case="int"),
    R("check_mask", lambda: numerics.check_mask("where", jnp.ones((2, 1)), (2,)), arg("where")),
    R("check_positive", lambda: numerics.check_positive("temperature", -1.0), arg("temperature")),
    R("check_positive", lambda: numerics.check_positive("temperature", float("nan")),
      arg("temperature"), case="nan"),
    R("check_same_shape", lambda: numerics.check_same_shape(("a", "b"), F, Y), arg("a")),
    R("check_values", lambda: numerics.check_values("labels", Y < 1, "in [0, 1)"), arg("labels")),
    R("nan_unless", lambda: numerics.nan_unless(F, jnp.ones((3, 2), bool)), arg("ok")),
    R("upcast", lambda: numerics.upcast("text"), arg("x"), TypeError),
    R("masked_mean", lambda: numerics.masked_mean(F, jnp.ones((4,), bool)), arg("where")),
    R("log_softmax", lambda: numerics.log_softmax(F, 0.0), arg("temperature")),
    R("log_softmax", lambda: jit_nan(lambda t: numerics.log_softmax(F, t), -1.0),
      returns=is_nan, case="traced"),
    R("xlogy_probs", lambda: numerics.xlogy_probs(F, jnp.zeros((2, 4))), arg("log_q")),
    R("kl_divergence_from_logits", lambda: numerics.kl_divergence_from_logits(F, jnp.zeros((2, 4))),
      arg("target_logits")),
    R("entropy_from_logits", lambda: numerics.entropy_from_logits(F, -1.0), arg("temperature")),
    R("js_divergence", lambda: numerics.js_divergence(jnp.ones(3) / 3, jnp.ones(4) / 4), arg("p")),
)

ROWS += rows_for(
    ghosts,
    R("radius", lambda: ghosts.radius(F, temperature=-1.0), arg("temperature")),
    R("radius", lambda: jit_nan(lambda t: ghosts.radius(F, temperature=t), -1.0), returns=is_nan,
      case="traced"),
    R("radius", lambda: ghosts.radius(jnp.zeros((2, 0))), arg("tangent"), case="zero-classes"),
    R("binary_radius", lambda: ghosts.binary_radius(jnp.zeros(2), jnp.zeros(3)), arg("margin")),
    R("logit_spread", lambda: ghosts.logit_spread(jnp.zeros(())), arg("tangent")),
    R("normalized_step", lambda: ghosts.normalized_step(jnp.zeros((0, 3))), arg("step_tangent")),
    R("normalized_step", lambda: ghosts.normalized_step(F, temperature=0.0), arg("temperature"),
      case="temperature"),
    R("top2_radius", lambda: ghosts.top2_radius(F, F, jnp.array([0, 3])), arg("labels")),
    R("directional_logits",
      lambda: ghosts.directional_logits(lambda p: p["w"], {"w": F}, {"w": Y}), arg("direction")),
)

ROWS += rows_for(
    radius_guard,
    R("radius_guard", lambda: radius_guard.radius_guard(max_ratio=-1.0), arg("max_ratio"),
      owner="issue 12"),
    R("guard_metrics", lambda: radius_guard.guard_metrics(optax.sgd(1.0).init({"w": F})),
      arg("opt_state"), owner="issue 12"),
)

ROWS += rows_for(
    nnx_logits,
    R("nnx_logits_fn", lambda: nnx_logits.nnx_logits_fn("not a module"), arg("model"), TypeError),
)

ROWS += rows_for(
    cross_entropy,
    R("cross_entropy", lambda: cross_entropy.cross_entropy(jnp.zeros((0, 3)), jnp.zeros(0, int)),
      returns=lambda v: float(v) == 0.0, case="empty-batch"),
    R("cross_entropy", lambda: cross_entropy.cross_entropy(jnp.zeros((2, 0)), Y), arg("logits"),
      case="zero-classes"),
    R("cross_entropy", lambda: cross_entropy.cross_entropy(F, Y, label_smoothing=1.5),
      arg("label_smoothing"), case="smoothing"),
    R("cross_entropy", lambda: cross_entropy.cross_entropy(F, jnp.array([0, 3])), arg("labels"),
      case="label-range", owner="issue 14"),
    R("cross_entropy", lambda: cross_entropy.cross_entropy(F, jnp.array([0, 1, 2])),
      arg("labels"), case="batch-mismatch"),
    R("soft_cross_entropy", lambda: cross_entropy.soft_cross_entropy(F, jnp.full((2, 3), 10 / 3)),
      arg("target_probs")),
)

ROWS += rows_for(
    kd,
    R("kd", lambda: kd.kd(F, F, temperature=-1.0), arg("temperature")),
    R("kd", lambda: jit_nan(lambda t: kd.kd(F, F, temperature=t), -1.0), returns=is_nan,
      case="traced"),
    R("kd", lambda: kd.kd(F, jnp.zeros((2, 4))), arg("student_logits"), case="shape"),
)

ROWS += rows_for(
    dkd,
    R("dkd", lambda: dkd.dkd(F, F, Y, temperature=0.0), arg("temperature")),
    R("tckd", lambda: dkd.tckd(F, F, Y, temperature=0.0), arg("temperature")),
    R("nckd", lambda: dkd.nckd(F, F, Y, temperature=0.0), arg("temperature")),
    R("dkd_warmup", lambda: dkd.dkd_warmup(1, warmup=-1), returns=lambda v: float(v) == 1.0,
      case="documented: warmup <= 0 means no warmup"),
)

ROWS += rows_for(
    nkd,
    R("nkd", lambda: nkd.nkd(F, F, Y, temperature=0.0), arg("temperature")),
    R("nkd_target", lambda: nkd.nkd_target(F, F, jnp.array([0, 1, 2])), arg("labels")),
    R("nkd_non_target", lambda: nkd.nkd_non_target(F, F, Y, temperature=0.0), arg("temperature")),
)

ROWS += rows_for(
    dhkd,
    R("dhkd", lambda: dhkd.dhkd(F, F, F, Y, temperature=0.0), arg("temperature")),
    R("binary_kl_norm", lambda: dhkd.binary_kl_norm(F, F, temperature=0.0), arg("temperature")),
    R("project_conflicting", lambda: dhkd.project_conflicting({"w": F}, {"v": F}),
      arg("ce_grads")),
)

ROWS += rows_for(
    standardize,
    R("standardize", lambda: standardize.standardize(F, eps=-1.0), arg("eps")),
    R("with_standardized_logits", lambda: standardize.with_standardized_logits("kd"),
      arg("loss_fn"), TypeError),
)

ROWS += rows_for(
    uskd,
    R("uskd", lambda: uskd.uskd(F, F, Y, student_rank_scores="x"), arg("student_rank_scores")),
    R("uskd_target_soft_labels", lambda: uskd.uskd_target_soft_labels(F, jnp.array([0, 3])),
      arg("labels"), owner="issue 14"),
    R("uskd_zipf_labels", lambda: uskd.uskd_zipf_labels(F, F, Y, student_rank_scores="x"),
      arg("student_rank_scores")),
)


def _all_rows() -> list[Row]:
  return ROWS


# ---------------------------------------------------------------------------------------------
# Exemptions: public names with no bad input of their own, each with its reason.

_CONTAINER = "result/state container built by library code; its producer validates the inputs"
_BLOCK = ("building block of a registered model (built by the model with checked sizes); the "
          "model's forward validates `x`")

EXEMPT: dict[str, str] = {
    "logitlab.numerics.is_traced": "total predicate: every Python object is a valid input",
    "logitlab.ghosts.NormalizedStep": _CONTAINER,
    "logitlab.radius_guard.RadiusGuardState": _CONTAINER,
}


# ---------------------------------------------------------------------------------------------
# Tests.


def test_every_public_symbol_has_a_row():
  public = public_symbols()
  covered = {r.symbol for r in _all_rows()} | set(EXEMPT)
  missing = sorted(public - covered)
  assert not missing, (f"{len(missing)} public symbols have no contract row or exemption in "
                       f"tests/test_contracts.py:\n  " + "\n  ".join(missing))
  stale = sorted(covered - public)
  assert not stale, f"rows/exemptions for names that are not public symbols: {stale}"


def _params():
  return [pytest.param(r, id=r.id, marks=[pytest.mark.xfail(reason=f"fix owned by {r.owner}",
                                                           strict=False)] if r.owner else [])
          for r in _all_rows()]


@pytest.mark.parametrize("row", _params())
def test_bad_input(row):
  if row.returns is not None:
    out = row.call()
    assert row.returns(out), f"{row.id}: undocumented result {out!r}"
    return
  with pytest.raises(row.exc, match=row.match):
    row.call()
