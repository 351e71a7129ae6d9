"""Radius guard: an optax transform that caps every update at ``r = tau / rho_a <= max_ratio``.

Controller of "Ghosts of Softmax" (arXiv 2603.13552, Prop. 5.2). Given the optimizer's
tentative update ``p`` (after Adam / momentum / learning rate), one ``jax.jvp`` along ``p``
gives the logit tangent ``J_z p`` and hence the normalized step
``r = max_x Delta_a(x; p) / (pi T)`` (see :mod:`logitlab.ghosts`). The guard applies

    s = min(1, max_ratio / r),      update = s * p.

Because ``Delta_a`` is linear in the step, the applied update has ``r(s p) = s r <= max_ratio``
in exact arithmetic. In low precision (bf16 updates or tangents) the guard makes it hold for
the update it returns: the measured spread is raised by the rounding of the tangent's dtype,
the scale keeps a margin of ``2**-8``, and the returned (cast) update is measured again and
halved (exactly, a power of two) if the cast pushed it over the cap.

Placement. optax applies a chain's stages in order and Adam is (nearly) invariant to the
scale of its input, so a guard placed *before* Adam rescales the gradient and Adam undoes
it. Two correct forms:

    radius_guard(optax.adam(lr))                      # wrapper: reads like the intent
    optax.chain(optax.adam(lr), radius_guard())       # stage after the optimizer

Any other placement (``optax.chain(radius_guard(), optax.adam(lr))``, or stages after the guard
that change the update: ``add_decayed_weights``, ``scale(-lr)``, a schedule) is *detected* at
the next step: the guard checks that ``params_t - params_{t-1}`` is the update it returned
(a random projection, :mod:`logitlab.guard_placement`; no copy of the parameters). A mismatch
raises (``on_mismatch="raise"``, default), warns (``"warn"``) or is only counted
(``"ignore"``); ``num_mismatched`` and ``applied_factor`` report it in the metrics. Under
``jit`` nothing can raise (jit-value policy): ``"raise"`` warns from the host and returns a NaN
update for that step, so an uncapped step is never applied silently.

Non-finite values. The wrapper skips a step whose proposal or tangent is non-finite (zero
update) and keeps the inner optimizer's state, so a NaN gradient cannot poison Adam's moments.
The stage form owns no optimizer state: a non-finite *proposal* is passed on unchanged (never
hidden as a zero step while Adam's state before it stays NaN and freezes training); wrap the
chain in ``optax.apply_if_finite`` to skip it with every state restored, or let the training
loop's divergence check stop the run. A finite proposal with a non-finite tangent is skipped
(zero update) in both forms. Under ``jit``, a traced ``max_ratio`` or ``temperature`` that is
not a finite number > 0 makes the update NaN (jit-value policy, docs/architecture.md).

Extra arguments of ``update`` (keyword-only; unknown ones are ignored):
  * ``logits_fn``: ``params -> logits [..., K]`` evaluated in eval mode, or
  * ``logits_jvp``: a linear map ``update pytree -> logit tangent [..., K]`` (e.g. from
    ``jax.linearize``), which saves the primal pass when you already have it;
  * ``logits_mask`` (optional): valid examples/tokens, broadcastable to ``logits.shape[:-1]``;
  * ``logits_spread``: a map ``update pytree -> per-example Delta_a [...]`` (masked entries 0)
    for estimators that never build the tangent, e.g. the LM head's chunked per-token
    spread (:func:`logitlab.lm_head_radius.lm_head_spread_fn`, no ``[B, T, V]`` tangent) or
    every micro-batch of an accumulated step (:mod:`logitlab.batched_radius`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from logitlab import ghosts, guard_placement, numerics, radius_estimators

PyTree = Any

ON_MISMATCH = ("raise", "warn", "ignore")
# Scale margin for low-precision updates: a bf16 cast moves r by up to ~0.6 %, so the
# re-measure after the cast rarely has to halve the step.
_LOW_PRECISION_MARGIN = 2.0**-8


class RadiusGuardState(NamedTuple):
  """State of :func:`radius_guard` (all scalars, for logging).

  Attributes:
    inner_state: state of the wrapped optimizer (``optax.EmptyState()`` for the stage form).
    ratio: normalized step ``r`` of the update the guard returned at the last step (the
      applied step, unless ``num_mismatched`` says a later stage changed it).
    ratio_proposed: ``r`` of the tentative update (the guard's input) at the last step.
    scale: the factor applied at the last step (0 when the step was skipped).
    num_capped: steps whose update was rescaled (``r > max_ratio``; every step with
      ``r > 0`` in ``mode="radius_step"``).
    num_skipped: steps whose proposal or tangent was non-finite (the wrapper skipped them;
      the stage form passed a non-finite proposal on, see the module docstring).
    num_mismatched: steps after which the parameters did not move by the returned update.
    applied_factor: at the last check, (applied step) / (returned step) along a random
      projection: 1 when placed correctly, ``-lr`` for a later ``scale(-lr)``.
    check_params, check_update, has_previous: the placement check's fingerprints of the
      parameters and the returned update at the last step (:mod:`logitlab.guard_placement`).
    estimate: state of the ``estimator`` (windowed radii, per-component ratios; ``None``
      with the default exact estimator).
  """
  inner_state: optax.OptState
  ratio: chex.Array
  ratio_proposed: chex.Array
  scale: chex.Array
  num_capped: chex.Array
  num_skipped: chex.Array
  num_mismatched: chex.Array
  applied_factor: chex.Array
  check_params: chex.Array
  check_update: chex.Array
  has_previous: chex.Array
  estimate: Any = None


class RadiusGuardPlacementError(RuntimeError):
  """The update the radius guard returned is not the one that reached the parameters."""


class RadiusGuardPlacementWarning(UserWarning):
  """``on_mismatch="warn"`` form of :class:`RadiusGuardPlacementError`."""


_PLACEMENT_MESSAGE = (
    "radius_guard: the parameters moved by {factor:.4g} x the update the guard returned "
    "(along a random projection), so the cap of r <= max_ratio did not hold for the step that "
    "was applied. A stage after the guard changes the update: place the guard last, "
    "`radius_guard(optax.adam(lr))` or `optax.chain(optax.adam(lr), radius_guard())`, not "
    "`optax.chain(radius_guard(), optax.adam(lr))` and no `add_decayed_weights` / `scale` / "
    "schedule after it. (on_mismatch='warn' or 'ignore' to continue; docs/radius_guard.md)")


def _report_mismatch(mode: str, mismatch, factor, *, traced: bool = False) -> None:
  mismatch, factor = np.asarray(mismatch), np.asarray(factor)
  if not mismatch.any():
    return
  message = _PLACEMENT_MESSAGE.format(factor=float(factor[mismatch].reshape(-1)[0]))
  if mode == "raise" and not traced:
    raise RadiusGuardPlacementError(message)
  if mode == "raise":
    message += (" Under jit the guard cannot raise: it returned a NaN update for this step "
                "(on_mismatch='raise').")
  warnings.warn(message, RadiusGuardPlacementWarning, stacklevel=2)


def _explicit(x) -> bool:
  """Whether ``x`` is typed on a mesh with Explicit axes, where XLA needs both branches of a
  conditional to agree on the (replicated) sharding of the callback's result."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  return bool(getattr(mesh, "explicit_axes", ()))


def _reported(mode: str, mismatch, factor):
  """``mismatch``, after reporting it on the host.

  Eager (concrete values): ``"raise"`` raises :class:`RadiusGuardPlacementError`, ``"warn"``
  warns. Traced (under ``jit``): both warn from a ``jax.pure_callback`` inside ``lax.cond``,
  so the host is only called on a mismatch; the caller makes the update NaN for ``"raise"``
  (the jit-value policy, docs/architecture.md). Why no exception under ``jit``: an exception
  in a callback of a multi-device program leaves the other devices waiting in the
  collective that broadcasts the callback's result, and the process aborts. Why not
  ``jax.debug.callback`` (which may raise): its effect takes every jitted train step off
  JAX's C++ dispatch path, about 20 us per argument leaf per call (1.2 ms for 60 leaves;
  docs/radius_guard.md). The callback's (false) result is or-ed into ``mismatch`` so that it
  is not removed as dead code.
  """
  if not (numerics.is_traced(mismatch) or numerics.is_traced(factor)):
    _report_mismatch(mode, mismatch, factor)
    return jnp.asarray(mismatch)

  def host(m, f):
    _report_mismatch(mode, m, f, traced=True)
    return np.zeros(np.shape(m), bool)

  def call(m, f):
    r = jax.pure_callback(host, jax.ShapeDtypeStruct(m.shape, bool), m, f,
                          vmap_method="expand_dims")
    return jax.sharding.reshard(r, jax.typeof(m).sharding) if _explicit(m) else r

  mismatch, factor = jax.lax.stop_gradient((mismatch, factor))
  return mismatch | jax.lax.cond(mismatch, call, lambda m, f: jnp.zeros_like(m), mismatch,
                                 factor)


def _tangent_of(updates, params, logits_fn, logits_jvp):
  if logits_jvp is not None:
    return logits_jvp(updates)
  if logits_fn is None:
    raise ValueError(
        "radius_guard needs the extra argument `logits_fn` (params -> logits [..., K]), "
        "`logits_jvp` (update -> logit tangent [..., K]) or `logits_spread` (update -> "
        "per-example spread) in `update(..., logits_fn=...)`. With flax.nnx use "
        "logitlab.nnx_logits_fn(model, x) and pass it to "
        "`optimizer.update(model, grads, logits_fn=...)`.")
  if params is None:
    raise ValueError("radius_guard with `logits_fn` needs `params` in `update(..., params)`.")
  _, tangent = ghosts.directional_logits(logits_fn, params, updates)
  return tangent


def _spread_of(update, params, logits_fn, logits_jvp, logits_mask, logits_spread):
  """Per-example ``Delta_a`` of ``update``, raised by the rounding of a low-precision tangent
  (each of max and min is off by at most eps/2 of its magnitude)."""
  if logits_spread is not None:
    return numerics.upcast(logits_spread(update))
  tangent = _tangent_of(update, params, logits_fn, logits_jvp)
  numerics.check_logits("logits tangent", tangent)
  numerics.check_mask("logits_mask", logits_mask, tangent.shape[:-1])
  spread = ghosts.logit_spread(tangent, where=logits_mask)
  if jnp.finfo(tangent.dtype).bits < 32:
    rounding = jnp.finfo(tangent.dtype).eps * jnp.max(jnp.abs(numerics.upcast(tangent)), -1)
    spread = spread + (rounding if logits_mask is None else
                       jnp.where(jnp.asarray(logits_mask, bool), rounding, 0.0))
  return spread


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _is_low_precision(tree) -> bool:
  return any(jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
             for x in jax.tree.leaves(tree))


def radius_guard(
    inner: optax.GradientTransformation | None = None,
    *,
    max_ratio: float | jax.Array = 1.0,
    temperature: float | jax.Array = 1.0,
    on_mismatch: str = "raise",
    mode: str = "cap",
    estimator: "radius_estimators.RatioEstimator | None" = None,
) -> optax.GradientTransformationExtraArgs:
  """Caps each update at normalized step ``r <= max_ratio`` (see module docstring).

  Args:
    inner: optimizer whose output is guarded (``radius_guard(optax.adam(lr))``). ``None``
      gives a stage to place *after* the optimizer in ``optax.chain``.
    max_ratio: the cap on ``r = tau / rho_a``, a finite number > 0. ``1.0`` is the paper's
      controller; the bound is conservative, so values up to a few still train safely.
    temperature: softmax temperature ``T`` of the loss the logits feed (``softmax(z / T)``),
      a finite number > 0.
    on_mismatch: what to do when the parameters did not move by the update the guard
      returned (a stage after the guard changed it): ``"raise"`` a
      :class:`RadiusGuardPlacementError` (under ``jit``: a warning and a NaN update for
      that step), ``"warn"`` or ``"ignore"`` (metrics only).
    mode: ``"cap"`` scales down to ``r <= max_ratio``; ``"radius_step"`` (the reference
      code's radius stepping, ``experiments/resnetnatural/run.py`` L235-296 of
      piyush314/ghosts-of-softmax) scales every step to ``r = max_ratio``, up as well as
      down, so the inner optimizer's learning rate does not matter (only its direction).
      A proposal with ``r = 0`` (no logit moves) is applied unchanged.
    estimator: how ``r`` is measured; ``None`` is the exact JVP over the batch (a bound).
      :func:`logitlab.radius_estimators.step_ratio_estimator` gives the reference code's
      finite-difference, quantile, windowed-minimum and attention/FFN variants. The bf16
      re-measure after the cast uses the exact JVP only (an estimator is not a bound).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`RadiusGuardState`.
  """
  numerics.check_positive("max_ratio", max_ratio)
  numerics.check_positive("temperature", temperature)
  if on_mismatch not in ON_MISMATCH:
    raise ValueError(f"`on_mismatch` must be one of {ON_MISMATCH}, got {on_mismatch!r}.")
  if mode not in ("cap", "radius_step"):
    raise ValueError(f"`mode` must be 'cap' or 'radius_step', got {mode!r}.")
  is_wrapper = inner is not None
  inner = optax.with_extra_args_support(inner if is_wrapper else optax.identity())

  def init_fn(params):
    zero_f, zero_i = jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32)
    return RadiusGuardState(
        inner_state=inner.init(params), ratio=zero_f, ratio_proposed=zero_f,
        scale=jnp.ones([], jnp.float32), num_capped=zero_i, num_skipped=zero_i,
        num_mismatched=zero_i, applied_factor=jnp.ones([], jnp.float32),
        check_params=zero_f, check_update=zero_f, has_previous=jnp.zeros([], bool),
        estimate=None if estimator is None else estimator.init())

  def update_fn(updates, state, params=None, *, logits_fn: Callable | None = None,
                logits_jvp: Callable | None = None, logits_mask: chex.Array | None = None,
                logits_spread: Callable | None = None, **extra_args):
    # Eager calls raise on bad values; traced ones poison the update below.
    numerics.check_positive("max_ratio", max_ratio)
    numerics.check_positive("temperature", temperature)
    cap = jnp.asarray(max_ratio, jnp.float32)
    temp = jnp.asarray(temperature, jnp.float32)
    hyper_ok = jnp.isfinite(cap) & (cap > 0) & jnp.isfinite(temp) & (temp > 0)
    measure = functools.partial(_spread_of, params=params, logits_fn=logits_fn,
                                logits_jvp=logits_jvp, logits_mask=logits_mask,
                                logits_spread=logits_spread)
    ratio_of = lambda u: ghosts.normalized_step_from_spread(measure(u), temperature=temp).ratio

    # The guard's own arguments are not forwarded: stages such as
    # scale_by_backtracking_linesearch reject extras their value_fn does not take.
    proposal, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    estimate = state.estimate
    if estimator is not None:
      ratio, estimate = estimator.ratio(proposal, state.estimate, params, logits_fn=logits_fn,
                                        logits_jvp=logits_jvp, logits_mask=logits_mask,
                                        temperature=temperature)
    else:
      ratio = ratio_of(proposal)
    ratio_finite = jnp.isfinite(ratio)
    wants_scale = ratio_finite & ((ratio > 0) if mode == "radius_step" else (ratio > cap))
    low_precision = _is_low_precision(proposal) and estimator is None
    target = cap * (1.0 - _LOW_PRECISION_MARGIN) if low_precision else cap
    # ratio > 0 where `wants_scale`, so the division is safe there.
    scale = jnp.where(wants_scale, target / jnp.where(wants_scale, ratio, 1.0), 1.0)
    # The placement check's fingerprints and the proposal's finiteness: one pass per leaf
    # over (params, proposal), independent of `scale`, so it overlaps the JVP.
    fingerprints = (None if params is None else
                    guard_placement.step_fingerprints(params, proposal))
    proposal_finite = (_all_finite(proposal) if fingerprints is None else
                       fingerprints.proposal_finite)
    finite = ratio_finite & proposal_finite
    capped = finite & wants_scale
    # jnp.where rather than multiplication: 0 * NaN would still be NaN.
    guarded = jax.tree.map(
        lambda p: jnp.where(finite, p * scale.astype(p.dtype), jnp.zeros_like(p)), proposal)
    applied_ratio = jnp.where(finite, scale * ratio, 0.0)
    if low_precision:
      # The cast of s * p rounds each entry; measure what is returned and halve (exactly)
      # until the cap holds. Only capped steps are re-measured.
      def remeasure(guarded):
        r = ratio_of(guarded)
        halvings = jnp.where(r > cap, jnp.ceil(jnp.log2(r / cap)), 0.0)
        factor = jnp.exp2(-halvings)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), guarded), r * factor

      guarded, applied_ratio = jax.lax.cond(
          capped, remeasure, lambda g: (g, applied_ratio), guarded)
    if not is_wrapper:
      # The stage form owns no optimizer state: never hide a non-finite proposal as a
      # zero step (the optimizer before it is poisoned); pass it on.
      guarded = jax.tree.map(lambda g, p: jnp.where(proposal_finite, g, p), guarded, proposal)
    inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state,
                               state.inner_state)

    check_params, check_update, has_previous = (state.check_params, state.check_update,
                                                state.has_previous)
    mismatch, factor = jnp.zeros([], bool), state.applied_factor
    usable = hyper_ok
    if params is not None:
      now = fingerprints.params
      mismatch, factor = guard_placement.check(now, state.check_params, state.check_update,
                                               state.has_previous)
      if on_mismatch == "raise":  # reached only under jit: eager calls raise below
        usable = usable & ~mismatch
      if on_mismatch != "ignore":
        # Only the counter waits for the host: the update does not (no serialization).
        mismatch = _reported(on_mismatch, mismatch, factor)
    guarded = jax.tree.map(lambda g: jnp.where(usable, g, jnp.full_like(g, jnp.nan)), guarded)
    if params is not None:
      check_params = now.value
      if low_precision:  # the re-measure may have halved the returned update
        check_update = guard_placement.fingerprint(guarded).value
      else:
        # = fingerprint(guarded): `scale * proposal` where the step is kept, 0 where skipped,
        # the (non-finite) proposal where the stage passes it on, NaN where poisoned.
        kept = finite | (~proposal_finite if not is_wrapper else False)
        check_update = jnp.where(usable, jnp.where(kept, scale * fingerprints.update, 0.0),
                                 jnp.nan)
      has_previous = jnp.ones([], bool)

    new_state = RadiusGuardState(
        inner_state=inner_state,
        ratio=applied_ratio.astype(jnp.float32),
        ratio_proposed=ratio.astype(jnp.float32),
        scale=jnp.where(finite, scale, 0.0),
        num_capped=state.num_capped + capped.astype(jnp.int32),
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32),
        num_mismatched=state.num_mismatched + mismatch.astype(jnp.int32),
        applied_factor=factor.astype(jnp.float32),
        check_params=check_params, check_update=check_update, has_previous=has_previous,
        estimate=estimate,
    )
    return guarded, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_METRICS = ("ratio", "ratio_proposed", "scale", "num_capped", "num_skipped", "num_mismatched",
            "applied_factor")


def guard_metrics(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """``guard/<name>`` for ``ratio`` (of the returned step), ``ratio_proposed``, ``scale``,
  ``num_capped``, ``num_skipped``, ``num_mismatched`` and ``applied_factor``.

  Works on any nesting (chain, inject_hyperparams, MultiSteps). With several guards the
  outermost one is reported. Returns ``{}`` when the state holds no guard.
  """
  found = []

  def visit(node):
    if isinstance(node, RadiusGuardState):
      found.append(node)
      return True
    return False

  jax.tree.leaves(opt_state, is_leaf=visit)
  if not found:
    return {}
  s = found[0]
  # Inside nnx.Optimizer the leaves are nnx.OptArray variables; `[...]` reads their value.
  value = lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x[...])
  metrics = {f"guard/{name}": value(getattr(s, name)) for name in _METRICS}
  if s.estimate is not None:
    parts = value(s.estimate.components)
    for i, name in enumerate(radius_estimators.COMPONENTS):
      metrics[f"guard/ratio_{name}"] = parts[i]
  return metrics
