"""``potluck doctor``: check a node's database and say in plain words what is wrong.

What it checks, in this order (each finding has a severity, a stable code and a message
a volunteer can act on):

1. the file: is it an SQLite database at all, ``PRAGMA quick_check`` and
   ``integrity_check``, the tables and the group of the log;
2. every row of ``events``: its wire bytes decode, belong to this group and match the
   columns stored next to them (hash, author, seq, hlc, type);
3. ``heads`` (each member's last event, which sync sends as "what I have") against the
   events themselves;
4. every member's chain, streamed 500 events at a time: seq continues, each ``prev``
   is the hash of the event before, and the last signature of each chunk verifies
   (``events.verify_chain``: the signed hash chain covers the rest); the first event is
   a ``member.joined`` with a valid membership proof. Where a chunk fails, each event is
   checked on its own to name the damaged one;
5. deps, in canonical order: every event's deps are in the log and older;
6. ``pending`` (events held for a missing predecessor or dep): readable, signed, how
   many and how old; ``forks`` (a member who wrote two versions of one event);
7. projections: the digest of the board, inventory and roster tables, and a hash of the
   fold states and index, against a rebuild from the log.

How ``examine`` changes nothing: phases 2 to 7 run inside one ``BEGIN IMMEDIATE``
transaction that is rolled back. ``repair`` runs the same code and commits, so what
examine reports is exactly what repair does:

- an event that cannot be verified (unreadable, bad signature, another group, not
  continuing its chain) is moved to a ``quarantine`` table with the reason; nothing
  that verifies is ever deleted;
- a verified event whose predecessor or dep is no longer in the log is moved to
  ``pending``, exactly as if it had just arrived from a peer: the next sync that brings
  the missing event releases it (``Store.receive``);
- a row whose columns disagree with its (verified) bytes gets its columns rewritten;
- ``heads`` is recomputed from the events; projections are rebuilt.

If the SQLite file itself is damaged (integrity check fails and ``REINDEX`` does not
fix it, or it is not a database any more), ``repair`` *salvages*: it keeps the
damaged file as ``log.db.damaged-<time>``, reads every ``events``, ``pending`` and
``forks`` row it can, one range or one row at a time, then scans the raw bytes of the
damaged file and its WAL for anything shaped like an event (every candidate must
decode canonically and pass the store's checks, so nothing invented gets in), and
feeds them all to a fresh log through ``Store.receive``, the path a peer's events
take. Other tables (``peers``) and settings are copied where readable.

Doctor composes the store and the projections, as ``node.app`` does; it opens the
database with the standard ``sqlite3`` module because ``Store.open`` refuses a damaged
file. Stop ``potluck serve`` before ``--repair``: a salvage replaces the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgpack

from eventlog import events
from eventlog.body import references
from eventlog.clock import system_ms, wall_ms
from eventlog.errors import InvalidEvent, NotAMember, PotluckError
from eventlog.events import Envelope
from eventlog.identity import Group, check_membership_proof, load_device_key, load_group
from eventlog.store import SCHEMA_VERSION, Store, hash_key
from projections.runner import Runner

LOG_FILE = "log.db"  # the same name as node.app.LOG_FILE
CHUNK = 500
SCAN_CHUNK = 1000
MAX_DETAILS = 12
"""Findings of one kind listed one by one; the rest are counted in one more line."""
PENDING_OLD_DAYS = 7
SQLITE_HEADER = b"SQLite format 3\x00"
REQUIRED_TABLES = ("meta", "events", "heads", "seen", "pending", "forks")

Severity = Literal["ok", "info", "warning", "error"]

QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    raw_hash BLOB PRIMARY KEY,   -- BLAKE2b-256 of raw: what was set aside
    author   BLOB,               -- as the damaged row said: may itself be wrong
    seq      INTEGER,
    source   TEXT NOT NULL,      -- events, pending, forks or salvage
    reason   TEXT NOT NULL,
    at       INTEGER NOT NULL,   -- unix ms
    raw      BLOB NOT NULL
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing doctor found. ``author``/``seq`` name the event when there is one."""

    severity: Severity
    code: str
    message: str
    author: bytes | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "author": self.author.hex() if self.author else None,
            "seq": self.seq,
        }


