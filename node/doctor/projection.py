"""Phase 7: the board, inventory and roster against a rebuild from the log.

Compared twice over: the digest of the rows the node shows, and a hash of the fold
states and index behind them (rows can be right while the states that the next event
folds into are wrong).
"""

from __future__ import annotations

import hashlib
import sqlite3

import msgpack

from node.doctor.report import Finding
from projections.runner import Runner

Fingerprint = tuple[str, str]
"""(digest of the rows, hash of the fold states and index)."""


def fingerprint(db: sqlite3.Connection) -> tuple[Fingerprint | None, int]:
    """The projections as the node would show them (None if never built), and how many
    stored events they had not folded yet (folded here first, as the node will)."""
    built = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'proj_meta'"
    ).fetchone()
    if built is None:
        return None, 0
    runner = Runner()
    backlog = 0
    try:
        backlog = runner.behind(db)
        if backlog and runner.ready(db):
            # a sync left these to its projector (a node stopped mid-sync, or one
            # syncing beside this): fold them as the node will, so what is compared
            # is the node's projections, not a moment of the sync
            runner.catch_up(db)
            runner.before_commit(db)
        return (runner.digest(db), _internal_hash(db)), backlog
    except sqlite3.OperationalError as exc:  # a projection table is missing
        return (f"unreadable: {exc}", ""), backlog


def rebuild_and_compare(
    db: sqlite3.Connection, before: Fingerprint | None, backlog: int
) -> tuple[list[Finding], int]:
    """Rebuild the projections from the log and say how ``before`` differed; also
    return how many events the rebuild folded."""
    runner = Runner()
    stale = before is not None and runner.stale(db)
    runner.setup(db)
    rebuilt = runner.rebuild(db)
    after = (runner.digest(db), _internal_hash(db))
    findings: list[Finding] = []
    if backlog:
        findings.append(
            Finding(
                "info",
                "projections-behind",
                f"{backlog:,} events a sync stored are not in the board, "
                "inventory and roster yet: the node adds them when it opens or "
                "syncs (compared here as if it had)",
            )
        )
    if before is None:
        findings.append(
            Finding(
                "info",
                "projections-missing",
                "the board, inventory and roster "
                "tables have not been built yet: the node builds them when it opens",
            )
        )
    elif stale:
        findings.append(
            Finding(
                "info",
                "projections-stale",
                "this Potluck folds some projections "
                "differently from the one that built them: they are rebuilt when the "
                "node opens",
            )
        )
    elif before[0] != after[0]:
        findings.append(
            Finding(
                "error",
                "projections",
                f"the board, inventory and roster this node shows do not match its "
                f"log (digest {before[0][:12]}, a rebuild gives {after[0][:12]}): "
                "--repair rebuilds them from the log",
            )
        )
    elif before[1] != after[1]:
        findings.append(
            Finding(
                "error",
                "projection-state",
                "the saved fold states behind the board, inventory and roster do not "
                "match the log, so later updates would go wrong: --repair rebuilds "
                "them from the log",
            )
        )
    else:
        findings.append(
            Finding(
                "ok",
                "projections",
                "the board, inventory and roster match a "
                f"rebuild from the log (digest {after[0][:12]})",
            )
        )
    return findings, rebuilt


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
