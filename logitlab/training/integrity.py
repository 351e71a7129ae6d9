"""Checksums and finiteness of a state pytree, computed on device, for checkpoint integrity.

Orbax writes array data through TensorStore without a checksum over the data chunks (zarr3 has
a crc32c only on the shard index), so a few overwritten bytes restore silently. The
``Checkpointer`` therefore stores, next to every checkpoint, one checksum pair per leaf and
verifies it after restore.

For a leaf ``x`` viewed as unsigned 32-bit words ``w_i`` (16- and 8-bit types widened, 64-bit
types split in two words) at flat index ``i``:

    s1 = sum_i w_i            (mod 2**32)
    s2 = sum_i w_i * h(i)     (mod 2**32),   h(i) = odd mix of i (a 32-bit integer hash)

Addition modulo 2**32 is associative and commutative, so both sums are bit-exact whatever the
sharding and the reduction order: a checkpoint written on 8 devices verifies on 1. Any change
of one word changes ``s1``; a change of several words passes only if it cancels in both sums
(chance about 2**-64 for random damage). This is an error-detecting checksum, not a
cryptographic digest.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _words(x: jax.Array) -> jax.Array:
  """``x``'s bits as uint32 words, same shape (plus a trailing 2 for 64-bit types)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = x.dtype.itemsize * 8
  if bits == 32:
    return lax.bitcast_convert_type(x, jnp.uint32)
  if bits in (8, 16):
    return lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)
  if bits == 64:
    return lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  raise TypeError(f"Cannot checksum dtype {x.dtype}.")


def _mix(i: jax.Array) -> jax.Array:
  """A 32-bit integer hash (lowbias32), made odd so that no word is multiplied by 0."""
  i = i ^ (i >> 16)
  i = i * jnp.uint32(0x7FEB352D)
  i = i ^ (i >> 15)
  i = i * jnp.uint32(0x846CA68B)
  i = i ^ (i >> 16)
  return i | jnp.uint32(1)


def _checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  if words.ndim == 0:
    index = jnp.zeros((), jnp.uint32)
  else:
    # Flat row-major index built from iotas (no reshape, so no resharding of a sharded leaf).
    index = jnp.zeros(words.shape, jnp.uint32)
    for axis, size in enumerate(words.shape):
      index = index * jnp.uint32(size) + lax.broadcasted_iota(jnp.uint32, words.shape, axis)
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                    jnp.sum(words * _mix(index), dtype=jnp.uint32)])


def _is_finite(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.ones((), jnp.bool_)


def all_finite(tree) -> jax.Array:
  """Traceable scalar bool: every floating leaf of ``tree`` is free of NaN and Inf."""
  flags = [_is_finite(x) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.ones((), jnp.bool_)


def _inspect_leaves(leaves):
  return [_checksum(x) for x in leaves], [_is_finite(x) for x in leaves]


@functools.lru_cache(maxsize=8)
def _jitted_inspect(mesh: jax.sharding.Mesh | None):
  if mesh is None:
    return jax.jit(_inspect_leaves)
  # Outputs replicated on the leaves' mesh, so every process can read them.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(_inspect_leaves, out_shardings=replicated)


def _mesh_of(leaves):
  for x in leaves:
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh
  return None


def inspect_tree(tree) -> tuple[dict[str, list[int]], list[str]]:
  """Per-leaf checksums and the paths of non-finite leaves, fetched to the host.

  Returns:
    ``({keystr(path): [s1, s2]}, [keystr(path) of leaves holding NaN or Inf])``.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not flat:
    return {}, []
  paths = [jax.tree_util.keystr(path) for path, _ in flat]
  leaves = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in flat]
  checksums, finite = jax.device_get(_jitted_inspect(_mesh_of(leaves))(leaves))
  digests = {p: [int(v) for v in np.asarray(c)] for p, c in zip(paths, checksums)}
  return digests, [p for p, ok in zip(paths, finite) if not bool(ok)]


def compare(expected: dict[str, list[int]], actual: dict[str, list[int]]) -> list[str]:
  """Paths whose checksums differ, plus paths present in only one of the two."""
  for name, value in (("expected", expected), ("actual", actual)):
    if not isinstance(value, Mapping):
      raise TypeError(f"`{name}` must be a mapping path -> checksum list (from "
                      f"`inspect_tree`), got {type(value).__name__}.")
  names = sorted(set(expected) | set(actual))
  return [n for n in names if expected.get(n) != actual.get(n)]