@dataclass(slots=True)
class Report:
    """What ``examine`` found, or what ``repair`` did and what remains."""

    data_dir: Path
    findings: list[Finding] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    found: list[Finding] = field(default_factory=list)
    """For a repair: what the examination before it found."""
    events: int = 0
    authors: int = 0
    pending: int = 0
    opened: bool = False
    """Whether the log could be read at all (the counts mean something)."""

    @property
    def healthy(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def codes(self, severity: Severity | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def to_json(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "healthy": self.healthy,
            "events": self.events,
            "authors": self.authors,
            "pending": self.pending,
            "findings": [f.to_json() for f in self.findings],
            "repairs": list(self.repairs),
            "found": [f.to_json() for f in self.found],
        }


_MARK = {"ok": "ok      ", "info": "note    ", "warning": "warning ", "error": "PROBLEM "}
NOT_REPAIRABLE = frozenset(
    {"no-log", "identity", "wrong-group", "schema-version", "busy", "unreadable", "own-chain"}
)
"""Problems --repair leaves alone: they need a person (or a sync), not a rewrite."""


def render(report: Report, *, repaired: bool = False) -> list[str]:
    """The report as lines for a terminal."""
    where = report.data_dir / LOG_FILE
    lines = [
        f"Checked {where}: {_n(report.events, 'event')} from "
        f"{_n(report.authors, 'member')}, {report.pending:,} held."
        if report.opened
        else f"Checked {where}."
    ]
    if repaired:
        if report.repairs:
            lines.append("Repairs:")
            lines += [f"  done    {text}" for text in report.repairs]
        else:
            lines.append("Nothing needed repairing.")
    lines += [f"  {_MARK[f.severity]}{f.message}" for f in report.findings]
    if report.healthy:
        lines.append("The database is healthy." if not repaired else "The database is healthy now.")
    elif not repaired and report.codes("error") - NOT_REPAIRABLE:
        lines.append("Problems found: run 'potluck doctor --repair' (stop 'potluck serve' first).")
    else:
        lines.append("Problems remain: see above.")
    return lines


async def examine(data_dir: Path, *, now_ms: Callable[[], int] = system_ms) -> Report:
    """Check the node in ``data_dir`` without changing it."""
    return await asyncio.to_thread(_examine, Path(data_dir), now_ms)


async def repair(data_dir: Path, *, now_ms: Callable[[], int] = system_ms) -> Report:
    """Repair what can be repaired, then examine again; ``found`` is the first look."""
    data_dir = Path(data_dir)
    before = await examine(data_dir, now_ms=now_ms)
    repairs: list[str] = []
    group = _load_group(data_dir)
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


# -- examine -----------------------------------------------------------------------


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
    group = _load_group(data_dir, report)
    db = _connect(path, report)
    if db is None:
        return report
    try:
        if not _file_ok(db, report) or group is None or not _schema_ok(db, group, report):
            return report
        try:
            db.execute("BEGIN IMMEDIATE")
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
            doctor = _Doctor(db, group, _load_me(data_dir), now_ms, repairing=False)
            doctor.run()
            report.findings += doctor.findings
            report.events, report.authors, report.pending = doctor.counts
            report.opened = True
        except sqlite3.DatabaseError as exc:
            report.findings.append(_damaged_finding(str(exc)))
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
    finally:
        db.close()
    return report


def _load_group(data_dir: Path, report: Report | None = None) -> Group | None:
    try:
        return load_group(data_dir)
    except PotluckError as exc:
        if report is not None:
            report.findings.append(Finding("error", "identity", str(exc)))
        return None


def _load_me(data_dir: Path) -> bytes | None:
    try:
        return bytes(load_device_key(data_dir).verify_key)
    except PotluckError:
        return None


def _connect(path: Path, report: Report) -> sqlite3.Connection | None:
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
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
    except sqlite3.Error as exc:
        report.findings.append(_damaged_finding(str(exc)))
        return None
    return db


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


# -- the checks, shared by examine (rolled back) and repair (committed) ---------------


class _Doctor:
    """Runs the checks on ``db`` inside the caller's write transaction, fixing as it goes.

    Fixing inside the transaction lets each later check see the log as repair will
    leave it; examine rolls it all back.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        group: Group,
        me: bytes | None,
        now_ms: Callable[[], int],
        *,
        repairing: bool,
    ) -> None:
        self.db = db
        self.group = group
        self.me = me
        self.now_ms = now_ms
        self.repairing = repairing
        self.findings: list[Finding] = []
        self.repairs: list[str] = []
        self._names: dict[bytes, str] = {}
        self._shown: Counter[str] = Counter()
        self._hidden: Counter[str] = Counter()
        self.quarantined = 0
        self.held = 0
        self._removed: set[tuple[object, object]] = set()  # (author, seq) set aside
        self._held: dict[bytes, list[int]] = {}  # author -> seqs moved to pending
        self._gone: set[bytes] = set()  # hashes of events this run took out of the log
        self.fixed = 0
        self.projections_rebuilt = 0
        self.backlog = 0  # events stored but not folded when the projections were read
        self.counts = (0, 0, 0)

    # -- reporting ------------------------------------------------------------------

    def _find(
        self,
        severity: Severity,
        code: str,
        message: str,
        author: bytes | None = None,
        seq: int | None = None,
    ) -> None:
        if self._shown[code] >= MAX_DETAILS:
            self._hidden[code] += 1
            return
        self._shown[code] += 1
        self.findings.append(Finding(severity, code, message, author, seq))

    def _close_details(self) -> None:
        for code, hidden in self._hidden.items():
            self.findings.append(
                Finding("error", code, f"... and {hidden} more events like the above")
            )

    def name(self, author: object) -> str:
        """'Ana (3f2a9c01)': the name from the author's member.joined, and the key."""
        if not isinstance(author, bytes):
            return f"an unknown member ({author!r})"
        if author not in self._names:
            label = author.hex()[:8]
            try:
                row = self.db.execute(
                    "SELECT raw FROM events WHERE author = ? AND seq = 1", (author,)
                ).fetchone()
                if row is not None:
                    name = events.decode(row[0]).body.get("name")
                    if isinstance(name, str):
                        label = f"{name} ({author.hex()[:8]})"
            except (InvalidEvent, sqlite3.DatabaseError):
                pass
            self._names[author] = label
        return self._names[author]

    def describe(self, author: object, seq: object) -> str:
        return f"event #{seq} of {self.name(author)}"

    def stats(self) -> tuple[int, int, int]:
        events_n, authors = self.db.execute(
            "SELECT count(*), count(DISTINCT author) FROM events"
        ).fetchone()
        pending = self.db.execute("SELECT count(*) FROM pending").fetchone()[0]
        return int(events_n), int(authors), int(pending)

    # -- the run --------------------------------------------------------------------

    def run(self) -> None:
        self.counts = self.stats()
        self.db.execute(QUARANTINE_SCHEMA)
        projection_before = self._projection_fingerprint()
        self.check_rows()
        self.check_heads()
        self.check_pending()
        self.check_chains()
        self.check_deps()
        if self.held:
            self._find(
                "error",
                "held",
                f"{_n(self.held, 'event')} that verify come after a damaged or "
                "missing event: --repair holds them, and the next sync that brings "
                "what is missing puts them back in the log",
            )
            for author, seqs in self._held.items():
                self.repairs.append(
                    f"held {_n(len(seqs), 'event')} of {self.name(author)} "
                    f"(#{min(seqs)} to #{max(seqs)}) until what they follow arrives again"
                )
        self._store_heads()
        self.check_forks()
        self.check_projections(projection_before)
        self.check_quarantine()
        self.check_own_chain()
        self._close_details()

    # -- 2. rows --------------------------------------------------------------------

    def check_rows(self) -> None:
        """Each row's bytes decode, are of this group and match its columns."""
        after = 0
        bad = 0
        while True:
            rows = self.db.execute(
                "SELECT id, hkey, hash, author, seq, hlc, type, raw FROM events "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after, SCAN_CHUNK),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            for id_, hkey, hash_, author, seq, hlc, type_, raw in rows:
                try:
                    env = events.decode(raw if isinstance(raw, bytes) else b"")
                except InvalidEvent as exc:
                    bad += 1
                    self._quarantine_row(id_, author, seq, raw, f"it cannot be read ({exc})")
                    continue
                if env.group != self.group.id:
                    bad += 1
                    self._quarantine_row(
                        id_, env.author, env.seq, raw, "it belongs to another group"
                    )
                    continue
                if (hkey, hash_, author, seq, hlc, type_) == (
                    hash_key(env.hash),
                    env.hash,
                    env.author,
                    env.seq,
                    env.hlc,
                    env.type,
                ):
                    continue
                bad += 1
                try:
                    events.verify_signature(env)
                except InvalidEvent:
                    self._quarantine_row(
                        id_,
                        env.author,
                        env.seq,
                        raw,
                        "it was altered (its signature does not verify)",
                    )
                    continue
                self._fix_row(id_, env, author, seq)
        if not bad:
            self._find("ok", "rows", "every stored event is readable and matches its index")

    def _quarantine_row(
        self, id_: int, author: object, seq: object, raw: object, reason: str
    ) -> None:
        what = self.describe(author, seq)
        self._find(
            "error",
            "damaged-event",
            f"{what} is damaged: {reason}. --repair sets it aside in the quarantine "
            "table; a neighbour who has it will send it again",
            author if isinstance(author, bytes) else None,
            seq if isinstance(seq, int) else None,
        )
        self._set_aside(author, seq, raw, "events", reason)
        self._removed.add((author, seq))
        if isinstance(raw, bytes):
            self._gone.add(events.blake2b256(raw))
        self.db.execute("DELETE FROM events WHERE id = ?", (id_,))
        self.repairs.append(f"set aside {what}: {reason}")

    def _set_aside(
        self, author: object, seq: object, raw: object, source: str, reason: str
    ) -> None:
        data = raw if isinstance(raw, bytes) else (str(raw).encode() if raw is not None else b"")
        self.db.execute(
            "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                events.blake2b256(data),
                author if isinstance(author, bytes) else None,
                seq if isinstance(seq, int) else None,
                source,
                reason,
                self.now_ms(),
                data,
            ),
        )
        self.quarantined += 1

    def _fix_row(self, id_: int, env: Envelope, author: object, seq: object) -> None:
        what = self.describe(env.author, env.seq)
        try:
            self.db.execute(
                "UPDATE events SET hkey = ?, hash = ?, author = ?, seq = ?, hlc = ?, type = ? "
                "WHERE id = ?",
                (hash_key(env.hash), env.hash, env.author, env.seq, env.hlc, env.type, id_),
            )
        except sqlite3.IntegrityError:  # its real (author, seq) is taken by another event
            self._quarantine_row(
                id_, env.author, env.seq, env.raw, "a second version of an event already in the log"
            )
            return
        self.fixed += 1
        self._find(
            "error",
            "row-mismatch",
            f"the columns stored with {what} do not match the event (they say "
            f"{self.describe(author, seq)}); the event itself verifies: --repair "
            "rewrites the columns from it",
            env.author,
            env.seq,
        )
        self.repairs.append(f"rewrote the index columns of {what} from the event itself")

    # -- 3. heads -------------------------------------------------------------------

    def _computed_heads(self) -> dict[bytes, tuple[int, bytes, int]]:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in self.db.execute(
                "SELECT e.author, e.seq, e.hash, e.hlc FROM events e JOIN "
                "(SELECT author, max(seq) AS top FROM events GROUP BY author) t "
                "ON e.author = t.author AND e.seq = t.top"
            )
        }

    def _stored_heads(self) -> dict[bytes, tuple[int, bytes, int]]:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in self.db.execute("SELECT author, seq, hash, hlc FROM heads")
        }

    def check_heads(self) -> None:
        """``heads`` is what sync tells peers we have: wrong, it loses or repeats events."""
        computed, stored = self._computed_heads(), self._stored_heads()
        if computed == stored:
            self._find(
                "ok", "heads", "the record of each member's latest event agrees with the log"
            )
            return
        for author in sorted(set(computed) | set(stored)):
            have, says = computed.get(author), stored.get(author)
            if have == says:
                continue
            if says is None:
                detail = "is missing"
            elif have is None:
                detail = f"says #{says[0]} but the log holds none of their events"
            elif have[0] == says[0]:
                detail = f"names the wrong event #{says[0]}"
            else:
                detail = f"says #{says[0]} but the log holds up to #{have[0]}"
            consequence = (
                "peers would not send the events after it"
                if have is None or (says is not None and says[0] > have[0])
                else "sync would ask again for events it already has"
            )
            self._find(
                "error",
                "heads",
                f"the record of the latest event of {self.name(author)} {detail}: "
                f"{consequence}. --repair recomputes it from the log",
                author,
                have[0] if have else None,
            )
        self._write_heads(computed)
        self.repairs.append("recomputed the record of each member's latest event from the log")

    def _write_heads(self, heads: dict[bytes, tuple[int, bytes, int]]) -> None:
        self.db.execute("DELETE FROM heads")
        self.db.executemany(
            "INSERT INTO heads VALUES (?, ?, ?, ?)",
            [(a, s, h, c) for a, (s, h, c) in heads.items()],
        )

    def _store_heads(self) -> None:
        """After events left the log, heads must follow (silently: already reported)."""
        computed = self._computed_heads()
        if computed != self._stored_heads():
            self._write_heads(computed)

    # -- 4. chains ------------------------------------------------------------------

    def check_chains(self) -> None:
        authors = [r[0] for r in self.db.execute("SELECT DISTINCT author FROM events")]
        damaged = 0
        for author in authors:
            damaged += not self._check_chain(author)
        if not damaged:
            self._find(
                "ok", "chains", f"every member's chain of events verifies ({len(authors)} members)"
            )

    def _check_chain(self, author: bytes) -> bool:
        """Stream ``author``'s events by seq; return True when the whole chain verifies."""
        previous: Envelope | None = None
        broken = False
        last_seq = 0
        while True:
            rows = self.db.execute(
                "SELECT id, raw FROM events WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?",
                (author, last_seq, CHUNK),
            ).fetchall()
            if not rows:
                return not broken
            chunk = [(row[0], events.decode(row[1])) for row in rows]
            last_seq = chunk[-1][1].seq
            if not broken:
                try:
                    events.verify_chain([env for _, env in chunk], previous)
                    if previous is None:
                        _check_joined(self.group, chunk[0][1])
                    previous = chunk[-1][1]
                    continue
                except InvalidEvent:
                    pass  # find which event, one by one
            for id_, env in chunk:
                if broken:
                    self._orphan(id_, env)
                    continue
                expected = previous.seq + 1 if previous else 1
                if env.seq != expected:
                    broken = True
                    gap = range(expected, env.seq)
                    if any((author, seq) not in self._removed for seq in gap):
                        which = (
                            f"events #{gap[0]} to #{gap[-1]}"
                            if len(gap) > 1
                            else f"event #{gap[0]}"
                        )
                        self._find(
                            "error",
                            "chain-gap",
                            f"{which} of {self.name(author)} "
                            f"{'are' if len(gap) > 1 else 'is'} missing from the log "
                            "while later ones are there: --repair holds the later ones "
                            "until a neighbour sends what is missing",
                            author,
                            expected,
                        )
                    self._orphan(id_, env)
                    continue
                try:
                    events.verify_signature(env)
                except InvalidEvent:
                    broken = True
                    self._quarantine_row(
                        id_, author, env.seq, env.raw, "its signature does not verify"
                    )
                    continue
                try:
                    events.check_follows(env, previous)
                    if previous is None:
                        _check_joined(self.group, env)
                except InvalidEvent as exc:
                    broken = True
                    self._quarantine_row(
                        id_,
                        author,
                        env.seq,
                        env.raw,
                        f"it does not continue its author's chain ({exc})",
                    )
                    continue
                previous = env

    def _orphan(self, id_: int, env: Envelope, waiting: bytes | None = None) -> None:
        """A verified event whose predecessor or a dep left the log: back to pending."""
        try:
            events.verify_signature(env)
        except InvalidEvent:
            self._quarantine_row(id_, env.author, env.seq, env.raw, "its signature does not verify")
            return
        self.db.execute(
            "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, NULL)",
            (env.hash, env.author, env.seq, waiting, env.raw),
        )
        self._gone.add(env.hash)
        self.db.execute("DELETE FROM events WHERE id = ?", (id_,))
        self.db.execute("DELETE FROM seen WHERE author = ? AND seq = ?", (env.author, env.seq))
        self.held += 1
        self._held.setdefault(env.author, []).append(env.seq)

    # -- 5. deps --------------------------------------------------------------------

    def check_deps(self) -> None:
        """Every dep (and every id the body names, docs/events.md §validity) present, deps
        older; streamed in canonical order, so a dependant of an event that left the log is
        seen after it (and leaves too)."""
        left: dict[bytes, int] = {}  # author -> first seq that left in this pass
        after: tuple[int, bytes, int] = (-1, b"", 0)
        missing = 0
        while True:
            rows = self.db.execute(
                "SELECT id, raw, hlc, author, seq FROM events WHERE (hlc, author, seq) > "
                "(?, ?, ?) ORDER BY hlc, author, seq LIMIT ?",
                (*after, SCAN_CHUNK),
            ).fetchall()
            if not rows:
                break
            after = (rows[-1][2], rows[-1][3], rows[-1][4])
            for id_, raw, _, author, seq in rows:
                if author in left and seq > left[author]:
                    self._orphan(id_, events.decode(raw))
                    continue
                env = events.decode(raw)
                for dep in dict.fromkeys((*env.deps, *references(env.type, env.body))):
                    row = self.db.execute(
                        "SELECT hlc FROM events WHERE hkey = ? AND hash = ?", (hash_key(dep), dep)
                    ).fetchone()
                    if row is None:
                        missing += 1
                        if dep not in self._gone:  # else already told, as its cause
                            self._find(
                                "error",
                                "missing-dep",
                                f"{self.describe(author, seq)} depends on an event "
                                f"({dep.hex()[:8]}) that is not in the log: --repair "
                                "holds it until a neighbour sends that event",
                                author,
                                seq,
                            )
                        left[author] = seq
                        self._orphan(id_, env, dep)
                        break
                    if row[0] >= env.hlc and dep in env.deps:  # named ids: only present
                        missing += 1
                        left[author] = seq
                        self._quarantine_row(
                            id_,
                            author,
                            seq,
                            raw,
                            "its time stamp is not after an event it depends on",
                        )
                        break
        if not missing:
            self._find("ok", "deps", "every event's dependencies are in the log")

    # -- 6. pending and forks -------------------------------------------------------

    def check_pending(self) -> None:
        count = 0
        oldest: int | None = None
        future = 0
        by_author: Counter[bytes] = Counter()
        after = b""
        while True:
            rows = self.db.execute(
                "SELECT hash, author, seq, raw, not_before FROM pending WHERE hash > ? "
                "ORDER BY hash LIMIT ?",
                (after, SCAN_CHUNK),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            for hash_, author, seq, raw, not_before in rows:
                problem = None
                try:
                    env = events.decode(raw if isinstance(raw, bytes) else b"")
                    if (env.hash, env.author, env.seq) != (hash_, author, seq):
                        problem = "it does not match its stored id"
                    elif env.group != self.group.id:
                        problem = "it belongs to another group"
                    else:
                        events.verify_signature(env)
                except InvalidEvent as exc:
                    problem = f"it cannot be verified ({exc})"
                if problem is not None:
                    what = f"held {self.describe(author, seq)}"
                    self._find(
                        "error",
                        "damaged-pending",
                        f"{what} is damaged: {problem}. --repair sets it aside",
                        author if isinstance(author, bytes) else None,
                        seq if isinstance(seq, int) else None,
                    )
                    self._set_aside(author, seq, raw, "pending", problem)
                    self.db.execute("DELETE FROM pending WHERE hash = ?", (hash_,))
                    self.repairs.append(f"set aside {what}: {problem}")
                    continue
                count += 1
                by_author[env.author] += 1
                future += not_before is not None
                oldest = env.hlc if oldest is None else min(oldest, env.hlc)
        if not count:
            return
        days = (self.now_ms() - wall_ms(oldest or 0)) / 86_400_000
        who = ", ".join(f"{self.name(a)}: {n}" for a, n in by_author.most_common(5))
        text = (
            f"{_n(count, 'event')} held until what they follow arrives ({who}); "
            f"the oldest was written {_ago(days)}"
        )
        if future:
            text += f"; {future} of them are stamped in the future and wait for their time"
        if days > PENDING_OLD_DAYS:
            self._find(
                "warning",
                "pending",
                text + ": sync with the members named, or with anyone who has their events",
            )
        else:
            self._find("info", "pending", text)

    def check_forks(self) -> None:
        rows = self.db.execute(
            "SELECT author, seq, count(*) FROM forks GROUP BY author, seq ORDER BY author, seq"
        ).fetchall()
        for author, seq, versions in rows:
            self._find(
                "warning",
                "fork",
                f"{self.name(author)} wrote {versions} different versions of "
                f"event #{seq} (a copied data directory, or on purpose): their events "
                "from there on are left out of the board, inventory and roster until "
                "the group sorts it out",
                author,
                seq,
            )

    # -- 7. projections -------------------------------------------------------------

    def _projection_fingerprint(self) -> tuple[str, str] | None:
        """(digest of the rows, hash of fold states and index); None if never built."""
        built = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'proj_meta'"
        ).fetchone()
        if built is None:
            return None
        runner = Runner()
        try:
            self.backlog = runner.behind(self.db)
            if self.backlog and runner.ready(self.db):
                # a sync left these to its projector (a node stopped mid-sync, or one
                # syncing beside this): fold them as the node will, so what is compared
                # is the node's projections, not a moment of the sync
                runner.catch_up(self.db)
                runner.before_commit(self.db)
            return runner.digest(self.db), _internal_hash(self.db)
        except sqlite3.OperationalError as exc:  # a projection table is missing
            return f"unreadable: {exc}", ""

    def check_projections(self, before: tuple[str, str] | None) -> None:
        runner = Runner()
        stale = False
        if before is not None:
            stale = runner.stale(self.db)
        runner.setup(self.db)
        self.projections_rebuilt = runner.rebuild(self.db)
        after = (runner.digest(self.db), _internal_hash(self.db))
        if self.backlog:
            self._find(
                "info",
                "projections-behind",
                f"{self.backlog:,} events a sync stored are not in the board, "
                "inventory and roster yet: the node adds them when it opens or "
                "syncs (compared here as if it had)",
            )
        if before is None:
            self._find(
                "info",
                "projections-missing",
                "the board, inventory and roster "
                "tables have not been built yet: the node builds them when it opens",
            )
        elif stale:
            self._find(
                "info",
                "projections-stale",
                "this Potluck folds some projections "
                "differently from the one that built them: they are rebuilt when the "
                "node opens",
            )
        elif before[0] != after[0]:
            self._find(
                "error",
                "projections",
                f"the board, inventory and roster this node shows do not match its "
                f"log (digest {before[0][:12]}, a rebuild gives {after[0][:12]}): "
                "--repair rebuilds them from the log",
            )
        elif before[1] != after[1]:
            self._find(
                "error",
                "projection-state",
                "the saved fold states behind the board, inventory and roster do not "
                "match the log, so later updates would go wrong: --repair rebuilds "
                "them from the log",
            )
        else:
            self._find(
                "ok",
                "projections",
                "the board, inventory and roster match a "
                f"rebuild from the log (digest {after[0][:12]})",
            )

    # -- 8. what repairs leave behind -----------------------------------------------

    def check_quarantine(self) -> None:
        count = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        earlier = count - self.quarantined
        if earlier > 0:
            self._find(
                "info",
                "quarantine",
                f"{_n(earlier, 'damaged event')} set aside by an earlier repair (table "
                "quarantine of log.db): kept, but not used",
            )

    def check_own_chain(self) -> None:
        """Own events that left the log: posting now would fork this node's own chain."""
        if self.me is None:
            return
        head = self.db.execute("SELECT seq FROM heads WHERE author = ?", (self.me,)).fetchone()
        top = head[0] if head else 0
        row = self.db.execute(
            "SELECT min(seq) FROM (SELECT seq FROM pending WHERE author = ? UNION ALL "
            "SELECT seq FROM quarantine WHERE author = ? AND seq > ?)",
            (self.me, self.me, top),
        ).fetchone()
        if row[0] is None:
            return
        self._find(
            "error",
            "own-chain",
            f"events this node wrote from #{top + 1} on are not in its log (damaged "
            "or waiting for an earlier one): run 'potluck sync' with a neighbour "
            "before posting, or what you post would conflict with them",
            self.me,
            top + 1,
        )


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _ago(days: float) -> str:
    if days < 1:
        return "today"
    return "yesterday" if days < 2 else f"{days:.0f} days ago"


