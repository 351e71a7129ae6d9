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
 sampling, soft_thinking, ssb, guard_placement, kd_recipes, lm_head_radius,
 radius_estimators) = _modules(
     "data_selection", "datasets", "distill_chunked", "ghosts", "ngram", "nnx_logits",
     "numerics", "radius_guard", "sampling", "soft_thinking", "ssb", "guard_placement",
     "kd_recipes", "lm_head_radius", "radius_estimators")
ctkd, mlkd, chat_template = _modules("losses.ctkd", "losses.mlkd", "models.chat_template")
batched_radius, integrity, randaugment, run_config = _modules(
    "batched_radius", "training.integrity", "training.randaugment", "training.run_config")
mixing, optimizers = _modules("training.mixing", "training.optimizers")
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
(curvature, problems, solver, transform, super_universal, gradient_methods,
 cubic_newton) = _modules(
    *(f"second_order.{n}" for n in ("curvature", "problems", "solver", "transform",
                                   "super_universal", "gradient_methods", "cubic_newton")))
(arithmetic, math_jsonl) = _modules("tasks.arithmetic", "tasks.math_jsonl")
(checkpoint, data, loop, mesh, metrics, state, step, remat) = _modules(
    *(f"training.{n}" for n in ("checkpoint", "data", "loop", "mesh", "metrics", "state",
                               "step", "remat")))


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
      if inspect.ismodule(obj) or not callable(obj):  # jitted / custom_vjp functions count
        continue
      home = getattr(obj, "__module__", "") or ""
      if home.startswith("logitlab") and not any(p.startswith("_") for p in home.split(".")[1:]):
        found.add(f"{home}.{getattr(obj, '__qualname__', name)}")
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
    R("nan_unless_positive", lambda: jit_nan(lambda t: numerics.nan_unless_positive(F, t), 0.0),
      returns=is_nan, case="traced"),
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
    R("radius_guard", lambda: radius_guard.radius_guard(max_ratio=-1.0), arg("max_ratio")),
    R("guard_metrics", lambda: radius_guard.guard_metrics(optax.sgd(1.0).init({"w": F})),
      returns=lambda metrics: metrics == {}, case="documented: {} without a guard"),
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
      case="label-range"),
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
    R("dhkd", lambda: dhkd.dhkd(F, F, Y, aux_logits=F, temperature=0.0), arg("temperature")),
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
      arg("labels")),
    R("uskd_zipf_labels", lambda: uskd.uskd_zipf_labels(F, F, Y, student_rank_scores="x"),
      arg("student_rank_scores")),
)

ROWS += rows_for(
    distill_chunked,
    R("map_token_chunks", lambda: distill_chunked.map_token_chunks(lambda x: x, (F[None],), 0),
      arg("chunk_size")),
    R("sum_token_chunks_fused", lambda: distill_chunked.sum_token_chunks_fused(
        lambda p, h, w: h.sum(), {}, jnp.zeros((1, 2, 3)), (), jnp.ones((1, 2)), 0),
      arg("chunk_size")),
    R("divergence_from_logits",
      lambda: distill_chunked.divergence_from_logits(F, F, divergence="kl"), arg("divergence")),
    R("divergence_from_logits",
      lambda: distill_chunked.divergence_from_logits(F, F, temperature=0.0), arg("temperature"),
      case="temperature"),
    R("topk_forward_kl", lambda: distill_chunked.topk_forward_kl(
        F, jnp.zeros((2, 3), jnp.int32), F, temperature=-1.0), arg("temperature")),
    R("chunked_distill_loss", lambda: distill_chunked.chunked_distill_loss(
        jnp.zeros((1, 2)), lambda p, h: h, jnp.ones((1, 2))), arg("student_hidden")),
)

ROWS += rows_for(
    data_selection,
    R("step_head_mask", lambda: data_selection.step_head_mask("a. b", [(0, 1)], num_head_tokens=-1),
      arg("num_head_tokens")),
    R("step_scores", lambda: data_selection.step_scores(F, jnp.ones((2, 4), bool),
                                                        jnp.ones((2, 3), bool)),
      arg("response_mask")),
    R("casl_scores", lambda: data_selection.casl_scores({"s_logp": jnp.zeros(3)}), arg("scores")),
    R("select_top_k", lambda: data_selection.select_top_k(jnp.zeros(3), jnp.zeros(3, int), -1),
      arg("k")),
    R("select_top_k", lambda: data_selection.select_top_k(jnp.zeros(3), jnp.zeros(2, int), 1),
      arg("question_ids"), case="length-mismatch"),
    R("response_logprobs", lambda: data_selection.response_logprobs(
        tiny_lm(), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 4))), arg("attention_mask")),
)

ROWS += rows_for(
    datasets,
    R("digits", lambda: datasets.digits(test_fraction=1.5), arg("test_fraction")),
    R("mnist1d", lambda: datasets.mnist1d(num_samples=0), arg("num_samples")),
    R("flat", lambda: datasets.flat("cifar"), arg("name")),
)

ROWS += rows_for(
    ngram,
    R("build_ngram", lambda: ngram.build_ngram([[1, 2]], vocab_size=5, max_order=0),
      arg("max_order")),
    R("build_ngram", lambda: ngram.build_ngram([[1, 7]], vocab_size=5), arg("sequences"),
      case="id-range"),
    R("order_log_probs", lambda: ngram.order_log_probs(ngram_model(), jnp.zeros((2, 5), int)),
      arg("context")),
    R("style_log_prior", lambda: ngram.style_log_prior(ngram_model(), jnp.zeros((2,), int),
                                                       order_weights=(1.0,)),
      arg("order_weights")),
    R("inject_style", lambda: ngram.inject_style(F, ngram_model(), jnp.zeros((2, 2), int),
                                                 strength=1.0), arg("logits")),
    R("shifted_contexts", lambda: ngram.shifted_contexts(ngram_model(), F), arg("tokens"),
      TypeError),
    R("perplexity", lambda: ngram.perplexity(F, jnp.ones((4,), bool)), arg("where")),
    R("style_perplexity", lambda: ngram.style_perplexity(ngram_model(), F), arg("tokens"),
      TypeError),
    R("base_perplexity", lambda: ngram.base_perplexity(jnp.zeros((1, 2, 5)),
                                                       jnp.zeros((1, 3), int)), arg("targets")),
    R("steering_js", lambda: ngram.steering_js(F, jnp.zeros((2, 4))), arg("logits")),
    R("token_overlap", lambda: ngram.token_overlap(jnp.zeros((2, 3), int), jnp.zeros((3, 3), int)),
      arg("reference_tokens")),
    R("style_vocab_overlap", lambda: ngram.style_vocab_overlap(ngram_model(), F), arg("tokens"),
      TypeError),
    R("ngram_style_policy", lambda: ngram.ngram_style_policy(
        ngram_model(), jnp.zeros((2, 3), int), jnp.zeros((3,), int), strength=1.0),
      arg("prompt_lengths")),
    R("NGramStylePolicy", lambda: ngram.NGramStylePolicy(order_weights=()),
      arg("order_weights")),
)

