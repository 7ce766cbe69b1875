"""The house stays standing: the import contracts, the formatter, the linter and the
type checker run with every test run, so a change that breaks a floor or the style
fails CI instead of waiting for a review (docs/architecture.md §the house)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["eventlog", "sync", "projections", "node"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e '.[dev]'")
    return str(path)


def test_imports_only_run_downwards() -> None:
    proc = run(tool("lint-imports"), "--no-cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_tree_is_ruff_formatted() -> None:
    proc = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert proc.returncode == 0, "run 'ruff format .':\n" + proc.stdout + proc.stderr


def test_the_tree_is_ruff_clean() -> None:
    proc = run(sys.executable, "-m", "ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_packages_are_mypy_strict_clean() -> None:
    proc = run(sys.executable, "-m", "mypy", *PACKAGES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
