"""Functional train state and its sharded initialization.

The state is a pytree (``TrainState``) rather than a stateful ``nnx.Optimizer`` so that one
object can be (a) passed through ``jax.jit`` with ``donate_argnums``, (b) given a sharding
tree for ``in_shardings``/``out_shardings`` and (c) saved/restored by Orbax as is. The NNX
module structure lives in the static ``graphdef``; ``nnx.merge(graphdef, params,
model_state)`` rebuilds the module inside a step.

Sharding comes from the model's ``nnx.with_partitioning`` annotations: logical names are
mapped to mesh axes with ``mesh.LOGICAL_AXIS_RULES`` (``nnx.get_partition_spec`` under
``logical_axis_rules``); a dimension its mesh axes do not divide is replicated. On an
``fsdp > 1`` mesh every parameter of at least ``mesh.FSDP_MIN_BYTES`` that its names leave
unsharded over ``fsdp`` is split over ``fsdp`` along its largest divisible free dimension
(``mesh.fsdp_spec``, big_vision's rule), so ZeRO-3 covers convolution kernels too.
Optimizer-state leaves that mirror parameters (Adam's mu/nu, ...) inherit the parameter's
sharding through ``optax.tree_map_params``; other optimizer leaves (counts, the radius guard's
scalars) are replicated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.core import spmd

from logitlab.training import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, as one pytree.

  Attributes:
    step: int32 scalar, number of optimizer updates applied.
    params: ``nnx.State`` of the model's ``nnx.Param`` variables.
    model_state: ``nnx.State`` of every other variable (BatchNorm statistics, ...).
    opt_state: the optax state for ``params``.
    rng: uint32[2] raw PRNG key data; split once per step (raw data so Orbax stores it as a
      plain array).
    nonfinite_steps: int32 scalar, number of steps whose loss, gradients or updated parameters
      were not finite and were therefore not applied (``step.make_train_step``,
      ``on_nonfinite``).
  """
  step: jax.Array
  params: nnx.State
  model_state: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  nonfinite_steps: jax.Array


def _init(model_fn: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
          seed: int):
  model = model_fn(nnx.Rngs(seed))
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(seed + 1)),
                     nonfinite_steps=jnp.zeros((), jnp.int32))
  return graphdef, state


def _check_train_state(name: str, state) -> None:
  if not isinstance(state, TrainState):
    raise TypeError(f"`{name}` must be a TrainState (e.g. from `abstract_train_state`), got "
                    f"{type(state).__name__}.")


def _check_tx_mesh(tx, mesh) -> None:
  if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
    raise TypeError(f"`tx` must be an optax.GradientTransformation, got {type(tx).__name__}.")
  mesh_lib.check_mesh(mesh)


def _check_builders(model_fn, tx, mesh) -> None:
  if not callable(model_fn):
    raise TypeError(f"`model_fn` must be a callable nnx.Rngs -> nnx.Module, got "
                    f"{type(model_fn).__name__}.")
  _check_tx_mesh(tx, mesh)


def state_shardings(shapes: TrainState, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, rules=mesh_lib.LOGICAL_AXIS_RULES, *,
                    fsdp_min_bytes: int = mesh_lib.FSDP_MIN_BYTES) -> TrainState:
  """NamedSharding tree matching ``shapes`` (see module docstring).

  Parameters of at least ``fsdp_min_bytes`` without an ``fsdp`` dimension from their logical
  names get one (``mesh.fsdp_spec``), so FSDP shrinks every large parameter.
  """
  _check_train_state("shapes", shapes)
  _check_tx_mesh(tx, mesh)

  def shardings_of(variables, fsdp: bool):
    with spmd.logical_axis_rules(rules):
      specs = nnx.get_partition_spec(variables)

    def sharding(x, spec):
      spec = mesh_lib.divisible_spec(spec, x.shape, mesh)
      if fsdp:
        spec = mesh_lib.fsdp_spec(spec, x.shape, x.dtype.itemsize, mesh, fsdp_min_bytes)
      return jax.sharding.NamedSharding(mesh, spec)

    return jax.tree.map(sharding, variables, specs)

  param_shardings = shardings_of(shapes.params, fsdp=True)
  warn_fsdp_tensor_chain(param_shardings, mesh)
  replicated = mesh_lib.replicated(mesh)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, sharding: sharding, shapes.opt_state, param_shardings,
      transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings,
                    model_state=shardings_of(shapes.model_state, fsdp=False),
                    opt_state=opt_shardings,
                    rng=replicated, nonfinite_steps=replicated)


