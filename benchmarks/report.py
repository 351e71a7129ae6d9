"""Shared reporting for benchmark scripts: a printed table plus an entry in BENCHMARKS.md.

Benchmarks report speed as ratios measured side by side in one process; the absolute
numbers are printed for context only.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine_info() -> str:
  import jax
  import flax
  import optax
  devices = jax.devices()
  return (f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, backend={jax.default_backend()} ({devices[0].device_kind} x"
          f"{len(devices)}); python {platform.python_version()}, jax {jax.__version__}, "
          f"flax {flax.__version__}, optax {optax.__version__}")


def format_table(header: list[str], rows: list[list]) -> str:
  cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
  lines = ["| " + " | ".join(r) + " |" for r in cells]
  lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
  return "\n".join(lines)


def report(title: str, module: str, header: list[str], rows: list[list], notes: str = "",
           append: bool = True) -> str:
  """Prints the table and appends a dated section to BENCHMARKS.md.

  Args:
    module: the benchmark's module name (``__spec__.name``), recorded as the command.
  """
  table = format_table(header, rows)
  command = " ".join(["python -m", module, *sys.argv[1:]])
  section = (f"\n## {title}\n\n{datetime.date.today().isoformat()} - {machine_info()}\n\n"
             f"Command: `{command}`\n\n{table}\n")
  if notes:
    section += f"\n{notes}\n"
  print(section)
  if append:
    if not BENCHMARKS_MD.exists():
      BENCHMARKS_MD.write_text("# Benchmarks\n\nAppended by the scripts in `benchmarks/`; "
                               "speed is reported as ratios measured in one process.\n")
    with BENCHMARKS_MD.open("a") as f:
      f.write(section)
  return section