ROWS += rows_for(
    sampling,
    R("filter_logits", lambda: sampling.filter_logits(F, top_k=0), arg("top_k")),
    R("sample_token", lambda: sampling.sample_token(F, KEY, temperature=-1.0), arg("temperature")),
    R("sample_token", lambda: sampling.sample_token(jnp.full((1, 3), jnp.nan), KEY),
      returns=lambda t: bool(np.all(np.asarray(t) < 0)) , case="nan-row"),
    R("SamplingPolicy", lambda: sampling.SamplingPolicy(temperature=-1.0), arg("temperature")),
    R("GREEDY", lambda: sampling.GREEDY(Y, None, KEY), arg("logits"), TypeError),
    R("left_align", lambda: sampling.left_align(jnp.zeros((2, 3), int), jnp.ones((2, 4), bool)),
      arg("mask")),
    R("generate", lambda: sampling.generate(tiny_lm(), jnp.zeros((1, 2), jnp.int32),
                                            max_new_tokens=0, key=KEY), arg("max_new_tokens")),
    R("GenerateOutput", lambda: sampling.GenerateOutput(F, Y, None, None),
      returns=lambda o: o.tokens.shape == (2, 3), case="container"),
)

ROWS += rows_for(
    soft_thinking,
    R("filtered_top_k", lambda: soft_thinking.filtered_top_k(F, temperature=-1.0),
      arg("temperature")),
    R("truncate_sorted", lambda: soft_thinking.truncate_sorted(F, F.astype(int), 0),
      arg("max_topk")),
    R("soft_token_weights", lambda: soft_thinking.soft_token_weights(F, max_topk=0),
      arg("max_topk")),
    R("dirichlet_resample", lambda: soft_thinking.dirichlet_resample(KEY, F, alpha=0.0),
      arg("alpha")),
    R("gumbel_softmax_weights", lambda: soft_thinking.gumbel_softmax_weights(KEY, F, tau=0.0),
      arg("tau")),
    R("soft_embedding", lambda: soft_thinking.soft_embedding(F, F, jnp.zeros((4, 2))),
      arg("ids"), TypeError),
    R("ColdStop", lambda: soft_thinking.ColdStop(patience=0), arg("patience")),
    R("SoftThinkingPolicy", lambda: soft_thinking.SoftThinkingPolicy(end_think_id=1, mode="x"),
      arg("mode")),
    R("soft_thinking_policy", lambda: soft_thinking.soft_thinking_policy(
        jnp.zeros((4, 2)), 2, end_think_id=1, mode="x"), arg("mode")),
    R("js_top1_probe", lambda: soft_thinking.js_top1_probe(
        tiny_lm(), jnp.zeros((1, 2, 8)), jnp.zeros(1, int), jnp.ones((1, 1)),
        jnp.zeros((1, 1), int)), arg("ids")),
    R("logit_lens", lambda: soft_thinking.logit_lens(
        tiny_lm(), jnp.zeros((1, 2, 8)), jnp.zeros(1, int), jnp.zeros((1, 2), int),
        top1_weight=2.0), arg("top1_weight")),
)

ROWS += rows_for(
    ssb,
    R("teacher_prompt", lambda: ssb.teacher_prompt("q", "a", "b", template="no fields"),
      arg("template")),
    R("curate", lambda: ssb.curate(np.ones((2, 3), bool), [["1"] * 3], np.random.default_rng(0)),
      arg("answers")),
    R("align_replies", lambda: ssb.align_replies([[1]], [[1], [2]], 1, 4), arg("replies")),
    R("teacher_targets", lambda: ssb.teacher_targets(F, top_k=2), arg("teacher_logits")),
    R("ssb_loss", lambda: ssb.ssb_loss(jnp.zeros((1, 2, 3)), lambda h: h, jnp.ones((1, 2)),
                                       jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2), int),
                                       temperature=0.0), arg("temperature")),
    R("model_teacher_targets", lambda: ssb.model_teacher_targets(tiny_lm(), {}, top_k=2),
      arg("batch")),
    R("model_ssb_loss", lambda: ssb.model_ssb_loss(tiny_lm(), {}), arg("batch")),
    R("lora_train_step", lambda: ssb.lora_train_step(tiny_lm(), None, {}), arg("batch")),
    R("add_lora", lambda: ssb.add_lora(tiny_lm(), 0, rngs=nnx.Rngs(0)), arg("rank")),
    R("lora_optimizer", lambda: ssb.lora_optimizer(tiny_lm()), arg("model")),
    R("save_lora", lambda: ssb.save_lora("/tmp/contract-lora", tiny_lm(), 0), arg("model")),
    R("restore_lora", lambda: ssb.restore_lora("/nonexistent/lora", tiny_lm()), arg("directory"),
      FileNotFoundError),
)

CTR = np.array([[0.3, 0.2], [0.4, 0.1], [0.2, 0.2]])
V3 = np.array([0.5, 0.8, 0.2])

ROWS += rows_for(
    mnl,
    R("check_max_ads", lambda: mnl.check_max_ads(1.7), arg("max_ads")),
    R("check_count", lambda: mnl.check_count("num_ads", -1), arg("num_ads")),
    R("check_assignment", lambda: mnl.check_assignment(np.array([0, 0, -1]), 3, 2),
      arg("assignment")),
    R("check_instance", lambda: mnl.check_instance(V3, CTR[:2], 1), arg("ctr")),
    R("mnl_weights", lambda: mnl.mnl_weights(np.array([0.5, 1.0])), arg("ctr")),
    R("shown_weights", lambda: mnl.shown_weights(CTR, np.array([0, 5, -1])), arg("assignment")),
    R("mnl_click_probs", lambda: mnl.mnl_click_probs(CTR, np.array([0, 0, -1])),
      arg("assignment"), case="position-reused"),
    R("mnl_objective", lambda: mnl.mnl_objective(V3[:2], CTR, np.array([0, 1, -1])),
      arg("scores")),
    R("max_weight_matching", lambda: mnl.max_weight_matching(CTR, -1), arg("max_edges")),
    R("max_weight_matching", lambda: mnl.max_weight_matching(np.full((2, 2), np.nan), 1),
      arg("edge_weights"), case="nan"),
    R("mnl_allocation", lambda: mnl.mnl_allocation(V3, CTR, 1.7), arg("max_ads")),
    R("mnl_allocation", lambda: mnl.mnl_allocation(V3, np.zeros((3, 0)), 1), arg("ctr"),
      case="zero-positions"),
    R("mnl_allocation_lp", lambda: mnl.mnl_allocation_lp(V3, CTR + 0.7, 1), arg("ctr")),
)

