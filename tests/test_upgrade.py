"""A data directory written by potluck 0.1.0 still opens with today's code: the same
digest and the same board, before and after ``potluck rebuild``.

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


@pytest.mark.parametrize("release", RELEASES)
def test_a_released_data_dir_opens_and_rebuilds_to_the_same_digest_and_board(
    release: str, tmp_path: Path
) -> None:
    expected = json.loads((FIXTURES / f"datadir-{release}.json").read_text())
    copy = tmp_path / "node"
    shutil.copytree(FIXTURES / f"datadir-{release}", copy)
    assert not list(copy.glob("*-wal")) and not list(copy.glob("*-shm")), "not checkpointed"

    assert shown(copy) == (expected["digest"], expected["board"])
    assert json.loads(potluck(copy, "whoami", "--json").stdout)["events"] == expected["events"]

    potluck(copy, "rebuild")
    assert shown(copy) == (expected["digest"], expected["board"])
