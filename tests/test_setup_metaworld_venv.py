"""``scripts/setup_env.sh metaworld``: a second venv keyed like the first, from the main pins minus mujoco and
mujoco-warp plus requirements-metaworld-lock.txt; the main venv's key and pins are untouched. pip is faked."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FAKE_PYTHON = """#!/bin/bash
# stands in for `python3 -m venv DIR`: a venv whose pip only records its arguments
[ "$1" = -m ] && [ "$2" = venv ] || exit 3
mkdir -p "$3/bin"
printf '#!/bin/bash\\necho "$@" >> "%s/pip.log"\\n' "$3" > "$3/bin/pip"
chmod +x "$3/bin/pip"
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    py = tmp_path / "python3"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    env = {**os.environ, "S2ROBOT_CACHE": str(tmp_path / "cache"), "PYTHON": str(py), "S2ROBOT_ROS1": "0"}
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup_env.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_metaworld_venv_is_separate_and_pins_mujoco_3(tmp_path):
    main = _run(tmp_path)
    mw = _run(tmp_path, "metaworld")
    assert main.returncode == 0 and mw.returncode == 0, main.stderr + mw.stderr
    main_venv, mw_venv = Path(main.stdout.splitlines()[-1]), Path(mw.stdout.splitlines()[-1])
    lock = (ROOT / "requirements-lock.txt").read_bytes()
    suffix = re.search(r"echo (setup-v\d+)", (ROOT / "scripts" / "setup_env.sh").read_text()).group(1)
    assert main_venv.name == "venv-" + hashlib.sha256(lock + f"{suffix}\n".encode()).hexdigest()[:12]  # main key
    assert mw_venv.name.startswith("venv-mw-") and mw_venv != main_venv
    assert "-r requirements-lock.txt" in (main_venv / "pip.log").read_text()
    reqs = Path(f"{mw_venv}.requirements.txt").read_text().splitlines()
    assert "mujoco==3.3.0" in reqs and "metaworld==3.1.1" in reqs
    assert not [r for r in reqs if r.startswith(("mujoco==4", "mujoco-warp=="))]
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs  # everything else as in the main pins
    assert f"-r {mw_venv}.requirements.txt" in (mw_venv / "pip.log").read_text()


def test_unknown_variant_is_one_line(tmp_path):
    r = _run(tmp_path, "metawrld")
    assert r.returncode == 2 and "unknown variant 'metawrld'" in r.stderr