ROWS += rows_for(
    mechanisms,
    R("vcg", lambda: mechanisms.vcg(np.array([0.5, np.nan, 0.2]), CTR, 1), arg("values")),
    R("vcg", lambda: mechanisms.vcg(-V3, CTR, 1), arg("values"), case="negative"),
    R("myerson", lambda: mechanisms.myerson(V3 + 1.0, CTR, 1, distributions.Uniform()),
      arg("values")),
    R("cascade_vcg", lambda: mechanisms.cascade_vcg(V3, CTR, max_ads=2.5), arg("max_ads")),
    R("allocation_curve", lambda: mechanisms.allocation_curve(V3, CTR, 1, 7, 1.0), arg("bidder")),
    R("threshold_payment", lambda: mechanisms.threshold_payment([], "uniform"),
      arg("distribution"), TypeError),
    R("AuctionOutcome", lambda: mechanisms.AuctionOutcome(np.array([1, -1, 0]), V3, V3).order,
      returns=lambda order: list(order) == [2, 0], case="documented: display order by position"),
)

ROWS += rows_for(
    distributions,
    R("Uniform", lambda: distributions.Uniform(1.0, 0.0), arg("low")),
    R("Exponential", lambda: distributions.Exponential(rate=0.0), arg("rate")),
    R("Identity", lambda: distributions.Identity(low=np.nan), arg("low")),
    R("Tabulated", lambda: distributions.Tabulated(np.array([0.0, 1.0]), np.array([0.5, 0.2]),
                                                   np.array([0.0, 1.0])), arg("cdf")),
    R("Tabulated", lambda: distributions.Tabulated.from_cdf(lambda v: v, 1.0, 0.0), arg("low"),
      case="from_cdf"),
    R("bimodal_uniform", lambda: distributions.bimodal_uniform(weight_low=1.5), arg("weight_low")),
)

ROWS += rows_for(
    cascade,
    R("check_cascade_instance", lambda: cascade.check_cascade_instance(V3, CTR, CTR[:2], 1),
      arg("continuation")),
    R("order_index", lambda: cascade.order_index(V3, CTR), arg("continuation")),
    R("optimal_order", lambda: cascade.optimal_order(V3, V3 + 1.0), arg("continuation")),
    R("sequence_value", lambda: cascade.sequence_value(V3, V3[:2]), arg("continuation")),
    R("best_subsequence", lambda: cascade.best_subsequence(V3, V3, -1), arg("max_items")),
    R("useful_pairs", lambda: cascade.useful_pairs(CTR, CTR, -1), arg("max_ads")),
    R("relaxation_bound", lambda: cascade.relaxation_bound(V3, CTR, max_ads=0.5), arg("max_ads")),
    R("cascade_allocation", lambda: cascade.cascade_allocation(V3, CTR, CTR * np.nan, 1),
      arg("continuation")),
    R("cascade_allocation", lambda: cascade.cascade_allocation(V3, CTR, max_ads=1, max_moves=-1),
      arg("max_moves"), case="max_moves"),
    R("cascade_click_probs", lambda: cascade.cascade_click_probs(CTR, CTR, np.array([[0, 5]])),
      arg("pairs")),
)

ROWS += rows_for(
    baselines,
    R("rank_by_value_ctr", lambda: baselines.rank_by_value_ctr(-V3, CTR, 1), arg("values")),
)

ROWS += rows_for(
    brute_force,
    R("all_matchings", lambda: brute_force.all_matchings(3, 2, -1), arg("max_ads")),
    R("mnl_brute_force", lambda: brute_force.mnl_brute_force(V3, CTR, 1.5), arg("max_ads")),
    R("cascade_sequence_value", lambda: brute_force.cascade_sequence_value(
        V3, CTR, 1 - CTR, [(0, 0), (3, 1)]), arg("sequence")),
    R("cascade_brute_force", lambda: brute_force.cascade_brute_force(V3, CTR, None, 0.5),
      arg("max_ads")),
)

ROWS += rows_for(
    instances,
    R("random_ctr", lambda: instances.random_ctr(np.random.default_rng(0), 3, 0),
      arg("num_positions")),
    R("random_continuation", lambda: instances.random_continuation(
        np.random.default_rng(0), CTR, max_exit=1.5), arg("max_exit")),
)

X2 = jnp.ones((4, 2))

ROWS += rows_for(
    problems,
    R("logistic_regression", lambda: problems.logistic_regression(X2, jnp.zeros(3)),
      arg("labels")),
    R("softmax_regression", lambda: problems.softmax_regression(X2, jnp.zeros(4, int), 0),
      arg("num_classes")),
    R("logsumexp", lambda: problems.logsumexp(X2, jnp.zeros(4), mu=0.0), arg("mu")),
    R("nonlinear_equations", lambda: problems.nonlinear_equations(X2, jnp.zeros(4), p=1.0),
      arg("p")),
    R("rosenbrock_residuals", lambda: problems.rosenbrock_residuals(jnp.zeros(1)), arg("x")),
    R("chebyshev_residuals", lambda: problems.chebyshev_residuals(jnp.zeros((2, 2))), arg("x")),
    R("chebyshev", lambda: problems.chebyshev(p=1.5), arg("p")),
    R("rosenbrock", lambda: problems.rosenbrock().value_fn(jnp.array([-1.2, 1.0])),
      returns=lambda v: abs(float(v) - 24.2) < 1e-4, case="no arguments: f(-1.2, 1) = 24.2"),
)

ROWS += rows_for(
    curvature,
    R("hessian", lambda: curvature.hessian("f"), arg("value_fn"), TypeError),
    R("zero", lambda: curvature.zero()(jnp.zeros(2))(jnp.ones(2)),
      returns=lambda hv: bool(np.all(np.asarray(hv) == 0)), case="no arguments: H v = 0"),
    R("gauss_newton", lambda: curvature.gauss_newton(lambda w: w, "loss"), arg("loss_fn"),
      TypeError),
    R("weighted_gauss_newton", lambda: curvature.weighted_gauss_newton(lambda w: w, mu=0.0),
      arg("mu")),
    R("fisher", lambda: curvature.fisher(None), arg("per_example_fn"), TypeError),
    R("rank_one", lambda: curvature.rank_one(3.0), arg("factor_fn"), TypeError),
    R("add_ridge", lambda: curvature.add_ridge(curvature.hessian(jnp.sum), -1.0), arg("l2")),
    R("scale", lambda: curvature.scale(curvature.hessian(jnp.sum), -1.0), arg("factor")),
    R("dense_matrix", lambda: curvature.dense_matrix(lambda v: v, "params"), arg("params"),
      TypeError),
)

ROWS += rows_for(
    solver,
    R("gradient_normalized_newton", lambda: solver.gradient_normalized_newton(
        jnp.sum, curvature.hessian(jnp.sum), linear_solver="lu"), arg("linear_solver")),
    R("gradient_normalized_newton", lambda: solver.gradient_normalized_newton(
        jnp.sum, curvature.hessian(jnp.sum), gamma_init=0.0), arg("gamma_init"),
      case="gamma_init"),
)

ROWS += rows_for(
    super_universal,
    R("super_universal_newton", lambda: super_universal.super_universal_newton(
        jnp.sum, curvature.hessian(jnp.sum), alpha=2.0), arg("alpha")),
)