def _check_joined(group: Group, env: Envelope) -> None:
    if env.type != "member.joined" or not check_membership_proof(
        group, env.author, env.body.get("proof")
    ):
        raise NotAMember("the first event is not a member.joined with a valid membership proof")


def _internal_hash(db: sqlite3.Connection) -> str:
    """The runner's fold states and index, by entity name: the numbers entities get
    differ between a live fold and a rebuild, and mean nothing outside this node."""
    h = hashlib.blake2b(digest_size=32)
    for query in (
        "SELECT e.name, s.last, s.state, s.tables FROM proj_state s "
        "JOIN proj_entities e ON e.id = s.entity ORDER BY e.name",
        "SELECT e.name, i.hlc, i.author, i.seq FROM proj_index i "
        "JOIN proj_entities e ON e.id = i.entity ORDER BY e.name, i.hlc, i.author, i.seq",
    ):
        for row in db.execute(query):
            h.update(msgpack.packb(list(row), use_bin_type=True))
    return h.hexdigest()


# -- repair ------------------------------------------------------------------------


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
            return await _salvage(data_dir, group, now_ms)
        recheck = await examine(data_dir, now_ms=now_ms)
        if recheck.codes("error") & {"damaged-file", "schema"}:
            return repairs + await _salvage(data_dir, group, now_ms)
    else:
        repairs = []
    try:
        return repairs + await asyncio.to_thread(_repair_in_place, data_dir, group, now_ms)
    except sqlite3.DatabaseError as exc:
        if "malformed" not in str(exc) and "not a database" not in str(exc):
            raise
        return repairs + await _salvage(data_dir, group, now_ms)


