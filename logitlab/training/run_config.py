"""The run's configuration: stored with every checkpoint and checked on resume.

A run is described by a flat mapping of dotted field names to JSON values: the user's config
(an ``ml_collections.ConfigDict`` or nested dict, flattened: ``optimizer.learning_rate``), the
loop's own settings (``loop.seed``, ``loop.num_steps``, ``loop.on_nonfinite``) and the state's
structure (``state.params['conv1']['kernel']`` -> ``"float32[3, 3, 3, 64]"``), so a changed
model shows up as the parameters whose shape changed. It is written to
``<workdir>/config.json`` and into each checkpoint (item ``config``).

On resume ``check_resume`` compares the checkpoint's config with the current one and raises
``ConfigMismatchError`` listing every differing field (old -> new) unless all of them match a
pattern in ``allow_changes`` (``fnmatch`` patterns or dotted prefixes: ``"train.steps"``,
``"optimizer.*"``, ``"loop.num_steps"``). The caller says which changes it intends (more steps,
a new learning rate); nothing changes silently.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from logitlab.training.faults import ConfigMismatchError


def _json_value(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_json_value(v) for v in value]
  if isinstance(value, (bool, int, str)) or value is None:
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else repr(value)
  if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
    return _json_value(value.item())
  return repr(value)


def flatten(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; leaves made JSON-serializable (``repr`` if not)."""
  if config is None:
    return {}
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    config = config.to_dict()
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + ".") if value else {name: {}})
    else:
      flat[name] = _json_value(value)
  return flat


def _check_mapping(name: str, value) -> None:
  if not isinstance(value, Mapping):
    raise TypeError(f"`{name}` must be a mapping of config fields, got {type(value).__name__}.")


def state_signature(state) -> dict[str, str]:
  """``{"state<path>": "dtype[shape]"}`` for every leaf of a (possibly abstract) state."""
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if not (hasattr(x, "dtype") and hasattr(x, "shape")):
      raise TypeError(f"`state` must be a pytree of arrays or ShapeDtypeStructs, got a leaf "
                      f"of type {type(x).__name__} at {jax.tree_util.keystr(path) or 'root'}.")
  return {f"state{jax.tree_util.keystr(path)}": f"{x.dtype}{list(x.shape)}"
          for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """Field names whose values differ (or exist on one side only), sorted."""
  _check_mapping("stored", stored)
  _check_mapping("current", current)
  missing = object()
  return sorted(name for name in set(stored) | set(current)
                if stored.get(name, missing) != current.get(name, missing))


def _allowed(name: str, patterns: Iterable[str]) -> bool:
  return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") or name.startswith(p + "[")
             for p in patterns)


def check_resume(stored: Mapping[str, Any], current: Mapping[str, Any],
                 allow_changes: Iterable[str] = (), *, step: int | None = None) -> list[str]:
  """Raises ``ConfigMismatchError`` listing the fields that differ and are not allowed.

  Returns:
    The allowed differing fields (the caller logs them).
  """
  allow_changes = tuple(allow_changes)
  changed = differences(stored, current)
  refused = [n for n in changed if not _allowed(n, allow_changes)]
  if refused:
    show = lambda config, n: repr(config[n]) if n in config else "<absent>"
    lines = "\n".join(f"  {n}: {show(stored, n)} -> {show(current, n)}" for n in refused[:40])
    more = f"\n  ... and {len(refused) - 40} more" if len(refused) > 40 else ""
    raise ConfigMismatchError(
        f"Refusing to resume{'' if step is None else f' from checkpoint {step}'}: the config "
        f"differs in {len(refused)} field(s) not allowed to change:\n{lines}{more}\n"
        f"Pass them in `allow_config_changes` (launchers: --allow_config_changes=NAME,...) if "
        f"the change is intended, or use a new workdir.")
  return changed


def write(workdir: str, config: Mapping[str, Any]) -> None:
  """Writes ``<workdir>/config.json`` (process 0 only), atomically."""
  _check_mapping("config", config)
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    json.dump(dict(config), f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