ROWS += rows_for(
    cubic_newton,
    R("cubic_newton", lambda: cubic_newton.cubic_newton(
        jnp.sum, curvature.hessian(jnp.sum), h_init=-1.0), arg("h_init")),
)

ROWS += rows_for(
    gradient_methods,
    R("gradient_method", lambda: gradient_methods.gradient_method(jnp.sum, l_init=0.0),
      arg("l_init")),
    R("fast_gradient_method", lambda: gradient_methods.fast_gradient_method(
        jnp.sum, max_search=0), arg("max_search")),
)

ROWS += rows_for(
    transform,
    R("scale_by_gradient_normalized_newton",
      lambda: transform.scale_by_gradient_normalized_newton(gamma_init=-1.0), arg("gamma_init")),
)

ROWS += rows_for(
    grpo,
    R("group_advantages", lambda: grpo.group_advantages(jnp.zeros(5), 2), arg("rewards")),
    R("group_advantages", lambda: grpo.group_advantages(jnp.array([1.0, jnp.nan, 1.0, 2.0]), 2),
      returns=lambda adv: bool(np.all(np.isfinite(adv)) and np.all(adv[:2] == 0)),
      case="documented: a NaN reward is unscorable, advantage 0"),
    R("ppo_clipped_loss", lambda: grpo.ppo_clipped_loss(F, F, Y, dual_clip=0.5), arg("dual_clip")),
    R("aggregate", lambda: grpo.aggregate(F, F, "mean"), arg("mode")),
    R("k3_kl", lambda: grpo.k3_kl(F, jnp.zeros((2, 4))), arg("ref_logp")),
    R("grpo_loss", lambda: grpo.grpo_loss(F, F, Y, jnp.ones((2, 4))), arg("mask")),
    R("GRPOLossConfig", lambda: grpo.GRPOLossConfig(aggregation="mean"), arg("aggregation")),
)

ROWS += rows_for(
    logprobs,
    R("shift_right", lambda: logprobs.shift_right(jnp.zeros(())), arg("values")),
    R("token_logprobs_from_hidden", lambda: logprobs.token_logprobs_from_hidden(
        jnp.zeros((1, 2, 3)), jnp.zeros((1, 3), int), lambda h: h), arg("targets")),
    R("final_hidden", lambda: logprobs.final_hidden(tiny_lm(), jnp.zeros((1, 2), jnp.int32),
                                                    jnp.ones((1, 3))), arg("attention_mask")),
    R("sequence_logprobs", lambda: logprobs.sequence_logprobs(
        tiny_lm(), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 3))), arg("attention_mask")),
)

ROWS += rows_for(
    rewards,
    R("combine", lambda: rewards.combine([rewards.think_format], [1.0, 2.0]), arg("weights")),
    R("correctness", lambda: rewards.correctness(["p"], ["c", "d"], answers=[1]),
      arg("completions")),
    R("math_correctness", lambda: rewards.math_correctness(["p"], ["c", "d"], answers=["1"]),
      arg("completions")),
    R("think_format", lambda: rewards.think_format(["p"], "completion"), arg("completions"),
      TypeError),
)

ROWS += rows_for(
    soft_grpo,
    R("soft_token_logprob", lambda: soft_grpo.soft_token_logprob(F, jnp.zeros((3, 2), int), F),
      arg("ids")),
    R("mixed_logprob", lambda: soft_grpo.mixed_logprob(F, Y, jnp.zeros((3, 2), int), F, Y > 0),
      arg("ids")),
    R("mixed_logprobs_from_hidden", lambda: soft_grpo.mixed_logprobs_from_hidden(
        jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), int), jnp.zeros((1, 2, 2), int),
        jnp.zeros((1, 2, 2)), jnp.zeros((1, 2), bool), lambda h: h, chunk_size=0),
      arg("chunk_size")),
    R("soft_input_embeddings", lambda: soft_grpo.soft_input_embeddings(
        jnp.zeros((4, 2)), jnp.zeros((1, 2), int), jnp.zeros((1, 2, 2), int),
        jnp.zeros((1, 2, 2)), jnp.zeros((1, 2), bool), tau=0.0), arg("tau")),
    R("SoftGRPOPolicy", lambda: soft_grpo.SoftGRPOPolicy(end_think_id=1, top_k=0), arg("top_k")),
)

ROWS += rows_for(
    trainer,
    R("RLConfig", lambda: trainer.RLConfig(group_size=0), arg("group_size")),
    R("make_optimizer", lambda: trainer.make_optimizer(tiny_lm(), "config"), arg("config"),
      TypeError),
    R("rollout", lambda: trainer.rollout(tiny_lm(), jnp.zeros((1, 2), jnp.int32),
                                         jnp.zeros((2,), jnp.int32), KEY, trainer.RLConfig(),
                                         end_think_id=1, stop_tokens=(2,)),
      arg("prompt_lengths")),
    R("policy_logprobs", lambda: trainer.policy_logprobs(tiny_lm(), "batch", trainer.RLConfig()),
      arg("batch"), TypeError),
    R("update_step", lambda: trainer.update_step(tiny_lm(), None, "batch", F, None, Y,
                                                 trainer.RLConfig()), arg("batch"), TypeError),
    R("train_step", lambda: trainer.train_step(
        tiny_lm(), None, None, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,), jnp.int32),
        ["a", "b"], lambda *a, **k: np.zeros(1), {}, KEY, trainer.RLConfig(),
        decode=lambda tokens, lengths: [], end_think_id=1, stop_tokens=(2,)),
      arg("prompt_texts")),
)

ROWS += rows_for(
    arithmetic,
    R("solve", lambda: arithmetic.solve([1, 2], ["+", "+"]), arg("operators")),
    R("make_problem", lambda: arithmetic.make_problem(np.random.default_rng(0), 0),
      arg("num_ops")),
    R("generate_problems", lambda: arithmetic.generate_problems(2, seed=0, split="dev"),
      arg("split")),
    R("in_test_split", lambda: arithmetic.in_test_split("1+1", test_fraction=2.0),
      arg("test_fraction")),
    R("encode_prompts", lambda: arithmetic.encode_prompts(
        tokenizer(), arithmetic.generate_problems(1, seed=0), width=1), arg("width")),
    R("encode_examples", lambda: arithmetic.encode_examples(
        tokenizer(), arithmetic.generate_problems(1, seed=0), max_len=2), arg("max_len")),
    R("decode_completions", lambda: arithmetic.decode_completions(
        tokenizer(), np.zeros((2, 3), int), np.zeros(3, int)), arg("lengths")),
    R("rewards", lambda: arithmetic.rewards(tokenizer(), arithmetic.generate_problems(1, seed=0),
                                            np.zeros((2, 3), int), np.zeros(2, int)),
      arg("problems")),
    R("pass_at_k", lambda: arithmetic.pass_at_k(np.ones((2, 3), bool), 4), arg("k")),
    R("evaluate_policy", lambda: arithmetic.evaluate_policy(
        tiny_lm(), tokenizer(), arithmetic.generate_problems(1, seed=0), key=KEY, num_samples=0),
      arg("num_samples")),
)