def _reindex(path: Path) -> list[str]:
    """Index-only damage is fixed by rebuilding the indexes from the tables."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error:
        return []
    try:
        db.execute("PRAGMA busy_timeout = 10000")
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
    db = sqlite3.connect(data_dir / LOG_FILE, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("BEGIN IMMEDIATE")
        try:
            doctor = _Doctor(db, group, _load_me(data_dir), now_ms, repairing=True)
            doctor.run()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()
    repairs = _summarise(doctor.repairs)
    if doctor.projections_rebuilt or doctor.repairs:
        repairs.append(
            f"rebuilt the board, inventory and roster from {doctor.projections_rebuilt:,} events"
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


# -- salvage -----------------------------------------------------------------------

_CORE_TABLES = {
    "meta",
    "events",
    "heads",
    "seen",
    "pending",
    "forks",
    "quarantine",
    "proj_meta",
    "proj_entities",
    "proj_state",
    "proj_index",
}
_EVENT_START = b"\xa6author\xc4\x20"
"""An event's wire bytes: a map of 9 or 10 keys whose first key is "author" (bin 32)."""


async def _salvage(data_dir: Path, group: Group, now_ms: Callable[[], int]) -> list[str]:
    """Copy every readable, verifiable event of the damaged log into a fresh one."""
    path = data_dir / LOG_FILE
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now_ms() / 1000))
    damaged = data_dir / f"{LOG_FILE}.damaged-{stamp}"
    fresh = data_dir / f"{LOG_FILE}.salvage"
    for suffix in ("", "-wal", "-shm"):
        _remove(Path(str(fresh) + suffix))
    # the damaged file and its WAL, byte for byte, before SQLite touches them
    for suffix in ("", "-wal"):
        original = Path(str(path) + suffix)
        if original.exists():
            shutil.copyfile(original, Path(str(damaged) + suffix))
            _fsync(Path(str(damaged) + suffix))
    tally: Counter[str] = Counter()
    seen: set[bytes] = set()
    store = await Store.open(fresh, group, now_ms=now_ms)
    try:
        await store.write(lambda db: db.execute(QUARANTINE_SCHEMA))
        old = _open_damaged(path)
        sources: list[tuple[str, Iterator[object]]] = []
        if old is not None:
            sources += [
                ("events", _rows(old, "events", "raw")),
                ("pending", _rows(old, "pending", "raw", rowid=False)),
                ("forks", _rows(old, "forks", "raw", rowid=False)),
            ]
        sources += [("scan", _carve(Path(str(damaged) + suffix))) for suffix in ("", "-wal")]
        for source, rows in sources:
            batch: list[Envelope] = []
            for item in rows:
                raw = item[0] if isinstance(item, tuple) else item
                if not isinstance(raw, bytes):
                    continue
                digest = events.blake2b256(raw)
                if digest in seen:
                    continue
                seen.add(digest)
                try:
                    batch.append(events.decode(raw))
                except InvalidEvent as exc:
                    if source != "scan":  # a table row that was an event: keep it
                        await _quarantine(store, raw, "salvage", f"cannot be read ({exc})", now_ms)
                        tally["quarantined"] += 1
                    continue
                if len(batch) >= CHUNK:
                    await _receive(store, batch, source, tally, now_ms)
                    batch = []
            await _receive(store, batch, source, tally, now_ms)
        if old is not None:
            tally["tables"] += await _copy_extras(old, store)
            old.close()
        runner = Runner()
        await store.write(runner.setup)
        tally["folded"] = await store.write(runner.rebuild)
        counts = (await store.count(), await store.pending_count())
    finally:
        await store.close()
    for suffix in ("-wal", "-shm"):  # never let the new file meet the old one's WAL
        _remove(Path(str(path) + suffix))
    os.replace(fresh, path)
    _fsync(data_dir)
    return _salvage_report(damaged, counts, tally)


