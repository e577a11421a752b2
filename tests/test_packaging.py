"""The package layout: pyproject maps envs/, policies/, datasets/, configs/ to s2robot.* in editable and wheel installs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["s2robot.envs", "s2robot.policies", "s2robot.datasets", "s2robot.configs", "s2robot.encoders"]


def test_editable_install_maps_folders():
    """Each sub-package is imported from this checkout's folder (full paths: a stale copy elsewhere, or a regular
    install under site-packages, has the same folder names)."""
    import importlib

    expected = {"s2robot.envs": "envs", "s2robot.policies": "policies", "s2robot.datasets": "datasets",
                "s2robot.configs": "configs", "s2robot.encoders": "s2robot/encoders"}
    for name in SUBPACKAGES:
        folder = Path(importlib.import_module(name).__file__).resolve().parent
        assert folder == (ROOT / expected[name]).resolve(), (name, folder)


# Asks every import hook and every sys.path entry (except the current directory) for a top-level `datasets`,
# one at a time, so an installed Hugging Face `datasets` earlier on the path cannot hide one that we installed.
_FIND_DATASETS = """
import importlib.machinery, json, os, sys
hits = []
for finder in sys.meta_path:
    if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
        continue
    spec = finder.find_spec("datasets", None)
    if spec is not None:
        hits.append(str(spec.origin))
for entry in sys.path:
    if entry in ("", os.getcwd()):
        continue
    spec = importlib.machinery.PathFinder.find_spec("datasets", [entry])
    if spec is not None:
        hits.append(str(spec.origin))
print(json.dumps(hits))
"""


def _datasets_modules(tmp_path: Path, extra_path: str = "") -> list[str]:
    import json

    env = dict(os.environ, PYTHONPATH=extra_path)
    out = subprocess.run([sys.executable, "-c", _FIND_DATASETS], capture_output=True, text=True, cwd=tmp_path,
                         env=env, check=True)
    return json.loads(out.stdout)


def _ours(origin: str) -> bool:
    return str(ROOT) in origin or "s2robot" in origin


def test_no_top_level_datasets_module_installed(tmp_path):
    """A top-level `datasets` would shadow Hugging Face's package: the install maps ours only to s2robot.datasets."""
    assert [o for o in _datasets_modules(tmp_path) if _ours(o)] == []
    # the probe does see a shadowing `datasets` (here: the checkout's root put on the path)
    assert any(_ours(o) for o in _datasets_modules(tmp_path, str(ROOT)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True)
    wheels = list(out.glob("s2robot-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_mapped_packages_and_configs(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("s2robot", "s2robot/envs", "s2robot/policies", "s2robot/datasets", "s2robot/configs"):
        assert f"{pkg}/__init__.py" in names, pkg
    assert not any(n.startswith("datasets/") or n.startswith("envs/") for n in names)
    yamls = [n for n in names if n.startswith("s2robot/configs/") and n.endswith(".yaml")]
    assert yamls, "hydra configs must ship as package data"
    src_yamls = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml"))
    assert sorted(n[len("s2robot/configs/"):] for n in yamls) == src_yamls


def test_wheel_imports_all_subpackages(wheel: Path, tmp_path: Path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "import sys, importlib\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"for n in {SUBPACKAGES!r}:\n"
        "    m = importlib.import_module(n)\n"
        f"    assert m.__file__.startswith({str(tmp_path)!r}), (n, m.__file__)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
