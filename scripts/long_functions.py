"""List functions longer than a limit in the product code (s2robot/, envs/, policies/, datasets/).

    python scripts/long_functions.py [--limit 80] [--rev GIT_REVISION]

A function's length is its ``def`` line to its last line, docstring included (``ast`` line numbers); with
``--rev`` the sources are read from that git revision instead of the working tree. Prints ``lines path:line name``,
longest first; tests/test_code_shape.py keeps the list empty.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("s2robot", "envs", "policies", "datasets")


def _sources(rev: str | None) -> dict[str, str]:
    """{relative path: source} of the product ``.py`` files, from the working tree or a git revision."""
    if rev is None:
        return {p.relative_to(ROOT).as_posix(): p.read_text() for d in PRODUCT for p in sorted((ROOT / d).rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, *PRODUCT], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def long_functions(limit: int = 80, rev: str | None = None) -> list[tuple[int, str, str]]:
    """(lines, "path:line", qualified name) of every function over ``limit`` lines, longest first."""
    out = []
    for path, text in _sources(rev).items():
        tree = ast.parse(text)
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        n = child.end_lineno - child.lineno + 1
                        if n > limit:
                            out.append((n, f"{path}:{child.lineno}", name))
                    stack.append((child, name + "."))
    return sorted(out, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--rev", default=None, help="git revision to read (default: the working tree)")
    args = ap.parse_args()
    for n, where, name in long_functions(args.limit, args.rev):
        print(f"{n:4d} {where} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
