"""Device mesh, logical-axis rules and batch placement.

One mesh layout serves every trainer in logitlab, from one CPU to a multi-host pod:

* ``data``   pure data parallelism: parameters replicated, batch split.
* ``fsdp``   fully sharded data parallelism (ZeRO-3): the batch is split over ``data`` and
             ``fsdp`` together, and parameters/optimizer state are split over ``fsdp`` along
             their ``embed`` (model-width) axis; XLA inserts the all-gathers.
* ``tensor`` tensor (model) parallelism over hidden/heads/vocab axes.

Models annotate parameters with *logical* axis names (``nnx.with_partitioning(init,
("embed", "mlp"))``); ``LOGICAL_AXIS_RULES`` maps those names to mesh axes, so a model never
names a mesh axis and the same model runs on any mesh. It is the one table of the library:
``logitlab.models.decoder_lm`` re-exports it. Consecutive dense kernels alternate Megatron-style
(``("embed", "mlp")`` then ``("mlp", "embed")``: the output axis of one is the input axis of the
next); two consecutive ``P("fsdp", "tensor")`` kernels trigger wrong gradients in XLA's SPMD
partitioner on a 3-axis CPU mesh (jax 0.10.2; docs/scaling.md, "Known issue"). Two names of one
parameter must not map to the same mesh axis (``("mlp", "vocab")`` gives ``P("tensor",
"tensor")``, which JAX rejects with a ``DuplicateSpecError``); a classifier after an ``mlp``
feature is annotated ``("mlp", None)``.

Axis types. ``make_mesh`` creates ``AxisType.Auto`` axes by default (sharding propagated by
the XLA partitioner from the ``in_shardings``/``out_shardings`` of ``jax.jit``); pass
``axis_types="explicit"`` for the current ``jax.make_mesh`` default. Any mesh works with the
training step: axes that are Explicit are switched to Auto for the body of the step
(``auto_axes``), so models need only logical annotations, never ``out_sharding``
(docs/scaling.md, "Sharding modes").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Batch dimensions are split over every data-like axis.
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or None: replicated). Names follow flax/MaxText conventions.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),        # model width: sharded by FSDP
    ("mlp", "tensor"),        # hidden width of MLPs
    ("heads", "tensor"),
    ("kv", None),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),      # classes / vocabulary
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("length", None),
    ("norm", None),
)


AXIS_TYPES = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}


def make_mesh(shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None,
              axis_types: str | Sequence[jax.sharding.AxisType] = "auto") -> jax.sharding.Mesh:
  """Builds a ``(data, fsdp, tensor)`` mesh.

  Args:
    shape: sizes per axis name in ``MESH_AXES``; missing axes are 1 and at most one axis may
      be -1 (it absorbs the remaining devices). ``None`` means all devices on ``data``.
    devices: devices to use (default: all global devices, i.e. every host's).
    axis_types: ``"auto"`` (default), ``"explicit"``, or one ``jax.sharding.AxisType`` per
      axis of ``MESH_AXES`` (mixed meshes).

  Returns:
    A ``jax.sharding.Mesh`` with axes ``MESH_AXES`` in that order.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": -1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"`shape` has unknown mesh axes {sorted(unknown)}; expected a subset of "
                     f"{MESH_AXES}.")
  sizes = [int(shape.get(name, 1)) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"`shape` may set at most one axis to -1, got {shape}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"`shape` {shape}: {len(devices)} devices are not divisible by {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"`shape` {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"got {len(devices)}.")
  if isinstance(axis_types, str):
    if axis_types not in AXIS_TYPES:
      raise ValueError(f"`axis_types` must be one of {sorted(AXIS_TYPES)} or a sequence of "
                       f"{len(MESH_AXES)} jax.sharding.AxisType, got {axis_types!r}.")
    axis_types = (AXIS_TYPES[axis_types],) * len(MESH_AXES)
  axis_types = tuple(axis_types)
  if len(axis_types) != len(MESH_AXES) or not all(
      isinstance(t, jax.sharding.AxisType) for t in axis_types):
    raise ValueError(f"`axis_types` must name one jax.sharding.AxisType per axis of "
                     f"{MESH_AXES}, got {axis_types!r}.")
  # jax.make_mesh orders devices for the physical topology (ICI rings on TPU).
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices, axis_types=axis_types)


def check_mesh(mesh) -> None:
  """Raises a TypeError naming `mesh` unless it is a (possibly abstract) jax Mesh."""
  if not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh (e.g. from `make_mesh`), got "
                    f"{type(mesh).__name__}.")