ROWS += rows_for(
    math_jsonl,
    R("apply_template", lambda: math_jsonl.apply_template("no field", "q"), arg("template")),
    R("load_jsonl", lambda: math_jsonl.load_jsonl("/nonexistent/x.jsonl"), "/nonexistent",
      FileNotFoundError),
    R("sample_problems", lambda: math_jsonl.sample_problems([], 2, seed=0), arg("problems")),
    R("reference_answer", lambda: math_jsonl.reference_answer(3), arg("field"), TypeError),
)

ROWS += rows_for(
    data,
    R("ArraySource", lambda: data.ArraySource(x=np.zeros(3), y=np.zeros(2)), "arrays"),
    R("ResumableBatches", lambda: data.ResumableBatches(data.ArraySource(x=np.zeros(4)),
                                                        global_batch_size=0, seed=0),
      arg("global_batch_size")),
    R("eval_batches", lambda: data.eval_batches(data.ArraySource(x=np.zeros(4)),
                                                global_batch_size=0), arg("global_batch_size")),
    R("image_transform", lambda: data.image_transform("mnist2", train=True), arg("dataset")),
    R("tfds_image_data", lambda: data.tfds_image_data("mnist2", "train", global_batch_size=2,
                                                      train=True), arg("dataset")),
    R("normalize", lambda: data.normalize(np.zeros((2, 2, 3)), (0.5,) * 3, (0.0,) * 3), arg("std")),
    R("pad_crop_flip", lambda: data.pad_crop_flip(np.zeros((4, 4, 3)), np.random.default_rng(0),
                                                  pad=-1), arg("pad")),
    R("random_resized_crop", lambda: data.random_resized_crop(
        np.zeros((4, 4, 3)), np.random.default_rng(0), size=0), arg("size")),
    R("resize_center_crop", lambda: data.resize_center_crop(np.zeros((4, 4, 3)), 4, size=8),
      arg("size")),
    R("random_erasing", lambda: data.random_erasing(np.zeros((4, 4, 3), np.uint8),
                                                    np.random.default_rng(0), (0.5,) * 3,
                                                    (0.2,) * 3, probability=2.0),
      arg("probability")),
    R("random_erasing", lambda: data.random_erasing(np.zeros((4, 4, 3)), np.random.default_rng(0),
                                                    (0.5,) * 3, (0.2,) * 3),
      arg("image"), case="float"),
)
_IMAGES, _SOFT = np.zeros((2, 4, 4, 3), np.float32), np.eye(2, dtype=np.float32)
ROWS += rows_for(
    mixing,
    R("one_hot", lambda: mixing.one_hot(np.array([0, 3]), 3), arg("labels")),
    R("mixup", lambda: mixing.mixup(_IMAGES, _SOFT, 1.5, np.arange(2)), arg("lam"),
      ),
    R("mixup", lambda: mixing.mixup(_IMAGES, _SOFT, 0.5, np.array([0, 0])), arg("perm"),
      case="perm"),
    R("cutmix_box", lambda: mixing.cutmix_box(4, 4, -0.1, np.random.default_rng(0)), arg("lam"),
      ),
    R("cutmix", lambda: mixing.cutmix(_IMAGES, _SOFT, (0, 5, 0, 2), np.arange(2)), arg("box"),
      ),
    R("mixup_or_cutmix", lambda: mixing.mixup_or_cutmix(_IMAGES, _SOFT[:1],
                                                        np.random.default_rng(0)),
      arg("labels")),
    R("MixedBatches", lambda: mixing.MixedBatches(iter([]), 1, seed=0), arg("num_classes"),
      ),
)
ROWS += rows_for(
    optimizers,
    R("step_decay_sgd", lambda: optimizers.step_decay_sgd(0.1, 0), arg("steps"),
      ),
    R("decay_mask", lambda: optimizers.decay_mask({"w": "text"}), arg("params"), TypeError,
      ),
    R("warmup_cosine_schedule", lambda: optimizers.warmup_cosine_schedule(1e-3, 10, 12),
      arg("warmup_steps")),
    R("adamw_warmup_cosine", lambda: optimizers.adamw_warmup_cosine(0.0, 10, 2),
      arg("learning_rate")),
    R("from_config", lambda: optimizers.from_config({"name": "lamb"}, 10, 1), arg("name"),
      ),
)

ROWS += rows_for(
    mesh,
    R("make_mesh", lambda: mesh.make_mesh({"model": 2}), arg("shape")),
    R("constrain_batch", lambda: mesh.constrain_batch(jnp.zeros((4, 2)), axis=-1), arg("axis")),
    R("batch_sharding", lambda: mesh.batch_sharding("mesh"), arg("mesh"), TypeError),
    R("replicated", lambda: mesh.replicated("mesh"), arg("mesh"), TypeError),
    R("num_batch_shards", lambda: mesh.num_batch_shards("mesh"), arg("mesh"), TypeError),
    R("put_batch", lambda: mesh.put_batch({"x": np.zeros((3, 2))}, mesh.make_mesh(
        {"data": 2}, devices=jax.devices()[:2])),
      arg("local_batch")),
    R("divisible_spec", lambda: mesh.divisible_spec(jax.P("data"), (3, 2), cpu_mesh()),
      returns=lambda spec: isinstance(spec, jax.sharding.PartitionSpec),
      case="documented: drops axes that do not divide"),
)

ROWS += rows_for(
    metrics,
    R("require_local_dir", lambda: metrics.require_local_dir("gs://bucket/run"), arg("workdir")),
    R("batch_checksum", lambda: metrics.batch_checksum(F), arg("labels")),
    R("optimizer_scalars", lambda: metrics.optimizer_scalars("state"), arg("opt_state"),
      TypeError),
    R("read_jsonl", lambda: metrics.read_jsonl("/nonexistent/metrics.jsonl"), "/nonexistent",
      FileNotFoundError),
    R("MetricsWriter", lambda: metrics.MetricsWriter("gs://bucket/run", total_steps=1),
      arg("workdir")),
)

ROWS += rows_for(
    checkpoint,
    R("Checkpointer", lambda: checkpoint.Checkpointer("/tmp/ckpt-contract", max_to_keep=0),
      arg("max_to_keep")),
)

ROWS += rows_for(
    state,
    R("create_train_state", lambda: state.create_train_state("model", optax.sgd(0.1), cpu_mesh()),
      arg("model_fn"), TypeError),
    R("abstract_train_state", lambda: state.abstract_train_state("model", optax.sgd(0.1),
                                                                 cpu_mesh()),
      arg("model_fn"), TypeError),
    R("state_shardings", lambda: state.state_shardings("shapes", optax.sgd(0.1), cpu_mesh()),
      arg("shapes"), TypeError),
    R("abstract_state", lambda: state.abstract_state("state", "shardings"), arg("state_or_shapes"),
      TypeError),
    R("num_params", lambda: state.num_params("state"), arg("state"), TypeError),
)

