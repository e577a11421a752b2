"""scripts/setup_env.sh: the editable reinstall on every `make demo` is silent unless it fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "setup_env.sh"


def _editable_install_block() -> str:
    lines = SCRIPT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# The package itself"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("echo \"$venv\""))
    return "\n".join(lines[start:end])


@pytest.mark.parametrize("rc", [0, 1])
def test_editable_install_warnings_are_hidden_unless_it_fails(tmp_path, rc):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pip = venv / "bin" / "pip"
    pip.write_text("#!/bin/bash\nfor i in $(seq 256); do echo \"SetuptoolsDeprecationWarning $i\" >&2; done\n"
                   f"exit {rc}\n")
    pip.chmod(0o755)
    script = f"set -euo pipefail\nvenv={venv}\n{_editable_install_block()}\necho done\n"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    if rc == 0:
        assert r.returncode == 0 and r.stdout.strip() == "done" and r.stderr == ""
    else:
        assert r.returncode == 1 and "SetuptoolsDeprecationWarning 256" in r.stderr
        assert "editable install of s2robot failed" in r.stderr and "done" not in r.stdout
