"""Step-ratio estimators and batch aggregations for :func:`logitlab.radius_guard`.

The guard's default measures ``r = max_x Delta_a(x; p) / (pi T)`` of the optimizer's
proposal ``p`` with one exact ``jax.jvp`` (:mod:`logitlab.ghosts`). The reference code of
"Ghosts of Softmax" (github piyush314/ghosts-of-softmax, commit 5a9638c) also uses cheaper or
broader variants; each is an option here, built by :func:`step_ratio_estimator` and passed
as ``radius_guard(..., estimator=...)``:

* ``method="finite_difference"``: ``a ~ (z(theta + h p) - z(theta)) / h`` with the parameter
  displacement ``||h p|| = eps`` (``experiments/resnetnatural/run.py`` L106-120,
  ``estimate_rho_fd``, eps 1e-4). Two forward passes, no JVP.
* ``aggregate="quantile"``: the ``q``-quantile of the per-example spreads instead of the max
  (the paper suggests the 99th percentile, untested; the reference's FFN radius uses a
  1 % quantile, ``experiments/tfmbottlenecks/run.py`` L213-216). No longer a bound.
* ``window=W``: the radius per unit step ``rho_a = ||p|| / r`` is replaced by its minimum over
  the last ``W`` steps (the current one included), so one easy minibatch cannot open the cap.
  The reference imports ``collections.deque`` for it (``tfmbottlenecks/run.py`` L24) but at
  commit 5a9638c has no windowed minimum; ours is written from the issue's description.
* ``components=("output", "attention", "ffn")``: ``logits_fn`` returns a dict
  ``{"logits", "attention_logits", "attention_mask", "ffn_preactivations"}`` and the ratio is
  the network-wide maximum (radius minimum) of
  - output: ``max Delta_a / (pi T)``;
  - attention: ``max over (layer, example, head, query) of Delta`` of the attention-logit
    tangent over the attended keys, ``/ pi`` (``tfmbottlenecks/run.py`` L205-211);
  - FFN: ``1 / quantile_{ffn_quantile}(|u| / |du|)`` over the pre-activations ``u`` of the
    kinked nonlinearity: the distance to the nearest kink (L213-218, 1 % quantile);
  combined as ``min(rho_out, rho_attn, rho_ffn)`` (L220; ``src/ghosts/radii.py`` L169-195).

Subsampled JVP (opt-in): pass a ``logits_fn`` built on :func:`subsample_rows` of the batch.
The guard then caps ``r`` over the subsample only; ``r_sub <= r_batch`` always (a max over
fewer examples), so the batch's ``r`` may exceed ``max_ratio``: the applied step is inside
the convergence disc of every *sampled* example, not of every example (measured in
docs/radius_guard.md). The reference measures on the first 256 examples of each batch
(``resnetnatural/run.py`` L200-202, L271-272).

The JVP-free logit-spread controller of the reference (``src/ghosts/control.py``) is a
different transform: :func:`logit_spread_controller`.

Measured errors against the exact JVP: docs/radius_guard.md ("Estimators").
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from logitlab import ghosts
from logitlab import numerics

Array = jax.Array
PyTree = Any
COMPONENTS = ("output", "attention", "ffn")


class RatioEstimate(NamedTuple):
  """State of a :class:`RatioEstimator` (scalars; logged by ``guard_metrics``).

  Attributes:
    window: radii per unit step ``rho_a = ||p|| / r`` of the last ``W`` steps (``+inf``
      before they exist), newest last.
    components: ``r`` of each requested component, in ``COMPONENTS`` order (0 if absent).
  """
  window: Array
  components: Array


class RatioEstimator(NamedTuple):
  """``init() -> RatioEstimate``; ``ratio(proposal, state, params, **guard_args) -> (r, state)``."""
  init: Callable[[], RatioEstimate]
  ratio: Callable[..., tuple[Array, RatioEstimate]]


def global_norm(tree: PyTree) -> Array:
  """``sqrt(sum_leaves sum x^2)`` in float32 over the numeric leaves of ``tree`` (0 if none)."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, (str, bytes)) or not (hasattr(leaf, "dtype") or isinstance(
        leaf, (int, float))) or not jnp.issubdtype(jnp.result_type(leaf), jnp.number):
      raise TypeError(f"`tree` must be a pytree of numeric arrays, got a leaf of type "
                      f"{type(leaf).__name__}.")
  return jnp.sqrt(sum(jnp.sum(numerics.upcast(x) ** 2) for x in jax.tree.leaves(tree)))