ROWS += rows_for(
    step,
    R("make_train_step", lambda: step.make_train_step(None, optax.sgd(0.1), "loss", None,
                                                      cpu_mesh()), arg("loss_fn"), TypeError),
    R("make_eval_step", lambda: step.make_eval_step(None, "metrics", None, cpu_mesh()),
      arg("metrics_fn"), TypeError),
    R("radius_guard_args", lambda: step.radius_guard_args(None), arg("logits_fn")),
    R("split_micro_batches", lambda: step.split_micro_batches({"x": jnp.zeros((6, 2))}, 4),
      arg("grad_accum_steps"), case="indivisible"),
    R("split_micro_batches", lambda: step.split_micro_batches({"x": jnp.zeros((6, 2))}, 0),
      arg("grad_accum_steps"), case="zero"),
)

ROWS += rows_for(
    remat,
    R("check", lambda: remat.check("dots", ()), arg("remat_policy")),
    R("policy", lambda: remat.policy("save_only_these_names"), arg("remat_policy")),
    R("remat_blocks", lambda: remat.remat_blocks(nnx.Module(), (int,), "nothing_saveable"),
      arg("remat_modules")),
)

ROWS += rows_for(
    loop,
    R("train", lambda: loop.train(model_fn=lambda r: None, tx=optax.sgd(0.1),
                                  loss_fn=lambda *a: 0.0, train_data=iter(()), mesh=cpu_mesh(),
                                  workdir="/tmp/contract-train", num_steps=-5), arg("num_steps")),
    R("evaluate", lambda: loop.evaluate(lambda s, b: {}, None, [], cpu_mesh()), arg("batches")),
)

ROWS += rows_for(
    decoder_lm,
    R("LMConfig", lambda: decoder_lm.LMConfig(vocab_size=8, hidden_size=8, intermediate_size=8,
                                              num_layers=1, num_heads=3, num_kv_heads=2),
      arg("num_heads")),
    R("DecoderLM", lambda: tiny_lm()(jnp.zeros((1, 2))), arg("tokens")),
    R("DecoderLM", lambda: tiny_lm()(jnp.array([[1, 99]], jnp.int32)), arg("tokens"),
      case="id-out-of-vocab"),
    R("init_cache", lambda: decoder_lm.init_cache(tiny_lm().config, 0, 4), arg("batch")),
    R("positions_from_mask", lambda: decoder_lm.positions_from_mask(jnp.ones(3)), arg("mask")),
    R("rope", lambda: decoder_lm.rope(jnp.zeros((1, 2, 1, 4)), jnp.zeros((1, 3), int),
                                      jnp.ones(2)), arg("positions")),
    R("rope_frequencies", lambda: decoder_lm.rope_frequencies("config"), arg("config"), TypeError),
    R("shard_model", lambda: decoder_lm.shard_model("model", cpu_mesh()), arg("model"), TypeError),
)

ROWS += rows_for(
    hf_checkpoint,
    R("hf_name_to_path", lambda: hf_checkpoint.hf_name_to_path("model.bogus.weight"),
      "model.bogus.weight", KeyError),
    R("load_hf_checkpoint", lambda: hf_checkpoint.load_hf_checkpoint("/nonexistent/ckpt"),
      "/nonexistent", FileNotFoundError),
    R("save_hf_checkpoint", lambda: hf_checkpoint.save_hf_checkpoint("model", None, "/tmp/x"),
      arg("model"), TypeError),
)

ROWS += rows_for(
    small,
    R("build", lambda: small.build("resnet", rngs=nnx.Rngs(0)), "resnet"),
    R("MLP", lambda: small.MLP(64, 10, rngs=nnx.Rngs(0))(jnp.zeros((2, 3))), arg("x")),
    R("CNN", lambda: small.CNN(10, rngs=nnx.Rngs(0))(jnp.zeros((2, 3))), arg("x")),
    R("Linear", lambda: small.Linear(64, 10, rngs=nnx.Rngs(0))(jnp.zeros((2, 3))), arg("x")),
    R("TinyTransformer", lambda: small.TinyTransformer(10, rngs=nnx.Rngs(0))(jnp.zeros((2, 3))),
      arg("x")),
)

ROWS += rows_for(
    vision,
    R("build", lambda: vision.build("resnet7", 10, rngs=nnx.Rngs(0)), "resnet7"),
)

ROWS += rows_for(
    vision_base,
    R("alternate_axes", lambda: vision_base.alternate_axes("vocab"), arg("in_axis")),
    R("classifier_axes", lambda: vision_base.classifier_axes("vocab"), arg("in_axis")),
    R("VisionClassifier", lambda: toy.MLP(3, in_features=4, hidden=(4,), rngs=nnx.Rngs(0))(
        jnp.zeros((2, 5, 1, 1))), arg("x")),
    R("global_avg_pool", lambda: vision_base.global_avg_pool(jnp.zeros((2, 3))), arg("x")),
)

ROWS += rows_for(
    resnet,
    R("CifarResNet", lambda: resnet.CifarResNet(10, depth=7, rngs=nnx.Rngs(0)), arg("depth")),
)
ROWS += rows_for(
    wrn,
    R("WideResNet", lambda: wrn.WideResNet(10, depth=5, widen_factor=1, rngs=nnx.Rngs(0)),
      arg("depth")),
)
ROWS += rows_for(
    toy,
    R("MLP", lambda: toy.MLP(3, in_features=4, hidden=(), rngs=nnx.Rngs(0)), arg("hidden")),
    R("Conv1DNet", lambda: toy.Conv1DNet(3, channels=(4,), rngs=nnx.Rngs(0)), arg("channels")),
)

