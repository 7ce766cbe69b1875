"""Text that came from an event is data, never terminal markup (security review,
finding 4): titles and names full of rich markup, escape sequences, bidirectional
overrides and endless words go through every text output of the command without a
crash, and nothing the terminal would act on reaches it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.cli import main

HOSTILE = [
    "closing [/bold] tag",
    "Eve [/i]",
    "[link=https://evil.example]here[/link]",
    "[bold red]urgent[/]",
    ":warning: :smile:",
    "\u202eexe.txt",
    "left\u2066isolate\u2069 \u200f",
    "\x1b[2J\x1b[Hcleared",
    "\x1b]8;;https://evil.example\x07link\x1b]8;;\x07",
    "bell\x07 and backspace\x08",
    "W" * 300,
    "zalgo z\u0335\u0321\u0327a\u0336",
]
"""Hand-picked: what the review tried, and what terminals are known to act on."""

VIEWS = [
    ["board"],
    ["inventory"],
    ["roster"],
    ["log"],
    ["whoami"],
    ["peers"],
    ["board", "--json"],
    ["inventory", "--json"],
    ["log", "--json"],
]

# What a terminal acts on: ESC and the other C0/C1 controls but newline, and the
# bidirectional controls. None of it may reach standard output or standard error.
ACTED_ON = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str]:
    """The real entry point in this process (fast enough for a property): exit code and
    everything printed, standard output and error together."""
    try:
        main(["--data-dir", str(data_dir), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def check_quiet(code: int, printed: str, what: str) -> None:
    assert code in (0, 2), f"{what} crashed with {code}: {printed[-2000:]}"
    found = ACTED_ON.search(printed.replace("\t", " "))
    assert found is None, f"{what} printed U+{ord(found.group()):04X}: {printed[-400:]!r}"


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("hostile") / "node"
    main_ok = subprocess.run(
        [
            sys.executable,
            "-c",
            "from node.cli import main; main()",
            "--data-dir",
            str(data),
            "init",
            "--name",
            "Eve [/i] \u202eeve",
            "--new-group",
            "[bold]Group[/]",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert main_ok.returncode == 0, main_ok.stderr
    yield data
    shutil.rmtree(data, ignore_errors=True)


hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(
        alphabet=st.sampled_from(
            [*list("[]/=:;\\ab "), "\x1b", "\x07", "\u202e", "\u2066", "\u200f", "\x9b", "\n"]
        ),
        min_size=1,
        max_size=40,
    ),
)


@given(texts=st.lists(hostile_text, min_size=1, max_size=3))
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_hostile_text_through_every_text_output_neither_crashes_nor_reaches_the_terminal(
    capsys: pytest.CaptureFixture[str], node_dir: Path, texts: list[str]
) -> None:
    for i, text in enumerate(texts):
        for args in (
            ["offer", "post", text, "--quantity", "3"],
            ["need", "post", text],
            ["item", "add", f"item-{i}", text, "--unit", text],
            ["location", "add", f"place-{i}", text],
            ["role", "add", f"role-{i}", text, "--weekly-hours", "2", "--description", text],
        ):
            code, printed = run(capsys, node_dir, *args)
            check_quiet(code, printed, " ".join(args[:2]))
    for view in VIEWS:
        code, printed = run(capsys, node_dir, *view)
        assert code == 0, printed
        check_quiet(code, printed, " ".join(view))


def test_markup_in_a_title_is_shown_as_written(
    capsys: pytest.CaptureFixture[str], node_dir: Path
) -> None:
    code, _ = run(capsys, node_dir, "offer", "post", "closing [/bold] tag")
    assert code == 0
    code, printed = run(capsys, node_dir, "board")
    assert code == 0
    assert "closing [/bold] tag" in printed


def test_a_right_to_left_override_is_shown_as_its_escape(
    capsys: pytest.CaptureFixture[str], node_dir: Path
) -> None:
    code, _ = run(capsys, node_dir, "offer", "post", "\u202eexe.txt")
    assert code == 0
    code, printed = run(capsys, node_dir, "board")
    assert "\\u202eexe.txt" in printed
    code, printed = run(capsys, node_dir, "board", "--json")
    assert "\\u202eexe.txt" in printed  # still valid JSON, the same string when parsed