def subsample_rows(fraction: float, *arrays: chex.Array):
  """Every ``round(1 / fraction)``-th row of each array (strided: spread over the batch).

  Use it to build the ``logits_fn`` of a subsampled JVP, e.g.
  ``nnx_logits_fn(model, *subsample_rows(0.125, x))``.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"`fraction` must be in (0, 1], got {fraction}.")
  stride = max(1, round(1.0 / fraction))
  out = tuple(a[::stride] for a in arrays)
  return out if len(out) != 1 else out[0]


def _aggregate(spread: Array, where, how: str, q: float) -> Array:
  """Batch aggregate of per-example spreads (masked entries excluded)."""
  if how == "max":
    return jnp.max(spread)
  valid = jnp.ones(spread.shape, bool) if where is None else jnp.broadcast_to(
      jnp.asarray(where, bool), spread.shape)
  value = jnp.nanquantile(jnp.where(valid, spread, jnp.nan), q)
  return jnp.where(jnp.any(valid), value, 0.0)  # nothing valid: the step changes nothing


def _attention_spread(tangent: Array, mask) -> Array:
  t = numerics.upcast(tangent)
  if mask is None:
    return jnp.max(jnp.max(t, -1) - jnp.min(t, -1))
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), t.shape)
  high = jnp.max(jnp.where(mask, t, -jnp.inf), -1)
  low = jnp.min(jnp.where(mask, t, jnp.inf), -1)
  return jnp.max(jnp.where(jnp.any(mask, -1), high - low, 0.0))


def _ffn_ratio(primals: Sequence[Array], tangents: Sequence[Array], q: float) -> Array:
  """``1 / quantile_q(|u| / |du|)``: the step's reach relative to the nearest kinks.

  ``|u| / |du_p|`` is the kink distance in units of the step ``p``, i.e. ``rho / ||p||``
  (reference: ``|u| / max(|du|, 1e-12)``, ``tfmbottlenecks/run.py`` L215).
  """
  u = jnp.concatenate([numerics.upcast(x).reshape(-1) for x in primals])
  du = jnp.concatenate([numerics.upcast(x).reshape(-1) for x in tangents])
  return 1.0 / jnp.quantile(jnp.abs(u) / jnp.maximum(jnp.abs(du), 1e-12), q)


def step_ratio_estimator(
    *,
    method: Literal["jvp", "finite_difference"] = "jvp",
    eps: float = 1e-4,
    aggregate: Literal["max", "quantile"] = "max",
    quantile: float = 0.99,
    window: int = 1,
    components: Sequence[str] = ("output",),
    ffn_quantile: float = 0.01,
) -> RatioEstimator:
  """Builds a ratio estimator for ``radius_guard(..., estimator=...)`` (module docstring).

  Args:
    method: ``"jvp"`` (exact directional derivative) or ``"finite_difference"``.
    eps: parameter-space length of the finite-difference displacement.
    aggregate: ``"max"`` (the bound) or ``"quantile"`` over the batch's spreads.
    quantile: the quantile for ``aggregate="quantile"`` (in (0, 1]).
    window: number of steps whose minimum radius per unit step is used (1: this step only).
    components: subset of ``("output", "attention", "ffn")``; anything but ``("output",)``
      needs ``logits_fn`` to return a dict (module docstring).
    ffn_quantile: quantile of the kink distances for the FFN radius (reference: 0.01).
  """
  if method not in ("jvp", "finite_difference"):
    raise ValueError(f"`method` must be 'jvp' or 'finite_difference', got {method!r}.")
  if aggregate not in ("max", "quantile"):
    raise ValueError(f"`aggregate` must be 'max' or 'quantile', got {aggregate!r}.")
  numerics.check_positive("eps", eps)
  if not 0.0 < quantile <= 1.0:
    raise ValueError(f"`quantile` must be in (0, 1], got {quantile}.")
  if not 0.0 < ffn_quantile < 1.0:
    raise ValueError(f"`ffn_quantile` must be in (0, 1), got {ffn_quantile}.")
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"`window` must be an int >= 1, got {window!r}.")
  components = tuple(components)
  if not components or any(c not in COMPONENTS for c in components):
    raise ValueError(f"`components` must be a non-empty subset of {COMPONENTS}, got "
                     f"{components}.")
  structured = components != ("output",)

  def init():
    return RatioEstimate(window=jnp.full([window], jnp.inf, jnp.float32),
                         components=jnp.zeros([len(COMPONENTS)], jnp.float32))

  def tangent_of(proposal, params, logits_fn, logits_jvp):
    if method == "jvp":
      if logits_jvp is not None and not structured:
        return None, logits_jvp(proposal)
      if logits_fn is None or params is None:
        raise ValueError("This estimator needs `logits_fn` and `params` in "
                         "`update(..., params, logits_fn=...)`.")
      return ghosts.directional_logits(logits_fn, params, proposal)
    if logits_fn is None or params is None:
      raise ValueError("method='finite_difference' needs `logits_fn` and `params` in "
                       "`update(..., params, logits_fn=...)`.")
    norm = global_norm(proposal)
    h = eps / jnp.where(norm > 0, norm, 1.0)
    moved = jax.tree.map(lambda w, p: (w + h * p.astype(jnp.float32)).astype(w.dtype), params,
                         proposal)
    base = logits_fn(params)
    shifted = logits_fn(moved)
    tangent = jax.tree.map(
        lambda z1, z0: jnp.where(norm > 0, (numerics.upcast(z1) - numerics.upcast(z0)) / h, 0.0),
        shifted, base)
    return base, tangent

  def ratio(proposal, state, params=None, *, logits_fn=None, logits_jvp=None, logits_mask=None,
            temperature=1.0):
    primal, tangent = tangent_of(proposal, params, logits_fn, logits_jvp)
    if structured and not isinstance(tangent, dict):
      raise ValueError(f"components={components} needs `logits_fn` to return a dict with "
                       "'logits', 'attention_logits', 'ffn_preactivations'.")
    out = tangent["logits"] if structured else tangent
    spread = ghosts.logit_spread(out, where=logits_mask)
    scale = jnp.pi * jnp.asarray(temperature, jnp.float32)
    parts = [_aggregate(spread, logits_mask, aggregate, quantile) / scale, 0.0, 0.0]
    if "attention" in components:
      mask = primal.get("attention_mask")
      parts[1] = jnp.max(jnp.stack([_attention_spread(t, mask) for t in
                                    tangent["attention_logits"]])) / jnp.pi
    if "ffn" in components:
      parts[2] = _ffn_ratio(primal["ffn_preactivations"], tangent["ffn_preactivations"],
                            ffn_quantile)
    if "output" not in components:
      parts[0] = 0.0
    parts = jnp.stack([jnp.asarray(x, jnp.float32) for x in parts])
    r_now = jnp.max(parts)
    # Windowed minimum of the radius per unit step rho = ||p|| / r, back in units of r.
    norm = global_norm(proposal)
    rho_now = jnp.where(r_now > 0, norm / jnp.where(r_now > 0, r_now, 1.0), jnp.inf)
    history = jnp.concatenate([state.window[1:], rho_now[None]])
    rho = jnp.min(history)
    r = jnp.where(jnp.isfinite(rho), norm / rho, r_now) if window > 1 else r_now
    return r, RatioEstimate(window=history, components=parts)

  return RatioEstimator(init, ratio)


class LogitSpreadControllerState(NamedTuple):
  """State of :func:`logit_spread_controller`: the inner state, the last rho and scale."""
  inner_state: optax.OptState
  rho: chex.Array
  scale: chex.Array


def logit_spread_controller(
    inner: optax.GradientTransformation,
    *,
    rho_cap: float = 1.0,
    rho_floor: float = 0.01,
    gap: Literal["maxmin", "top2"] = "maxmin",
    eps: float = 1e-6,
) -> optax.GradientTransformationExtraArgs:
  """JVP-free controller of the reference code: scales the update by ``clip(rho, floor, cap)``.

  ``rho = pi / (mean_x gap(z(x)) + eps)`` from the *logits* of the current forward pass
  (``gap`` = max - min, or top-1 minus top-2), so it costs nothing beyond the loss's forward
  (``src/ghosts/control.py`` L25-28 and L60-67, ``RhoScaledAdam``: ``lr_eff = lr * clip``;
  ``src/ghosts/radii.py`` L11-69; defaults rhoCap 1.0, rhoFloor 0.01, eps 1e-6). It does not
  measure the step: the logit spread is not the spread of the logits' *derivative*, so it
  bounds no ``r`` (its error against the exact JVP is in docs/radius_guard.md).

  ``update(..., logits=z)`` takes the loss's logits ``[..., K]`` (no gradient needed) and an
  optional ``logits_mask``. Adam's update is linear in its learning rate, so scaling the
  update equals the reference's scaling of ``lr``.
  """
  if gap not in ("maxmin", "top2"):
    raise ValueError(f"`gap` must be 'maxmin' or 'top2', got {gap!r}.")
  numerics.check_positive("rho_cap", rho_cap)
  numerics.check_positive("rho_floor", rho_floor)
  numerics.check_positive("eps", eps)
  if rho_floor > rho_cap:
    raise ValueError(f"`rho_floor` ({rho_floor}) must be <= `rho_cap` ({rho_cap}).")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return LogitSpreadControllerState(inner.init(params), jnp.ones([], jnp.float32),
                                      jnp.ones([], jnp.float32))

  def update_fn(updates, state, params=None, *, logits=None, logits_mask=None, **extra):
    if logits is None:
      raise ValueError("logit_spread_controller needs `update(..., logits=z)` (the loss's "
                       "logits [..., K]).")
    numerics.check_logits("logits", logits)
    numerics.check_mask("logits_mask", logits_mask, logits.shape[:-1])
    z = jax.lax.stop_gradient(numerics.upcast(logits))
    if gap == "top2":
      top = jax.lax.top_k(z, 2)[0]
      gaps = top[..., 0] - top[..., 1]
    else:
      gaps = jnp.max(z, -1) - jnp.min(z, -1)
    rho = jnp.pi / (numerics.masked_mean(gaps, logits_mask) + eps)
    scale = jnp.clip(rho, rho_floor, rho_cap)
    proposal, inner_state = inner.update(updates, state.inner_state, params, **extra)
    scaled = jax.tree.map(lambda p: p * scale.astype(p.dtype), proposal)
    return scaled, LogitSpreadControllerState(inner_state, rho, scale)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