# Rows for symbols landed by issues 12-17 while this table was written (owners fix their gaps).
ROWS += rows_for(
    numerics,
    R("take_class", lambda: numerics.take_class(F, jnp.array([0, 1, 2])), arg("index")),
    R("gather_axis", lambda: numerics.gather_axis(F, axis=5), arg("axis")),
    R("soft_cap", lambda: numerics.soft_cap(F, 0.0), arg("cap")),
)
ROWS += rows_for(
    ghosts,
    R("normalized_step_from_spread",
      lambda: ghosts.normalized_step_from_spread(jnp.ones(2), temperature=-1.0),
      arg("temperature")),
)
ROWS += rows_for(
    distill_chunked,
    R("tail_logprob", lambda: distill_chunked.tail_logprob(F, Y.astype(jnp.int32)[:, None],
                                                           temperature=0.0), arg("temperature")),
    R("topk_rest_forward_kl", lambda: distill_chunked.topk_rest_forward_kl(
        F, jnp.zeros((2, 3), jnp.int32), jnp.zeros(2), F, temperature=-1.0), arg("temperature")),
)
ROWS += rows_for(
    guard_placement,
    R("fingerprint", lambda: guard_placement.fingerprint({}), arg("tree")),
    R("check", lambda: guard_placement.check("fp", F, F, True), arg("params_now"), TypeError),
    R("step_fingerprints", lambda: guard_placement.step_fingerprints(
        {"n": jnp.arange(2)}, {"n": jnp.arange(2)}), arg("params")),
)
ROWS += rows_for(
    lm_head_radius,
    R("lm_head_spread", lambda: lm_head_radius.lm_head_spread(
        jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 4)), jnp.zeros((5, 3))), arg("kernel")),
    R("lm_head_spread_fn", lambda: lm_head_radius.lm_head_spread_fn(
        lambda p: (F, F), {"w": F}, token_chunk_size=0), arg("token_chunk_size")),
    R("decoder_lm_head_inputs", lambda: lm_head_radius.decoder_lm_head_inputs(
        tiny_lm(), jnp.zeros((1, 2))), arg("tokens"), TypeError),
)
ROWS += rows_for(
    radius_estimators,
    R("global_norm", lambda: radius_estimators.global_norm("tree"), arg("tree"), TypeError),
    R("logit_spread_controller", lambda: radius_estimators.logit_spread_controller(
        optax.sgd(0.1), rho_cap=-1.0), arg("rho_cap")),
    R("step_ratio_estimator", lambda: radius_estimators.step_ratio_estimator(window=0),
      arg("window")),
    R("subsample_rows", lambda: radius_estimators.subsample_rows(1.5, F), arg("fraction")),
)
ROWS += rows_for(
    kd_recipes,
    R("Recipe", lambda: kd_recipes.Recipe(method="nope"), arg("method")),
    R("build_student", lambda: kd_recipes.build_student("recipe", None, nnx.Rngs(0)),
      arg("recipe"), TypeError),
    R("loss_terms", lambda: kd_recipes.loss_terms("recipe", {}, None, Y, 0), arg("recipe"),
      TypeError),
    R("mdistiller_epoch", lambda: kd_recipes.mdistiller_epoch(3, 0), arg("steps_per_epoch")),
    R("module_loss", lambda: kd_recipes.module_loss("recipe", None, None, None, Y, 0),
      arg("recipe"), TypeError),
    R("objective", lambda: kd_recipes.objective("recipe", None, None, None, Y, 0),
      arg("recipe"), TypeError),
    R("student_heads", lambda: kd_recipes.student_heads("recipe"), arg("recipe"), TypeError),
    R("LearnedTemperatureStudent", lambda: kd_recipes.LearnedTemperatureStudent(None),
      arg("student"), TypeError),
    R("EpochBatches", lambda: kd_recipes.EpochBatches(iter([]), 0), arg("steps_per_epoch"),
      ),
    R("batch_loss_fn", lambda: kd_recipes.batch_loss_fn(kd_recipes.Recipe("kd")),
      arg("teacher_graphdef")),
    R("batch_loss_fn", lambda: kd_recipes.batch_loss_fn("recipe"), arg("recipe"), TypeError,
      case="type"),
    R("accuracy_metrics", lambda: kd_recipes.accuracy_metrics(None, {"image": F}),
      arg("batch")),
    R("best_and_final", lambda: kd_recipes.best_and_final([]), arg("history"),
      ),
    R("restore_teacher", lambda: kd_recipes.restore_teacher(None, None, None, "/nonexistent"),
      arg("workdir"), FileNotFoundError),
)
ROWS += rows_for(
    ctkd,
    R("ctkd", lambda: ctkd.ctkd(F, jnp.zeros((2, 4)), temperature_param=jnp.zeros(()),
                                grad_scale=1.0), arg("student_logits")),
    R("ctkd_lambda", lambda: ctkd.ctkd_lambda(1, num_loops=0.0), arg("num_loops")),
    R("ctkd_temperature", lambda: ctkd.ctkd_temperature(jnp.zeros(()), 1.0, t_start=5.0,
                                                        t_end=-1.0), arg("t_end")),
    R("ctkd_temperature", lambda: jit_nan(lambda t: ctkd.ctkd_temperature(
        jnp.zeros(()), 1.0, t_end=t), 0.0), returns=is_nan, case="traced"),
    R("gradient_reversal", lambda: ctkd.gradient_reversal("x", 1.0), arg("x"), TypeError),
)
ROWS += rows_for(
    mlkd,
    R("mlkd", lambda: mlkd.mlkd(F, F, strong_student_logits=F, strong_teacher_logits=F,
                                temperature=0.0), arg("temperature")),
)
ROWS += rows_for(
    vision_base,
    R("DHKDNonlinearHead", lambda: vision_base.DHKDNonlinearHead(4, 0, rngs=nnx.Rngs(0)),
      arg("num_classes")),
)
ROWS += rows_for(
    chat_template,
    R("ChatTemplate", lambda: chat_template.ChatTemplate(template=""), arg("template")),
)
ROWS += rows_for(
    hf_checkpoint,
    R("load_generation_config", lambda: hf_checkpoint.load_generation_config("/nonexistent/c"),
      "/nonexistent", FileNotFoundError),
)
ROWS += rows_for(
    sampling,
    R("GenerationConfig", lambda: sampling.GenerationConfig(temperature=-1.0), arg("temperature")),
    R("apply_repetition_penalty", lambda: sampling.apply_repetition_penalty(F, F > 0, 0.0),
      arg("penalty")),
    R("prompt_bucket", lambda: sampling.prompt_bucket(-1), arg("prompt_len")),
)
ROWS += rows_for(
    ssb,
    R("model_teacher_hidden", lambda: ssb.model_teacher_hidden(tiny_lm(), {}), arg("batch")),
)
ROWS += rows_for(
    grpo,
    R("sequence_log_ratio", lambda: grpo.sequence_log_ratio(F, F, jnp.ones((2, 4))), arg("mask")),
)
ROWS += rows_for(
    logprobs,
    R("entropy", lambda: logprobs.entropy(F, temperature=0.0), arg("temperature")),
)
ROWS += rows_for(
    trainer,
    R("check_rewards", lambda: trainer.check_rewards(np.zeros(3), 2), arg("rewards")),
    R("rollout_policy", lambda: trainer.rollout_policy("config", end_think_id=1), arg("config"),
      TypeError),
    R("trainable", lambda: trainer.trainable("config"), arg("config"), TypeError),
    R("save_checkpoint", lambda: trainer.save_checkpoint("/tmp/contract-rl", -1, tiny_lm(), None,
                                                         trainer.RLConfig(), KEY), arg("step")),
    R("restore_checkpoint", lambda: trainer.restore_checkpoint(
        "/nonexistent/rl", tiny_lm(), None, trainer.RLConfig(), KEY, step=3), "/nonexistent",
      Exception),
)
ROWS += rows_for(
    mesh,
    R("check_mesh", lambda: mesh.check_mesh("mesh"), arg("mesh"), TypeError),
    R("explicit_axes", lambda: mesh.explicit_axes("mesh"), arg("mesh"), TypeError),
    R("auto_axes", lambda: mesh.auto_axes("fn", cpu_mesh(), None), arg("fn"), TypeError),
)

