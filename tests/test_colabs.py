"""Colab readiness: an install cell that is a no-op when logitlab is importable, and a README link.

The notebooks themselves are executed by nbmake in the default suite (pyproject ``testpaths``).
"""
from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def _install_cell(notebook: Path) -> str:
  cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
  return "".join(cells[0]["source"])


def _run_install_cell(source: str, monkeypatch, *, importable: bool) -> list:
  import importlib.util
  calls = []
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: (real_find_spec(name, *a) if importable or
                                        name != "logitlab" else None))
  exec(compile(source, "<install cell>", "exec"), {})
  return calls


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_is_a_noop_when_importable_and_installs_the_repo_otherwise(notebook,
                                                                                 monkeypatch):
  source = _install_cell(notebook)
  assert _run_install_cell(source, monkeypatch, importable=True) == []
  (call,) = _run_install_cell(source, monkeypatch, importable=False)
  command = call[0]
  assert command[1:4] == ["-m", "pip", "install"]
  assert command[-1] == f"git+{REPOSITORY}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_readme_links_each_notebook_in_colab(notebook):
  org_repo = REPOSITORY.removeprefix("https://github.com/")
  link = (f"https://colab.research.google.com/github/{org_repo}/blob/main/colabs/"
          f"{notebook.name}")
  assert link in (ROOT / "README.md").read_text()
