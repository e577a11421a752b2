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
    import importlib

    for name in SUBPACKAGES:
        mod = importlib.import_module(name)
        folder = Path(mod.__file__).resolve().parent
        expected = {"s2robot.envs": "envs", "s2robot.policies": "policies", "s2robot.datasets": "datasets",
                    "s2robot.configs": "configs", "s2robot.encoders": "encoders"}[name]
        assert folder.name == expected, (name, folder)


def test_no_top_level_datasets_module_installed():
    """A top-level `datasets` would shadow Hugging Face's package."""
    out = subprocess.run([sys.executable, "-c", "import importlib.util as u; s=u.find_spec('datasets'); "
                          "print('none' if s is None else s.origin)"], capture_output=True, text=True, cwd="/")
    origin = out.stdout.strip()
    assert origin == "none" or "s2robot" not in origin and str(ROOT) not in origin, origin


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
