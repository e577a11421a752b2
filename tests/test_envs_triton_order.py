"""Regression: rendering with Mesa and *then* importing triton (torchvision.models does) must not segfault."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_render_then_import_triton_does_not_crash():
    code = (
        "from s2robot.envs import make_env\n"
        "env = make_env('lift_cube', image_size=32)\n"
        "obs, _ = env.reset(seed=0)\n"
        "assert obs['front_image'].any()\n"
        "env.close()\n"
        "import triton, torchvision.models\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.returncode, out.stderr[-2000:])