def explicit_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """Names of the mesh axes whose type is ``AxisType.Explicit``."""
  check_mesh(mesh)
  return tuple(name for name, kind in zip(mesh.axis_names, mesh.axis_types)
               if kind == jax.sharding.AxisType.Explicit)


def auto_axes(fn, mesh: jax.sharding.Mesh, out_shardings):
  """``fn`` with the mesh's Explicit axes switched to Auto inside (``fn`` itself on an
  all-Auto mesh). ``out_shardings`` (a pytree prefix of ``fn``'s outputs) gives the
  Explicit types of the results. Models written for propagation (logical annotations, no
  ``out_sharding`` on their matmuls) then trace on any mesh."""
  if not callable(fn):
    raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
  axes = explicit_axes(mesh)
  if not axes:
    return fn

  def explicit_part(sharding: NamedSharding) -> NamedSharding:
    # auto_axes states only the Explicit axes of a result; the jit's out_shardings place
    # the rest (a spec naming an Auto axis is rejected there).
    keep = lambda entry: tuple(a for a in ((entry,) if isinstance(entry, str) else entry or ())
                               if a in axes)
    entries = [keep(entry) for entry in sharding.spec]
    return NamedSharding(sharding.mesh, PartitionSpec(*[e if e else None for e in entries]))

  out = jax.tree.map(explicit_part, out_shardings,
                     is_leaf=lambda x: isinstance(x, NamedSharding))
  return jax.sharding.auto_axes(fn, axes=axes, out_sharding=out)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of a batch array: leading (example) axis split over ``BATCH_AXES``."""
  check_mesh(mesh)
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Fully replicated sharding (scalars, RNG keys, step counters)."""
  check_mesh(mesh)
  return NamedSharding(mesh, PartitionSpec())


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  """Number of ways a global batch is split (``data * fsdp``)."""
  check_mesh(mesh)
  return math.prod(mesh.shape[name] for name in BATCH_AXES)


def put_batch(local_batch, mesh: jax.sharding.Mesh):
  """Places this host's slice of a global batch on the mesh.

  Each process passes only the examples it loaded (``[global_batch / process_count, ...]``
  per leaf); the result is a global ``jax.Array`` of ``[global_batch, ...]`` sharded by
  ``batch_sharding``. With one process this is a plain sharded ``device_put``.
  """
  sharding = batch_sharding(mesh)
  shards = num_batch_shards(mesh)

  def place(path, x):
    x = np.asarray(x)
    global_size = x.shape[0] * jax.process_count() if x.ndim else 0
    if global_size == 0 or global_size % shards:
      raise ValueError(
          f"`local_batch` leaf {jax.tree_util.keystr(path) or '(root)'} must have a leading "
          f"batch axis whose global size ({x.shape[0] if x.ndim else 'scalar'} x "
          f"{jax.process_count()} processes) is divisible by data x fsdp = {shards}; got "
          f"shape {x.shape}.")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(place, local_batch)