def _salvage_report(damaged: Path, counts: tuple[int, int], tally: Counter[str]) -> list[str]:
    stored, held = counts
    lines = [
        f"kept the damaged database as {damaged.name}",
        f"saved {stored:,} verified events into a fresh log.db "
        f"({tally['stored-events']:,} from readable rows of the events table, "
        f"{tally['stored-scan']:,} found by scanning the damaged file's pages, "
        f"{tally['stored-pending'] + tally['stored-forks']:,} from held events)",
    ]
    if held:
        lines.append(
            f"holding {held:,} events until the events before them arrive: run "
            "'potluck sync' with a neighbour to fetch what was lost"
        )
    if tally["quarantined"]:
        lines.append(
            f"set aside {tally['quarantined']:,} events that could not be verified "
            "(table quarantine)"
        )
    if tally["forks"]:
        lines.append(f"kept {tally['forks']:,} conflicting versions as fork evidence")
    if tally["tables"]:
        lines.append(f"copied {tally['tables']:,} settings and known peers")
    lines.append(f"rebuilt the board, inventory and roster from {tally['folded']:,} events")
    return lines


async def _receive(
    store: Store, batch: list[Envelope], source: str, tally: Counter[str], now_ms: Callable[[], int]
) -> None:
    if not batch:
        return
    result = await store.receive(batch)
    tally[f"stored-{source}"] += len(result.stored)
    tally["forks"] += len(result.forks)
    for env, exc in result.rejected:
        if source == "scan" and isinstance(exc, InvalidEvent) and exc.code == "unknown-group":
            continue  # bytes of another group's event in a reused page: not ours to keep
        await _quarantine(store, env.raw, source, str(exc), now_ms, env.author, env.seq)
        tally["quarantined"] += 1