def warn_fsdp_tensor_chain(param_shardings, mesh: jax.sharding.Mesh) -> bool:
  """Warns (and returns True) when the parameters look like the XLA 3-axis issue's pattern.

  On a mesh with ``data``, ``fsdp`` and ``tensor`` all > 1, XLA's SPMD partitioner (jax 0.10.2)
  returns wrong gradients when consecutive kernels are both ``P(..., "fsdp", "tensor")``
  (docs/scaling.md, "Known issue"). Layer order is not visible here, so the check is that two
  or more kernels end in ``("fsdp", "tensor")`` while none ends in ``("tensor", "fsdp")``: a
  Megatron-alternating model has both, a naively annotated one only the first.
  """
  mesh_lib.check_mesh(mesh)
  if min(mesh.shape.get(a, 1) for a in ("data", "fsdp", "tensor")) < 2:
    return False
  tails = [tuple(s.spec)[-2:] for s in jax.tree.leaves(param_shardings) if len(s.spec) >= 2]
  forward, backward = tails.count(("fsdp", "tensor")), tails.count(("tensor", "fsdp"))
  if forward >= 2 and backward == 0:
    warnings.warn(
        f"{forward} kernels are sharded P(..., 'fsdp', 'tensor') and none P(..., 'tensor', "
        f"'fsdp') on mesh {dict(mesh.shape)}: consecutive such kernels get wrong gradients "
        f"from XLA's SPMD partitioner on 3-axis meshes (jax {jax.__version__}; "
        f"docs/scaling.md, 'Known issue'). Alternate the annotations Megatron-style "
        f"(('embed', 'mlp') then ('mlp', 'embed')) or use a data/fsdp mesh.", stacklevel=3)
    return True
  return False


def abstract_train_state(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    seed: int = 0,
    rules=mesh_lib.LOGICAL_AXIS_RULES,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Shapes and shardings of the state, without allocating it.

  Returns:
    ``(graphdef, abstract, shardings)``: the static module structure, a tree of
    ``jax.ShapeDtypeStruct`` with shardings (the Orbax restore target) and the sharding tree.
  """
  _check_builders(model_fn, tx, mesh)
  with jax.set_mesh(mesh), spmd.logical_axis_rules(rules):
    graphdef, shapes = nnx.eval_shape(lambda: _init(model_fn, tx, seed))
    shardings = state_shardings(shapes, tx, mesh, rules)
  return graphdef, abstract_state(shapes, shardings), shardings


def create_train_state(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    seed: int = 0,
    rules=mesh_lib.LOGICAL_AXIS_RULES,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Initializes model + optimizer directly into their shardings (no host-side full copy).

  Args:
    model_fn: builds the NNX model from ``nnx.Rngs``; parameters may carry
      ``nnx.with_partitioning`` annotations with logical axis names.
    tx: the optax transformation (may take extra args, e.g. the radius guard).
    mesh: from ``mesh.make_mesh``.
    seed: seeds both the parameter init and the per-step RNG stream.
    rules: logical-axis -> mesh-axis rules.

  Returns:
    ``(graphdef, state, shardings)``: the static module structure, the sharded state and the
    sharding tree (reuse it for the train step and for checkpoint restore).
  """
  _check_builders(model_fn, tx, mesh)
  graphdef, _, shardings = abstract_train_state(model_fn, tx, mesh, seed=seed, rules=rules)
  with jax.set_mesh(mesh), spmd.logical_axis_rules(rules):
    state = jax.jit(lambda: _init(model_fn, tx, seed)[1], out_shardings=shardings)()
  return graphdef, state, shardings


def abstract_state(state_or_shapes: TrainState, shardings: TrainState) -> TrainState:
  """``jax.ShapeDtypeStruct`` tree with shardings: the restore target for Orbax."""
  _check_train_state("state_or_shapes", state_or_shapes)
  _check_train_state("shardings", shardings)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_or_shapes, shardings)


def num_params(state: TrainState) -> int:
  """Number of trainable parameters (works on abstract states too)."""
  _check_train_state("state", state)
  return sum(x.size for x in jax.tree.leaves(state.params))

