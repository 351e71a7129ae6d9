"""Radius guard: an optax transform that caps every update at ``r = tau / rho_a <= max_ratio``.

Controller of "Ghosts of Softmax" (arXiv 2603.13552, Prop. 5.2). Given the optimizer's
tentative update ``p`` (after Adam / momentum / learning rate), one ``jax.jvp`` along ``p``
gives the logit tangent ``J_z p`` and hence the normalized step
``r = max_x Delta_a(x; p) / (pi T)`` (see :mod:`logitlab.ghosts`). The guard applies

    s = min(1, max_ratio / r),      update = s * p.

Because ``Delta_a`` is linear in the step, the applied update has ``r(s p) = s r <= max_ratio``
exactly (up to float rounding). A non-finite tangent or update skips the step (zero update)
and is counted; the parameters never become NaN through the guard.

Placement. optax applies a chain's stages in order and Adam is (nearly) invariant to the
scale of its input, so a guard placed *before* Adam rescales the gradient and Adam undoes
it: ``optax.chain(radius_guard(), optax.adam(lr))`` does not cap the step. Two correct forms:

    radius_guard(optax.adam(lr))                      # wrapper: reads like the intent
    optax.chain(optax.adam(lr), radius_guard())       # stage after the optimizer

The wrapper additionally keeps the inner optimizer's state unchanged on a skipped step, so
a NaN gradient cannot poison Adam's moments (the chain form cannot do that; pair it with
``optax.apply_if_finite`` if you need it).

Extra arguments of ``update`` (keyword-only; unknown ones are ignored):
  * ``logits_fn``: ``params -> logits [..., K]`` evaluated in eval mode, or
  * ``logits_jvp``: a linear map ``update pytree -> logit tangent [..., K]`` (e.g. from
    ``jax.linearize``), which saves the primal pass when you already have it;
  * ``logits_mask`` (optional): valid examples/tokens, broadcastable to ``logits.shape[:-1]``;
  * ``logits_spread``: a map ``update pytree -> per-example Delta_a [...]`` (masked entries 0)
    for estimators that never build the tangent, e.g. the LM head's chunked per-token
    spread (:func:`logitlab.lm_head_radius.lm_head_spread_fn`, no ``[B, T, V]`` tangent).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from logitlab import ghosts
from logitlab import radius_estimators

PyTree = Any


class RadiusGuardState(NamedTuple):
  """State of :func:`radius_guard` (all scalars, for logging).

  Attributes:
    inner_state: state of the wrapped optimizer (``optax.EmptyState()`` for the stage form).
    ratio: normalized step ``r`` of the tentative update at the last step (before capping).
    scale: the factor applied at the last step (0 when the step was skipped).
    num_capped: steps whose update was rescaled (``r > max_ratio``; every step with
      ``r > 0`` in ``mode="radius_step"``).
    num_skipped: steps skipped because the tangent or the update was non-finite.
    estimate: state of the ``estimator`` (windowed radii, per-component ratios; ``None``
      with the default exact estimator).
  """
  inner_state: optax.OptState
  ratio: chex.Array
  scale: chex.Array
  num_capped: chex.Array
  num_skipped: chex.Array
  estimate: Any = None


def _tangent_of(updates, params, logits_fn, logits_jvp):
  if logits_jvp is not None:
    return logits_jvp(updates)
  if logits_fn is None:
    raise ValueError(
        "radius_guard needs the extra argument `logits_fn` (params -> logits [..., K]) or "
        "`logits_jvp` (update -> logit tangent [..., K]) in `update(..., logits_fn=...)`. "
        "With flax.nnx use logitlab.nnx_logits_fn(model, x) and pass it to "
        "`optimizer.update(model, grads, logits_fn=...)`.")
  if params is None:
    raise ValueError("radius_guard with `logits_fn` needs `params` in `update(..., params)`.")
  _, tangent = ghosts.directional_logits(logits_fn, params, updates)
  return tangent


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def radius_guard(
    inner: optax.GradientTransformation | None = None,
    *,
    max_ratio: float | jax.Array = 1.0,
    temperature: float | jax.Array = 1.0,
    mode: str = "cap",
    estimator: "radius_estimators.RatioEstimator | None" = None,
) -> optax.GradientTransformationExtraArgs:
  """Caps each update at normalized step ``r <= max_ratio`` (see module docstring).

  Args:
    inner: optimizer whose output is guarded (``radius_guard(optax.adam(lr))``). ``None``
      gives a stage to place *after* the optimizer in ``optax.chain``.
    max_ratio: the cap on ``r = tau / rho_a``. ``1.0`` is the paper's controller; the bound
      is conservative, so values up to a few still train safely in practice.
    temperature: softmax temperature ``T`` of the loss the logits feed (``softmax(z / T)``).
    mode: ``"cap"`` scales down to ``r <= max_ratio``; ``"radius_step"`` (the reference
      code's radius stepping, ``experiments/resnetnatural/run.py`` L235-296 of
      piyush314/ghosts-of-softmax) scales every step to ``r = max_ratio``, up as well as
      down, so the inner optimizer's learning rate does not matter (only its direction).
      A proposal with ``r = 0`` (no logit moves) is applied unchanged.
    estimator: how ``r`` is measured; ``None`` is the exact JVP over the batch (a bound).
      :func:`logitlab.radius_estimators.step_ratio_estimator` gives the reference code's
      finite-difference, quantile, windowed-minimum and attention/FFN variants.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`RadiusGuardState`.
  """
  if mode not in ("cap", "radius_step"):
    raise ValueError(f"`mode` must be 'cap' or 'radius_step', got {mode!r}.")
  inner = optax.with_extra_args_support(inner if inner is not None else optax.identity())

  def init_fn(params):
    return RadiusGuardState(
        inner_state=inner.init(params),
        ratio=jnp.zeros([], jnp.float32),
        scale=jnp.ones([], jnp.float32),
        num_capped=jnp.zeros([], jnp.int32),
        num_skipped=jnp.zeros([], jnp.int32),
        estimate=None if estimator is None else estimator.init(),
    )

  def update_fn(updates, state, params=None, *, logits_fn: Callable | None = None,
                logits_jvp: Callable | None = None, logits_mask: chex.Array | None = None,
                logits_spread: Callable | None = None, **extra_args):
    # The guard's own arguments are not forwarded: stages such as
    # scale_by_backtracking_linesearch reject extras their value_fn does not take.
    proposal, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    estimate = state.estimate
    if estimator is not None:
      ratio, estimate = estimator.ratio(proposal, state.estimate, params, logits_fn=logits_fn,
                                        logits_jvp=logits_jvp, logits_mask=logits_mask,
                                        temperature=temperature)
    elif logits_spread is not None:
      ratio = ghosts.normalized_step_from_spread(logits_spread(proposal),
                                                 temperature=temperature).ratio
    else:
      tangent = _tangent_of(proposal, params, logits_fn, logits_jvp)
      ratio = ghosts.normalized_step(tangent, temperature=temperature, where=logits_mask).ratio
    finite = jnp.isfinite(ratio) & _all_finite(proposal)
    max_ratio_f32 = jnp.asarray(max_ratio, jnp.float32)
    if mode == "radius_step":
      capped = finite & (ratio > 0)
    else:
      capped = finite & (ratio > max_ratio_f32)
    # ratio > 0 inside the `capped` branch, so the division is safe there.
    scale = jnp.where(capped, max_ratio_f32 / jnp.where(capped, ratio, 1.0), 1.0)
    scale = jnp.where(finite, scale, 0.0)
    # jnp.where rather than multiplication: 0 * NaN would still be NaN.
    guarded = jax.tree.map(
        lambda p: jnp.where(finite, p * scale.astype(p.dtype), jnp.zeros_like(p)), proposal)
    inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state,
                               state.inner_state)
    new_state = RadiusGuardState(
        inner_state=inner_state,
        ratio=ratio.astype(jnp.float32),
        scale=scale,
        num_capped=state.num_capped + capped.astype(jnp.int32),
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32),
        estimate=estimate,
    )
    return guarded, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def guard_metrics(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """Extracts ``ratio``, ``scale``, ``num_capped``, ``num_skipped`` from an optimizer state.

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
  metrics = {"guard/ratio": value(s.ratio), "guard/scale": value(s.scale),
             "guard/num_capped": value(s.num_capped),
             "guard/num_skipped": value(s.num_skipped)}
  if s.estimate is not None:
    parts = value(s.estimate.components)
    for i, name in enumerate(radius_estimators.COMPONENTS):
      metrics[f"guard/ratio_{name}"] = parts[i]
  return metrics
