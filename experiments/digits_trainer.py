"""A small functional trainer for the digits experiments (LR spike, onset).

Runs many independent trainings at once: the model is split into a static graphdef and
state pytrees, and a whole run (``lax.scan`` over steps) is ``vmap``-ed over seeds and
per-run hyperparameters, so a grid of runs costs one compilation.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import logitlab
from logitlab.models import small


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
  """Pure ``forward(params, rest, x, train) -> (logits, new_rest)`` of an NNX module."""
  graphdef: nnx.GraphDef
  init: Callable[[int], tuple[nnx.State, nnx.State]]

  def forward(self, params, rest, x, *, train: bool):
    module = nnx.merge(self.graphdef, params, rest)
    if train:
      module.train()
    else:
      module.eval()
    logits = module(x)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return logits, nnx.as_pure(new_rest)


def functional_model(arch: str, num_classes: int = 10) -> FunctionalModel:
  graphdef, _, _ = nnx.split(small.build(arch, num_classes, rngs=nnx.Rngs(0)), nnx.Param, ...)

  def init(seed: int):
    _, params, rest = nnx.split(small.build(arch, num_classes, rngs=nnx.Rngs(seed)),
                                nnx.Param, ...)
    # Pure arrays: Variables created outside a jit/grad trace cannot be mutated inside it.
    return nnx.as_pure(params), nnx.as_pure(rest)

  return FunctionalModel(graphdef, init)


def stack_inits(model: FunctionalModel, seeds) -> tuple[nnx.State, nnx.State]:
  states = [model.init(int(s)) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logitlab.numerics.upcast(logits), labels).mean()


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def spiked_schedule(base_lr: float, factor, spike_step: int, spike_length: int):
  """``base_lr``, multiplied by ``factor`` for ``spike_length`` steps from ``spike_step``."""
  def schedule(count):
    spiking = (count >= spike_step) & (count < spike_step + spike_length)
    return base_lr * jnp.where(spiking, factor, 1.0)
  return schedule


def make_optimizer(method: str, learning_rate, *, clip_norm: float = 1.0,
                   max_ratio: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """'adam', 'clip' (global-norm clipping before Adam) or 'guard' (radius_guard(adam))."""
  adam = optax.adam(learning_rate)
  if method == "adam":
    return optax.with_extra_args_support(adam)
  if method == "clip":
    return optax.with_extra_args_support(optax.chain(optax.clip_by_global_norm(clip_norm), adam))
  if method == "guard":
    return logitlab.radius_guard(adam, max_ratio=max_ratio)
  raise ValueError(f"Unknown method {method!r}; expected 'adam', 'clip' or 'guard'.")


def train_run(model: FunctionalModel, tx, params, rest, data, *, steps: int,
              batch_size: int = 0, key=None):
  """One run (vmap-able): returns final (params, rest) and per-step (loss, r)."""
  x_train, y_train = data
  opt_state = tx.init(params)
  key = jax.random.key(0) if key is None else key

  def step(carry, step_key):
    params, rest, opt_state = carry
    if batch_size:
      idx = jax.random.randint(step_key, (batch_size,), 0, x_train.shape[0])
      x, y = x_train[idx], y_train[idx]
    else:
      x, y = x_train, y_train

    def loss_fn(p):
      logits, new_rest = model.forward(p, rest, x, train=True)
      return cross_entropy(logits, y), new_rest

    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    logits_fn = lambda p: model.forward(p, rest, x, train=False)[0]
    updates, opt_state = tx.update(grads, opt_state, params, logits_fn=logits_fn)
    metrics = logitlab.guard_metrics(opt_state)
    if metrics:
      ratio = metrics["guard/ratio_proposed"]  # r of Adam's step, as for the unguarded runs
    else:  # unguarded: measure the proposal's r for the plots, it is also the applied step
      _, tangent = logitlab.directional_logits(logits_fn, params, updates)
      ratio = logitlab.normalized_step(tangent).ratio
    params = optax.apply_updates(params, updates)
    return (params, new_rest, opt_state), (loss, ratio)

  (params, rest, _), (losses, ratios) = jax.lax.scan(
      step, (params, rest, opt_state), jax.random.split(key, steps))
  return params, rest, losses, ratios


def evaluate(model: FunctionalModel, params, rest, x, y):
  logits, _ = model.forward(params, rest, x, train=False)
  return cross_entropy(logits, y), accuracy(logits, y)


def csv_list(text, cast=str) -> list:
  """'1,10,100' -> [cast('1'), ...]: config fields that list values are comma strings."""
  return [cast(v) for v in str(text).split(",") if v]


def text_table(header, rows) -> str:
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
