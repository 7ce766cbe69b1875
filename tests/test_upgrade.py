"""A data directory written by potluck 0.1.0 still opens with today's code, with no
manual step: the same events, the board 0.1.0 showed (every field it had keeps its
value; a newer version may add fields and lists, docs/cli.md), and the projections it
migrated to on opening are exactly what a rebuild from the log gives (the same digest).

The digest 0.1.0 showed is the digest of 0.1.0's projections: it stays the same only
until a projection's version changes (the board became version 3 with issue 19), so
the test compares the digest across the rebuild, not with the recorded one.

The directory (tests/fixtures/datadir-0.1.0/) and what 0.1.0 showed for it
(tests/fixtures/datadir-0.1.0.json) are released fixtures: never edited. The test works
on a copy, since opening a node may migrate or checkpoint its file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import potluck

FIXTURES = Path(__file__).parent / "fixtures"
RELEASES = ["0.1.0"]


def shown(data_dir: Path) -> tuple[str, Any]:
    """The digest and the board (as JSON) that ``potluck`` shows for ``data_dir``."""
    digest = potluck(data_dir, "digest").stdout.strip()
    return digest, json.loads(potluck(data_dir, "board", "--json").stdout)


def assert_board_keeps(old: dict[str, list[dict[str, Any]]], new: dict[str, Any]) -> None:
    """Every post and claim of ``old`` is on ``new`` with the same value for every field
    ``old`` had (a post may have moved to a list a newer board added, such as ``met``)."""
    posts = {e["id"]: e for entries in new.values() for e in entries}
    for entries in old.values():
        for entry in entries:
            now = posts[entry["id"]]
            assert {k: now[k] for k in entry if k != "claims"} == {
                k: v for k, v in entry.items() if k != "claims"
            }
            claims = {c["id"]: c for c in now["claims"]}
            for claim in entry["claims"]:
                assert {k: claims[claim["id"]][k] for k in claim} == claim


@pytest.mark.parametrize("release", RELEASES)
def test_a_released_data_dir_opens_and_rebuilds_to_the_same_digest_and_board(
    release: str, tmp_path: Path
) -> None:
    expected = json.loads((FIXTURES / f"datadir-{release}.json").read_text())
    copy = tmp_path / "node"
    shutil.copytree(FIXTURES / f"datadir-{release}", copy)
    assert not list(copy.glob("*-wal")) and not list(copy.glob("*-shm")), "not checkpointed"

    opened, board = shown(copy)
    assert_board_keeps(expected["board"], board)
    assert json.loads(potluck(copy, "whoami", "--json").stdout)["events"] == expected["events"]

    potluck(copy, "rebuild")
    assert shown(copy) == (opened, board)