async def _quarantine(
    store: Store,
    raw: bytes,
    source: str,
    reason: str,
    now_ms: Callable[[], int],
    author: bytes | None = None,
    seq: int | None = None,
) -> None:
    await store.write(
        lambda db: db.execute(
            "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
            (events.blake2b256(raw), author, seq, source, reason, now_ms(), raw),
        )
    )


def _open_damaged(path: Path) -> sqlite3.Connection | None:
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.DatabaseError:
        return None


def _rows(
    db: sqlite3.Connection, table: str, columns: str, *, rowid: bool = True
) -> Iterator[tuple[object, ...]]:
    """Every row of ``table`` that can still be read: ranges while they work, then one
    rowid at a time across the damaged part. WITHOUT ROWID tables: until the first error
    (the page scan finds the rest)."""
    if not rowid:
        with contextlib.suppress(sqlite3.DatabaseError):
            yield from db.execute(f"SELECT {columns} FROM {table}")
        return
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = None
    after = 0
    misses = 0
    while top is None or after < top:
        try:
            rows = db.execute(
                f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 256",
                (after,),
            ).fetchall()
        except sqlite3.DatabaseError:
            rows = None
        if rows:
            for row in rows:
                yield tuple(row[1:])
            after = rows[-1][0]
            misses = 0
            continue
        if rows == [] and top is None:
            return
        for rid in range(after + 1, after + 257):  # step over the damaged range
            try:
                row = db.execute(
                    f"SELECT {columns} FROM {table} WHERE rowid = ?", (rid,)
                ).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is not None:
                yield tuple(row)
                misses = 0
            else:
                misses += 1
        after += 256
        if top is None and misses > 100_000:
            return