ROWS += rows_for(
    batched_radius,
    R("batch_spreads", lambda: batched_radius.batch_spreads(lambda p, b: b, {}, {}, F,
                                                            where=jnp.ones(5, bool)),
      arg("where")),
    R("dataset_ratio", lambda: batched_radius.dataset_ratio(lambda p, b: b, {}, {}, F,
                                                            batch_size=0), arg("batch_size")),
    R("microbatch_spread_fn", lambda: batched_radius.microbatch_spread_fn(
        lambda p, b: b, {}, F, where=jnp.ones(5, bool)), arg("where")),
)
ROWS += rows_for(
    integrity,
    R("all_finite", lambda: integrity.all_finite({"w": F.at[0, 0].set(jnp.nan)}),
      returns=lambda ok: not bool(ok), case="documented: False on a NaN leaf"),
    R("compare", lambda: integrity.compare({"w": [2]}, "actual"), arg("actual"), TypeError),
    R("inspect_tree", lambda: integrity.inspect_tree({"w": F.at[0, 0].set(jnp.nan)})[1],
      returns=lambda problems: len(problems) == 1, case="documented: reports the NaN leaf"),
)
ROWS += rows_for(
    mesh,
    R("fsdp_spec", lambda: mesh.fsdp_spec(jax.P(), (4,), 0, cpu_mesh()), arg("itemsize")),
)
ROWS += rows_for(
    randaugment,
    R("rand_augment", lambda: randaugment.rand_augment(np.zeros((4, 4, 3), np.uint8),
                                                       np.random.default_rng(0), num_ops=-1),
      arg("num_ops")),
    R("cutout", lambda: randaugment.cutout(None, 1.5, np.random.default_rng(0)), arg("fraction")),
)
ROWS += rows_for(
    run_config,
    R("check_resume", lambda: run_config.check_resume({"a": 1}, {"a": 2}), "a",
      exc=Exception),
    R("differences", lambda: run_config.differences({"a": 1}, "current"), arg("current"),
      TypeError),
    R("flatten", lambda: run_config.flatten({"a": {"b": 1}}),
      returns=lambda flat: flat == {"a.b": 1}, case="documented: dotted keys"),
    R("state_signature", lambda: run_config.state_signature("state"), arg("state"), TypeError),
    R("write", lambda: run_config.write("/tmp/contract-run-config", "not a mapping"),
      arg("config"), TypeError),
)

ROWS += rows_for(
    numerics,
    R("tree_vdot", lambda: numerics.tree_vdot({"w": F}, {"w": F, "v": F}), arg("b")),
)
ROWS += rows_for(
    metrics,
    R("Throughput", lambda: metrics.Throughput(examples_per_step=0, flops_per_step=None,
                                               peak_flops_per_device=None),
      arg("examples_per_step")),
    R("compiled_flops", lambda: metrics.compiled_flops(object()),
      returns=lambda flops: flops is None, case="documented: None when XLA has no cost"),
    R("peak_flops", lambda: metrics.peak_flops(jax.devices()[0]),
      returns=lambda flops: flops is None or flops > 0, case="documented: None on CPU"),
)
ROWS += rows_for(
    state,
    R("warn_fsdp_tensor_chain", lambda: state.warn_fsdp_tensor_chain({}, "mesh"), arg("mesh"),
      TypeError),
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
    # Result / state containers: built by the function that returns them.
    **{f"logitlab.{name}": _CONTAINER for name in (
        "ghosts.NormalizedStep", "radius_guard.RadiusGuardState",
        "auctions.baselines.RankedAllocation", "auctions.cascade.CascadeAllocation",
        "auctions.mnl.MNLAllocation", "auctions.mechanisms.Breakpoint",
        "second_order.problems.Problem", "second_order.solver.GNSSolver",
        "second_order.solver.GNSState", "second_order.transform.ScaleByGNSState",
        "second_order.super_universal.SuperUniversalSolver",
        "second_order.super_universal.SuperUniversalState",
        "second_order.gradient_methods.GradientSolver",
        "second_order.gradient_methods.GradientState",
        "second_order.curvature.RankOneOperator",
        "second_order.cubic_newton.CubicNewtonSolver",
        "second_order.cubic_newton.CubicNewtonState",
        "models.decoder_lm.KVCache", "models.decoder_lm.LMOutput", "ngram.NGramModel",
        "ngram.NGramStyleState", "ngram.NGramTable", "rl.soft_grpo.SoftGRPOState",
        "rl.trainer.Rollout", "soft_thinking.SoftThinkingState", "tasks.arithmetic.Problem",
        "tasks.math_jsonl.MathProblem", "training.loop.TrainResult", "training.state.TrainState",
        "training.step.StepContext", "guard_placement.Check", "guard_placement.Fingerprint",
        "guard_placement.StepFingerprints",
        "radius_estimators.LogitSpreadControllerState", "radius_estimators.RatioEstimate",
        "radius_estimators.RatioEstimator", "training.checkpoint.Restored")},
    **{f"logitlab.training.faults.{name}": "exception class (raised by the training loop)"
       for name in ("CheckpointCorruptError", "CheckpointStorageError", "ConfigMismatchError",
                    "Diverged", "Preempted")},
    "logitlab.training.faults.StopSignals": "signal-handler context manager; one bool option",
    **{f"logitlab.radius_guard.{name}": "exception / warning class (raised by the library)"
       for name in ("RadiusGuardPlacementError", "RadiusGuardPlacementWarning")},
    "logitlab.auctions.distributions.ValueDistribution":
        "typing.Protocol (an interface, never instantiated)",
    # Layers of registered models: their model builds them with checked sizes and validates `x`.
    **{f"logitlab.models.{name}": _BLOCK for name in (
        "decoder_lm.Attention", "decoder_lm.DecoderLayer", "decoder_lm.MLP", "decoder_lm.RMSNorm",
        "vision.base.ConvBN", "vision.base.MLPHead", "vision.mobilenet.DepthwiseSeparable",
        "vision.mobilenet.InvertedResidual", "vision.resnet.BasicBlock", "vision.vit.EncoderBlock",
        "vision.wrn.PreActBlock", "vision.base.conv", "vision.base.dense",
        "vision.base.batch_norm", "vision.base.conv_kernel_init", "vision.base.run_stages")},
    # Registered vision models whose forward is `VisionClassifier.forward` (row above checks
    # `x`); constructing the big ones in a contract row would cost seconds each.
    **{f"logitlab.models.vision.{name}": "forward is VisionClassifier.forward (its row checks "
       "`x`); construction sizes come from the registry" for name in (
        "mobilenet.MobileNetV1", "mobilenet.MobileNetV2", "resnet.ImageNetResNet", "vgg.VGG",
        "vit.VisionTransformer")},
    # Total functions of text: every string is valid input and the docstring gives the result
    # for text without an answer (None) or without steps ([]).
    **{f"logitlab.tasks.{name}": "total function of a string (documented None / [] result)"
       for name in ("arithmetic.extract_answer", "arithmetic.reward", "arithmetic.split_steps",
                    "math_jsonl.extract_answer", "math_jsonl.extract_normalized",
                    "math_jsonl.normalize_answer", "math_jsonl.split_steps")},
    "logitlab.tasks.arithmetic.build_tokenizer": "takes no arguments",
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