def constrain_batch(tree, axis: int = 0):
  """Constrains every array of ``tree`` to be split over the batch axes along ``axis``.

  For activations inside a train step built with ``shard_activations=True`` (the step runs
  under the mesh's abstract mesh): e.g. ``logits = training.constrain_batch(model(x))`` in a
  ``loss_fn`` pins the logits to ``P(("data", "fsdp"))`` instead of leaving their layout to
  propagation. Auto axes get ``jax.lax.with_sharding_constraint``, Explicit ones
  ``jax.sharding.reshard``. Arrays whose ``axis`` the batch shards do not divide, and every
  array when no mesh is in context, are returned unchanged.
  """
  if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
    raise ValueError(f"`axis` must be an int >= 0, got {axis!r}.")
  abstract = jax.sharding.get_abstract_mesh()
  if abstract.empty or not set(BATCH_AXES) <= set(abstract.axis_names):
    return tree
  shards = math.prod(abstract.shape[name] for name in BATCH_AXES)
  spec = PartitionSpec(*(None,) * axis, BATCH_AXES)
  explicit = any(kind == jax.sharding.AxisType.Explicit
                 for name, kind in zip(abstract.axis_names, abstract.axis_types)
                 if name in BATCH_AXES)

  def constrain(x):
    if jnp.ndim(x) <= axis or jnp.shape(x)[axis] % shards:
      return x
    if explicit:
      return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, NamedSharding(abstract, spec))

  return jax.tree.map(constrain, tree)


def divisible_spec(spec: PartitionSpec, shape: tuple[int, ...],
                   mesh: jax.sharding.Mesh) -> PartitionSpec:
  """Replicates every dimension the mapped mesh axes do not divide (e.g. 100 classes on 8
  tensor shards), so one set of annotations works on every mesh."""
  entries = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    ways = math.prod(mesh.shape[name] for name in names)
    entries.append(axes if ways > 1 and size % ways == 0 else None)
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)


# Parameters at least this large get an fsdp dimension even when their logical names give
# none (big_vision's `fsdp` rule uses 4 MiB; at 4 MiB ResNet-18 would shrink only 2.6x on
# fsdp=8, at 64 KiB 7.9x: the small leftovers are biases and norms).
FSDP_MIN_BYTES = 2**16


def fsdp_spec(spec: PartitionSpec, shape: tuple[int, ...], itemsize: int,
              mesh: jax.sharding.Mesh, min_bytes: int = FSDP_MIN_BYTES) -> PartitionSpec:
  """``spec`` plus ``fsdp`` on the largest free dimension it divides (the last of equals).

  Applies when the mesh has ``fsdp > 1``, the array has ``>= min_bytes`` bytes and ``spec``
  shards it over no mesh axis yet: ZeRO-3 for every large parameter whatever its axis names
  (convolution kernels, whose ``conv_in``/``conv_out`` map to nothing or to ``tensor``), as
  big_vision's ``fsdp`` sharding rule does. A dimension is free when ``spec`` leaves it
  replicated. A parameter already split over ``tensor`` is left alone: adding ``fsdp`` on
  another dimension gives consecutive conv kernels ``P(None, None, "fsdp", "tensor")``, the
  layout for which XLA's SPMD partitioner returns wrong gradients on a 3-axis mesh
  (docs/scaling.md, "Known issue"; measured: resnet8x4 updates off by up to 120 %).
  """
  check_mesh(mesh)
  if isinstance(itemsize, bool) or not isinstance(itemsize, (int, np.integer)) or itemsize < 1:
    raise ValueError(f"`itemsize` must be an int >= 1 (bytes per element), got {itemsize!r}.")
  if len(spec) > len(shape):
    raise ValueError(f"`spec` {spec} has more entries than `shape` {tuple(shape)} has axes.")
  ways = mesh.shape.get("fsdp", 1)
  entries = list(tuple(spec) + (None,) * (len(shape) - len(spec)))
  used = {a for e in entries if e is not None for a in ((e,) if isinstance(e, str) else e)}
  if ways <= 1 or used or math.prod(shape) * itemsize < min_bytes:
    return spec
  free = [d for d, (size, e) in enumerate(zip(shape, entries)) if e is None and size % ways == 0]
  if not free:
    return spec
  dim = max(free, key=lambda d: (shape[d], d))
  entries[dim] = "fsdp"
  while entries and entries[-1] is None:
    entries.pop()
  return PartitionSpec(*entries)
