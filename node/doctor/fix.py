"""``repair``: mend the log in place where the file is sound, else salvage it.

In place means the same checks as examine (``check.Checkup``), committed instead of
rolled back: what examine reports is exactly what repair does. Index-only damage is
fixed first by ``REINDEX``; damage to the tables themselves goes to ``salvage``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from eventlog.clock import system_ms
from eventlog.identity import Group
from eventlog.store import in_transaction
from node.doctor.check import Checkup
from node.doctor.database import LOG_FILE, connect
from node.doctor.examination import examine, load_group_or_none, load_me
from node.doctor.report import MAX_DETAILS, Finding, Report
from node.doctor.salvage import salvage


async def repair(data_dir: Path, *, now_ms: Callable[[], int] = system_ms) -> Report:
    """Repair what can be repaired, then examine again; ``found`` is the first look."""
    data_dir = Path(data_dir)
    before = await examine(data_dir, now_ms=now_ms)
    repairs: list[str] = []
    group = load_group_or_none(data_dir)
    if group is not None and (data_dir / LOG_FILE).exists():
        repairs = await _repair(data_dir, group, before, now_ms)
    after = await examine(data_dir, now_ms=now_ms)
    after.repairs = repairs
    after.found = before.findings
    salvaged = [r for r in repairs if r.startswith("kept the damaged database as ")]
    if salvaged:
        after.findings.append(
            Finding(
                "warning",
                "salvaged",
                f"the log was rebuilt from a damaged file (kept as "
                f"{salvaged[0].rsplit(' ', 1)[-1]}): events lost with its damaged pages come "
                "back from any neighbour who has them, so run 'potluck sync' before posting",
            )
        )
    return after


async def _repair(
    data_dir: Path, group: Group, before: Report, now_ms: Callable[[], int]
) -> list[str]:
    path = data_dir / LOG_FILE
    codes = before.codes("error")
    if codes & {"wrong-group", "identity", "busy", "unreadable", "schema-version"}:
        return []  # nothing doctor may safely change
    if codes & {"damaged-file", "schema"}:
        repairs = await asyncio.to_thread(_reindex, path)
        if not repairs:
            return await salvage(data_dir, group, now_ms)
        recheck = await examine(data_dir, now_ms=now_ms)
        if recheck.codes("error") & {"damaged-file", "schema"}:
            return repairs + await salvage(data_dir, group, now_ms)
    else:
        repairs = []
    try:
        return repairs + await asyncio.to_thread(_repair_in_place, data_dir, group, now_ms)
    except sqlite3.DatabaseError as exc:
        if "malformed" not in str(exc) and "not a database" not in str(exc):
            raise
        return repairs + await salvage(data_dir, group, now_ms)


def _reindex(path: Path) -> list[str]:
    """Index-only damage is fixed by rebuilding the indexes from the tables."""
    try:
        db = connect(path)
    except sqlite3.Error:
        return []
    try:
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return []  # the tables themselves are damaged: REINDEX cannot help
        db.execute("REINDEX")
        if [r[0] for r in db.execute("PRAGMA integrity_check")] == ["ok"]:
            return ["rebuilt the database's indexes from its tables"]
        return []
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()


def _repair_in_place(data_dir: Path, group: Group, now_ms: Callable[[], int]) -> list[str]:
    db = connect(data_dir / LOG_FILE)
    try:
        checkup = Checkup(db, group, load_me(data_dir), now_ms)
        in_transaction(db, lambda _: checkup.run())
    finally:
        db.close()
    repairs = _summarise(checkup.repairs)
    if checkup.projections_rebuilt or checkup.repairs:
        repairs.append(
            f"rebuilt the board, inventory and roster from {checkup.projections_rebuilt:,} events"
        )
    return repairs


def _summarise(lines: Sequence[str]) -> list[str]:
    """At most MAX_DETAILS lines of each kind, then a count."""
    out: list[str] = []
    kinds: Counter[str] = Counter()
    for line in lines:
        kind = line.split(" ", 1)[0]
        kinds[kind] += 1
        if kinds[kind] <= MAX_DETAILS:
            out.append(line)
    for kind, n in kinds.items():
        if n > MAX_DETAILS:
            out.append(f"... and {kind} {n - MAX_DETAILS} more events like the above")
    return out
