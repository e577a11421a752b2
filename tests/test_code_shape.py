"""Code shape the project brief asks for: no function over ~80 lines in product code, one OmegaConf-to-plain helper."""

from __future__ import annotations

import ast

from script_loader import ROOT, load_script


def _long_functions_module():
    return load_script(ROOT / "scripts" / "long_functions.py")


def test_no_function_over_80_lines_in_product_code():
    assert _long_functions_module().long_functions(80) == []


def test_long_functions_finds_a_long_function(tmp_path, monkeypatch):
    mod = _long_functions_module()
    body = "".join(f"        x{i} = {i}\n" for i in range(81))
    monkeypatch.setattr(mod, "_sources", lambda rev: {"s2robot/x.py": f"class A:\n    def f(self):\n{body}"})
    assert mod.long_functions(80) == [(82, "s2robot/x.py:2", "A.f")]


def test_one_helper_turns_omegaconf_containers_into_plain_ones():
    """s2robot.configtools.plain is the one such helper (there were three ``_plain`` copies)."""
    defs = []
    for folder in ("s2robot", "envs", "policies", "datasets"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in ("plain", "to_plain_cfg"):
                    defs.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert defs == ["s2robot/configtools.py:plain"]
