"""bench/wal_pages.py, the tool behind docs/performance.md's pages-per-event figures,
still runs and names the tables an append writes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "bench" / "wal_pages.py"


def test_wal_pages_prints_pages_per_event_and_the_tables_written() -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--warm", "300", "--events", "400", "--batch", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    total = re.fullmatch(r"pages per event: (\d+\.\d\d)", lines[0])
    assert total is not None and float(total.group(1)) > 0
    assert re.fullmatch(r"bytes per event: [\d,]+ B", lines[1])
    tables = dict(
        re.fullmatch(r"(\S+): (\d+\.\d+) pages/event", line).groups()  # type: ignore[union-attr]
        for line in lines[2:]
    )
    assert {"events", "proj_state", "proj_index"} <= set(tables)
    assert abs(sum(float(v) for v in tables.values()) - float(total.group(1))) < 0.02


def test_wal_pages_refuses_a_batch_of_zero() -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--batch", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "--batch must be at least 1" in proc.stderr