def _carve(path: Path) -> Iterator[bytes]:
    """Every byte string in ``path`` that parses as one msgpack map starting like an
    event. Nothing is trusted: the caller decodes and the store verifies each one."""
    try:
        f = path.open("rb")
    except OSError:
        return
    with f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty file
            return
        with mm:
            pos = mm.find(_EVENT_START, 1)
            while pos != -1:
                start = pos - 1
                if mm[start] in (0x89, 0x8A):
                    raw = _one_object(mm, start)
                    if raw is not None:
                        yield raw
                pos = mm.find(_EVENT_START, pos + 1)


def _one_object(mm: mmap.mmap, start: int) -> bytes | None:
    """The msgpack object at ``start``: most events fit in 4 KiB, so try that first."""
    for size in (4096, events.MAX_EVENT_BYTES):
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=2 * events.MAX_EVENT_BYTES)
        unpacker.feed(mm[start : start + size])
        try:
            unpacker.skip()
            return bytes(mm[start : start + unpacker.tell()])
        except msgpack.OutOfData:
            continue
        except Exception:  # garbage is expected here
            return None
    return None


async def _copy_extras(old: sqlite3.Connection, store: Store) -> int:
    """Settings (meta x-*) and tables of other modules (peers), where readable."""
    copied = 0
    try:
        extras = [
            (r[0], r[1])
            for r in old.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL"
            )
        ]
    except sqlite3.DatabaseError:
        extras = []
    projection_tables = {t.name for p in Runner().projections for t in p.TABLES}
    settings = [
        r
        for r in _rows(old, "meta", "key, value", rowid=False)
        if isinstance(r[0], str) and r[0].startswith("x-")
    ]
    if settings:
        await store.write(
            lambda db: db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", settings)
        )
        copied += len(settings)
    for name, sql in extras:
        if name in _CORE_TABLES or name in projection_tables or name.startswith("sqlite_"):
            continue
        rows = list(_rows(old, f'"{name}"', "*", rowid=False))

        def copy(
            db: sqlite3.Connection,
            name: str = name,
            sql: str = sql,
            rows: list[tuple[object, ...]] = rows,
        ) -> int:
            db.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                db.executemany(f'INSERT OR IGNORE INTO "{name}" VALUES ({marks})', rows)
            return len(rows)

        with contextlib.suppress(PotluckError):
            copied += await store.write(copy)
    return copied


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
