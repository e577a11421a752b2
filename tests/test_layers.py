"""The import-linter contract of ``pyproject.toml`` (``[tool.importlinter]``): imports follow the layers.

The installed package maps ``s2robot.envs`` / ``.policies`` / ``.datasets`` to the top-level ``envs/``,
``policies/`` and ``datasets/`` folders (``package-dir``); import-linter (grimp) finds sub-packages by walking
the package's folder, so the check runs on a copy of the sources laid out as installed (``s2robot/envs/...``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"envs": "envs", "policies": "policies", "datasets": "datasets", "configs": "configs"}
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def installed_layout(dest: Path) -> Path:
    """Copy the package's ``.py`` sources to ``dest`` as installed (``package-dir`` of pyproject.toml)."""
    only_py = shutil.ignore_patterns("__pycache__", "*.pyc", "*.yaml", "*.xml", "*.png", "assets")
    shutil.copytree(ROOT / "s2robot", dest / "s2robot", ignore=only_py)
    for sub, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, dest / "s2robot" / sub, ignore=only_py)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", str(tree / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def test_imports_follow_the_layers(tmp_path):
    out = lint_imports(installed_layout(tmp_path))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout, out.stdout[-2000:]


def test_contract_catches_an_upward_import(tmp_path):
    """A policy importing the training code (a lower layer reaching up) breaks the contract."""
    tree = installed_layout(tmp_path)
    bad = tree / "s2robot" / "policies" / "ema.py"
    bad.write_text(bad.read_text() + "\n\ndef _upward():\n    from s2robot.training import train  # noqa: F401\n")
    out = lint_imports(tree)
    assert out.returncode != 0
    assert "s2robot.policies.ema -> s2robot.training.train" in out.stdout, out.stdout[-4000:]
