"""Codebase rules from DESIGN.md and STYLE.md, checked on every run."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "humpback_ds"
METHOD_MODULES = {"prompts", "pipeline", "cli", "__main__", "winrate", "report"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_core_never_imports_stages_or_the_pipeline():
    core = [p for p in PACKAGE.glob("*.py") if p.stem not in METHOD_MODULES]
    assert len(core) >= 6
    offenders = {
        p.name: sorted(
            n for n in _imports(p) if n.startswith(("humpback_ds.stages", "humpback_ds.pipeline"))
        )
        for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_utils_module():
    assert not list(PACKAGE.rglob("utils*.py")), "modules are nouns with one job (STYLE.md)"


def test_ruff_lint_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment")
    result = subprocess.run(
        [str(ruff), "check", "humpback_ds", "tests", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = sorted(
        str(p)
        for d in ("launchers", "slurm", "tools", ".ci")
        for p in (ROOT / d).glob("*")
        if p.is_file() and (p.suffix == ".sh" or p.name == "run")
    )
    assert scripts
    result = subprocess.run(
        ["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
