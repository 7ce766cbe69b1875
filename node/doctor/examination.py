"""``examine``: check the file, its schema and group, then the log, changing nothing.

The file checks (phase 1) run first and alone: a file SQLite cannot read, or a log of
another schema or group, is reported without reading any event. The log's checks
(``check.Checkup``) run inside a write transaction that is rolled back, so they see
the log as ``--repair`` would leave it while the file stays as it was.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from eventlog.clock import system_ms
from eventlog.errors import PotluckError
from eventlog.identity import Group, load_device_key, load_group
from eventlog.store import SCHEMA_VERSION, begin_write
from node.doctor.check import Checkup
from node.doctor.database import LOG_FILE, REQUIRED_TABLES, SQLITE_HEADER, connect
from node.doctor.report import Finding, Report


async def examine(data_dir: Path, *, now_ms: Callable[[], int] = system_ms) -> Report:
    """Check the node in ``data_dir`` without changing it."""
    return await asyncio.to_thread(_examine, Path(data_dir), now_ms)


def _examine(data_dir: Path, now_ms: Callable[[], int]) -> Report:
    report = Report(data_dir)
    path = data_dir / LOG_FILE
    if not path.exists():
        damaged = sorted(p.name for p in data_dir.glob(LOG_FILE + ".damaged-*"))
        hint = f" (a damaged copy is kept as {damaged[-1]})" if damaged else ""
        report.findings.append(
            Finding(
                "error",
                "no-log",
                f"there is no Potluck log at {path}{hint}: run 'potluck init' to start a node",
            )
        )
        return report
    group = load_group_or_none(data_dir, report)
    db = _open(path, report)
    if db is None:
        return report
    try:
        if not _file_ok(db, report) or group is None or not _schema_ok(db, group, report):
            return report
        try:
            begin_write(db)
        except sqlite3.OperationalError as exc:
            report.findings.append(
                Finding(
                    "error",
                    "busy",
                    f"the database is busy ({exc}): another Potluck command is writing; try again",
                )
            )
            return report
        try:
            checkup = Checkup(db, group, load_me(data_dir), now_ms)
            checkup.run()
            report.findings += checkup.findings
            report.events, report.authors, report.pending = checkup.counts
            report.opened = True
        except sqlite3.DatabaseError as exc:
            report.findings.append(_damaged_finding(str(exc)))
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
    finally:
        db.close()
    return report


def load_group_or_none(data_dir: Path, report: Report | None = None) -> Group | None:
    """The group of ``data_dir``; None (and a finding in ``report``) if it cannot be read."""
    try:
        return load_group(data_dir)
    except PotluckError as exc:
        if report is not None:
            report.findings.append(Finding("error", "identity", str(exc)))
        return None


def load_me(data_dir: Path) -> bytes | None:
    """This node's author key, to tell whether its own chain lost events."""
    try:
        return bytes(load_device_key(data_dir).verify_key)
    except PotluckError:
        return None


def _open(path: Path, report: Report) -> sqlite3.Connection | None:
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        report.findings.append(
            Finding("error", "unreadable", f"cannot read {path}: {exc.strerror or exc}")
        )
        return None
    if header != SQLITE_HEADER:
        report.findings.append(_damaged_finding("the file is not an SQLite database any more"))
        return None
    try:
        return connect(path)
    except sqlite3.Error as exc:
        report.findings.append(_damaged_finding(str(exc)))
        return None


def _damaged_finding(detail: str) -> Finding:
    detail = " ".join(detail.replace("*** in database main ***", "").split())
    return Finding(
        "error",
        "damaged-file",
        f"the database file is damaged ({detail}): 'potluck doctor --repair' "
        "saves every event it can still read and verify into a fresh log",
    )


def _file_ok(db: sqlite3.Connection, report: Report) -> bool:
    """quick_check, then integrity_check (which also compares indexes with tables)."""
    try:
        for pragma in ("quick_check", "integrity_check"):
            lines = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}(20)")]
            if lines != ["ok"]:
                report.findings.append(
                    _damaged_finding(f"SQLite {pragma.replace('_', ' ')}: {'; '.join(lines[:3])}")
                )
                return False
    except sqlite3.DatabaseError as exc:
        report.findings.append(_damaged_finding(str(exc)))
        return False
    report.findings.append(
        Finding("ok", "integrity", "the database file passes SQLite's integrity check")
    )
    return True


def _schema_ok(db: sqlite3.Connection, group: Group, report: Report) -> bool:
    """The store's tables are there, and ``meta`` names this schema and this group.

    The store checks the same when it opens (``Store._create_schema``) but stops at the
    first difference; here each has its own finding, and a missing table is something
    salvage can mend while another group is not."""
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            report.findings.append(
                Finding(
                    "error",
                    "schema",
                    f"the log is missing its {', '.join(missing)} "
                    "table(s): 'potluck doctor --repair' salvages what it can find",
                )
            )
            return False
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'group')"))
    except sqlite3.DatabaseError as exc:
        report.findings.append(_damaged_finding(str(exc)))
        return False
    if meta.get("schema") != SCHEMA_VERSION:
        report.findings.append(
            Finding(
                "error",
                "schema-version",
                f"the log has schema {meta.get('schema')!r}; this Potluck reads {SCHEMA_VERSION}",
            )
        )
        return False
    if meta.get("group") != group.id:
        report.findings.append(
            Finding(
                "error",
                "wrong-group",
                "the log belongs to another group than group.bin: was "
                "group.bin or log.db copied from another node? Doctor changes nothing here",
            )
        )
        return False
    return True
