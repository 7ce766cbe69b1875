"""The checks of the log itself (phases 2 to 8), shared by examine and repair.

Where a rule of the log is checked, it is the store's own check that runs
(``events.verify_chain``, ``check_follows``, ``check_group``, ``check_hlc_above``, the
store's first-event and dep rules), so that doctor keeps exactly what the store would
accept from a peer and sets aside nothing it would take.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from eventlog import events
from eventlog.body import references
from eventlog.clock import wall_ms
from eventlog.errors import HlcRegression, InvalidEvent, SeqGap, UnknownGroup
from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store import Head, hash_key
from eventlog.store.append import check_first
from eventlog.store.read import load_heads, resolve
from eventlog.store.receive import hold
from node.doctor import projection
from node.doctor.database import QUARANTINE_SCHEMA, set_aside
from node.doctor.report import MAX_DETAILS, Finding, Severity, plural

CHUNK = 500
SCAN_CHUNK = 1000
PENDING_OLD_DAYS = 7


class Checkup:
    """Runs the checks on ``db`` inside the caller's write transaction, fixing as it goes.

    Fixing inside the transaction lets each later check see the log as repair will
    leave it; examine rolls it all back.
    """

    def __init__(
        self, db: sqlite3.Connection, group: Group, me: bytes | None, now_ms: Callable[[], int]
    ) -> None:
        self.db = db
        self.group = group
        self.me = me
        self.now_ms = now_ms
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

    def _scan(self, sql: str, start: tuple[object, ...]) -> Iterator[Any]:
        """The rows of ``sql`` a page at a time, so memory stays bounded on a large log.

        ``sql`` takes the key of the last row read (its first ``len(start)`` columns,
        ``start`` before the first page) and a limit. A page is read whole before its
        rows are yielded, so the caller may delete the rows it is given."""
        after = start
        while True:
            rows = self.db.execute(sql, (*after, SCAN_CHUNK)).fetchall()
            if not rows:
                return
            after = tuple(rows[-1][: len(start)])
            yield from rows

    # -- the run --------------------------------------------------------------------

    def run(self) -> None:
        self.counts = self.stats()
        self.db.execute(QUARANTINE_SCHEMA)
        projection_before, self.backlog = projection.fingerprint(self.db)
        self.check_rows()
        self.check_heads()
        self.check_pending()
        self.check_chains()
        self.check_deps()
        if self.held:
            self._find(
                "error",
                "held",
                f"{plural(self.held, 'event')} that verify come after a damaged or "
                "missing event: --repair holds them, and the next sync that brings "
                "what is missing puts them back in the log",
            )
            for author, seqs in self._held.items():
                self.repairs.append(
                    f"held {plural(len(seqs), 'event')} of {self.name(author)} "
                    f"(#{min(seqs)} to #{max(seqs)}) until what they follow arrives again"
                )
        self._store_heads()
        self.check_forks()
        found, self.projections_rebuilt = projection.rebuild_and_compare(
            self.db, projection_before, self.backlog
        )
        self.findings += found
        self.check_quarantine()
        self.check_own_chain()
        self._close_details()

    # -- 2. rows --------------------------------------------------------------------

    def check_rows(self) -> None:
        """Each row's bytes decode, are of this group and match its columns."""
        bad = 0
        for id_, hkey, hash_, author, seq, hlc, type_, raw in self._scan(
            "SELECT id, hkey, hash, author, seq, hlc, type, raw FROM events "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (0,),
        ):
            try:
                env = events.decode(raw if isinstance(raw, bytes) else b"")
            except InvalidEvent as exc:
                bad += 1
                self._quarantine_row(id_, author, seq, raw, f"it cannot be read ({exc})")
                continue
            try:
                events.check_group(env, self.group.id)
            except UnknownGroup:
                bad += 1
                self._quarantine_row(id_, env.author, env.seq, raw, "it belongs to another group")
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
        set_aside(self.db, raw, author, seq, source, reason, self.now_ms())
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

    def _computed_heads(self) -> dict[bytes, Head]:
        return {
            r[0]: Head(r[1], r[2], r[3])
            for r in self.db.execute(
                "SELECT e.author, e.seq, e.hash, e.hlc FROM events e JOIN "
                "(SELECT author, max(seq) AS top FROM events GROUP BY author) t "
                "ON e.author = t.author AND e.seq = t.top"
            )
        }

    def check_heads(self) -> None:
        """``heads`` is what sync tells peers we have: wrong, it loses or repeats events."""
        computed, stored = self._computed_heads(), load_heads(self.db)
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
                detail = f"says #{says.seq} but the log holds none of their events"
            elif have.seq == says.seq:
                detail = f"names the wrong event #{says.seq}"
            else:
                detail = f"says #{says.seq} but the log holds up to #{have.seq}"
            consequence = (
                "peers would not send the events after it"
                if have is None or (says is not None and says.seq > have.seq)
                else "sync would ask again for events it already has"
            )
            self._find(
                "error",
                "heads",
                f"the record of the latest event of {self.name(author)} {detail}: "
                f"{consequence}. --repair recomputes it from the log",
                author,
                have.seq if have else None,
            )
        self._write_heads(computed)
        self.repairs.append("recomputed the record of each member's latest event from the log")

    def _write_heads(self, heads: dict[bytes, Head]) -> None:
        self.db.execute("DELETE FROM heads")
        self.db.executemany(
            "INSERT INTO heads VALUES (?, ?, ?, ?)",
            [(a, h.seq, h.hash, h.hlc) for a, h in heads.items()],
        )

    def _store_heads(self) -> None:
        """After events left the log, heads must follow (silently: already reported)."""
        computed = self._computed_heads()
        if computed != load_heads(self.db):
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
                        check_first(self.group, chunk[0][1])
                    previous = chunk[-1][1]
                    continue
                except InvalidEvent:
                    pass  # find which event, one by one
            for id_, env in chunk:
                if broken:
                    self._orphan(id_, env)
                    continue
                problem = None
                try:
                    events.check_follows(env, previous)
                    if previous is None:
                        check_first(self.group, env)
                except SeqGap:
                    broken = True
                    self._gap(author, range(previous.seq + 1 if previous else 1, env.seq))
                    self._orphan(id_, env)
                    continue
                except InvalidEvent as exc:
                    problem = f"it does not continue its author's chain ({exc})"
                try:
                    events.verify_signature(env)
                except InvalidEvent:
                    problem = "its signature does not verify"
                if problem is not None:
                    broken = True
                    self._quarantine_row(id_, author, env.seq, env.raw, problem)
                    continue
                previous = env

    def _gap(self, author: bytes, gap: range) -> None:
        """Report events missing before a later one, unless this run set them aside."""
        if all((author, seq) in self._removed for seq in gap):
            return
        which = f"events #{gap[0]} to #{gap[-1]}" if len(gap) > 1 else f"event #{gap[0]}"
        self._find(
            "error",
            "chain-gap",
            f"{which} of {self.name(author)} "
            f"{'are' if len(gap) > 1 else 'is'} missing from the log "
            "while later ones are there: --repair holds the later ones "
            "until a neighbour sends what is missing",
            author,
            gap[0],
        )

    def _orphan(self, id_: int, env: Envelope, waiting: bytes | None = None) -> None:
        """A verified event whose predecessor or a dep left the log: back to pending."""
        try:
            events.verify_signature(env)
        except InvalidEvent:
            self._quarantine_row(id_, env.author, env.seq, env.raw, "its signature does not verify")
            return
        hold(self.db, env, waiting)
        self._gone.add(env.hash)
        self.db.execute("DELETE FROM events WHERE id = ?", (id_,))
        self.db.execute("DELETE FROM seen WHERE author = ? AND seq = ?", (env.author, env.seq))
        self.held += 1
        self._held.setdefault(env.author, []).append(env.seq)

    # -- 5. deps --------------------------------------------------------------------

    def check_deps(self) -> None:
        """Every dep (and every id the body names, docs/events.md §validity) present and
        older, as the store requires of an arriving event; streamed in canonical order,
        so a dependant of an event that left the log is seen after it (and leaves too)."""
        left: dict[bytes, int] = {}  # author -> first seq that left in this pass
        missing = 0
        for _, author, seq, id_, raw in self._scan(
            "SELECT hlc, author, seq, id, raw FROM events WHERE (hlc, author, seq) > "
            "(?, ?, ?) ORDER BY hlc, author, seq LIMIT ?",
            (-1, b"", 0),
        ):
            env = events.decode(raw)
            if author in left and seq > left[author]:
                self._orphan(id_, env)
                continue
            wanted = tuple(dict.fromkeys((*env.deps, *references(env.type, env.body))))
            found = resolve(self.db, wanted)
            absent = next((dep for dep in wanted if dep not in found), None)
            if absent is not None:
                missing += 1
                if absent not in self._gone:  # else already told, as its cause
                    self._find(
                        "error",
                        "missing-dep",
                        f"{self.describe(author, seq)} depends on an event "
                        f"({absent.hex()[:8]}) that is not in the log: --repair "
                        "holds it until a neighbour sends that event",
                        author,
                        seq,
                    )
                left[author] = seq
                self._orphan(id_, env, absent)
                continue
            try:
                for _, _, dep_hlc in found.values():
                    events.check_hlc_above(env, dep_hlc, "dep")
            except HlcRegression:
                missing += 1
                left[author] = seq
                self._quarantine_row(
                    id_, author, seq, raw, "its time stamp is not after an event it depends on"
                )
        if not missing:
            self._find("ok", "deps", "every event's dependencies are in the log")

    # -- 6. pending and forks -------------------------------------------------------

    def check_pending(self) -> None:
        count = 0
        oldest: int | None = None
        future = 0
        by_author: Counter[bytes] = Counter()
        for hash_, author, seq, raw, not_before in self._scan(
            "SELECT hash, author, seq, raw, not_before FROM pending WHERE hash > ? "
            "ORDER BY hash LIMIT ?",
            (b"",),
        ):
            problem = None
            try:
                env = events.decode(raw if isinstance(raw, bytes) else b"")
                if (env.hash, env.author, env.seq) != (hash_, author, seq):
                    problem = "it does not match its stored id"
                else:
                    events.check_group(env, self.group.id)
                    events.verify_signature(env)
            except UnknownGroup:
                problem = "it belongs to another group"
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
            f"{plural(count, 'event')} held until what they follow arrives ({who}); "
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

    # -- 8. what repairs leave behind -----------------------------------------------

    def check_quarantine(self) -> None:
        count = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        earlier = count - self.quarantined
        if earlier > 0:
            self._find(
                "info",
                "quarantine",
                f"{plural(earlier, 'damaged event')} set aside by an earlier repair (table "
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


def _ago(days: float) -> str:
    if days < 1:
        return "today"
    return "yesterday" if days < 2 else f"{days:.0f} days ago"
