"""The README's commands stay true: CI runs the README's test command verbatim, and
the one-command demo works."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import ROOT, potluck


def readme_commands() -> list[str]:
    blocks = re.findall(r"```\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith("python3 -m venv")
    ]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_demo_command_shows_the_over_claim_on_both_nodes(tmp_path: Path) -> None:
    demo = next(c for c in readme_commands() if c.endswith("demo"))
    assert "potluck --data-dir ./potluck-demo demo" in demo
    proc = potluck(tmp_path / "potluck-demo", "demo", "--json", timeout=120)
    report = json.loads(proc.stdout)
    offer = report["board"]["offers"][0]
    assert offer["claimed"] == 12 and offer["remaining"] == -2
    assert "over-claimed" in offer["flags"]
    digest_a, digest_b = report["digests"]
    assert digest_a == digest_b
