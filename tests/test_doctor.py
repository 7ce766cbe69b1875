"""``potluck doctor``: it names what is damaged, and ``--repair`` keeps every event that
verifies.

One three-member group (Ana, Bo, Cy, each on their own node, synced both ways between
posts so events carry deps) is built once; each test copies Ana's data directory,
damages it the way a disk or a meddler would (directly in SQLite, or by overwriting the
file's pages) and runs ``node.doctor``. Where events leave Ana's log, Bo's node plays the
neighbour whose next sync brings them back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from helpers import potluck

from eventlog import body as b
from eventlog.identity import Group
from node import doctor
from node.app import LOG_FILE, Node


@dataclass(frozen=True)
class Member:
    author: bytes
    events: int


@dataclass(frozen=True)
class Template:
    root: Path
    members: dict[str, Member]
    hashes: frozenset[bytes]
    digest: str


async def sync(source: Node, target: Node) -> None:
    """One catch-up pass, as a session does: what ``target`` lacks, author by author."""
    vector = {a: s for a, (s, _) in (await target.store.vector()).items()}
    async for batch in source.store.read_since(vector):
        result = await target.store.receive(batch)
        assert not result.rejected


async def build(root: Path) -> Template:
    group = Group.new("Eastside")
    ana = await Node.init(root / "ana", "Ana", group)
    bo = await Node.init(root / "bo", "Bo", group)
    cy = await Node.init(root / "cy", "Cy", group)
    nodes = (ana, bo, cy)

    async def mesh() -> None:
        for source in nodes:
            for target in nodes:
                if source is not target:
                    await sync(source, target)

    try:
        await ana.post(b.LocationDefined(slug="pantry", name="Church pantry", kind="pantry"))
        await ana.post(
            b.ItemDefined(
                slug="beans", name="Beans", unit="can", category="food", storage="ambient"
            )
        )
        await mesh()
        offers = []
        for round_ in range(4):
            offers.append(await bo.post(b.OfferPosted(title=f"Soup {round_}", quantity=5)))
            await cy.post(
                b.StockAdjusted(
                    item="beans", location="pantry", delta=3 + round_, reason="donation"
                )
            )
            await ana.post(b.NeedPosted(title=f"Nappies {round_}", quantity=2))
            await mesh()
            await cy.post(b.ClaimMade(target=offers[-1].hash, quantity=1))
            await bo.post(b.StockCounted(item="beans", location="pantry", count=10 + round_))
            await mesh()
        members = {}
        for name, node in (("ana", ana), ("bo", bo), ("cy", cy)):
            members[name] = Member(node.author, (await node.store.heads())[node.author].seq)
        hashes = frozenset([e.hash async for e in ana.iter_log()])
        digest = await ana.store.read(ana.runner.digest)
        assert digest == await bo.store.read(bo.runner.digest)
    finally:
        for node in nodes:
            await node.close()
    return Template(root, members, hashes, digest)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return asyncio.run(build(tmp_path_factory.mktemp("doctor")))


@pytest.fixture
def ana(template: Template, tmp_path: Path) -> Path:
    """A fresh copy of Ana's data directory."""
    target = tmp_path / "ana"
    shutil.copytree(template.root / "ana", target)
    assert not (target / (LOG_FILE + "-wal")).exists()
    return target


def edit(data_dir: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    db = sqlite3.connect(data_dir / LOG_FILE)
    db.execute(sql, params)
    db.commit()
    db.close()


def query(data_dir: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = sqlite3.connect(data_dir / LOG_FILE)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def flip_byte(data_dir: Path, author: bytes, seq: int, at: Callable[[bytes], int]) -> None:
    [(raw,)] = query(data_dir, "SELECT raw FROM events WHERE author = ? AND seq = ?", (author, seq))
    assert isinstance(raw, bytes)
    i = at(raw)
    edit(
        data_dir,
        "UPDATE events SET raw = ? WHERE author = ? AND seq = ?",
        (raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :], author, seq),
    )


def in_type(raw: bytes) -> int:
    """A byte inside the type text: still decodes, no longer verifies."""
    return raw.index(b"\xa4type") + 8


def state(data_dir: Path) -> tuple[object, ...]:
    """What examine must not change: events, heads, pending, tables."""
    return (
        query(data_dir, "SELECT id, hash, raw FROM events ORDER BY id"),
        query(data_dir, "SELECT * FROM heads ORDER BY author"),
        query(data_dir, "SELECT * FROM pending ORDER BY hash"),
        query(data_dir, "SELECT name FROM sqlite_master ORDER BY name"),
        query(data_dir, "SELECT * FROM board_entries ORDER BY id"),
    )


def examine(data_dir: Path) -> doctor.Report:
    return asyncio.run(doctor.examine(data_dir))


def repair(data_dir: Path) -> doctor.Report:
    return asyncio.run(doctor.repair(data_dir))


def errors(report: doctor.Report) -> list[doctor.Finding]:
    return [f for f in report.findings if f.severity == "error"]


async def receive_from(neighbour: Path, data_dir: Path) -> int:
    """The neighbour's next sync into ``data_dir``; return how many events it stored."""
    source, target = await Node.open(neighbour), await Node.open(data_dir)
    try:
        before = await target.store.count()
        await sync(source, target)
        return await target.store.count() - before
    finally:
        await source.close()
        await target.close()


def log_hashes(data_dir: Path) -> set[bytes]:
    return {bytes(r[0]) for r in query(data_dir, "SELECT hash FROM events")}  # type: ignore[arg-type]


def digest_of(data_dir: Path) -> str:
    async def run() -> str:
        node = await Node.open(data_dir)
        try:
            return await node.store.read(node.runner.digest)
        finally:
            await node.close()

    return asyncio.run(run())


# -- healthy ------------------------------------------------------------------------


def test_a_healthy_node_passes_every_check_and_examine_changes_nothing(
    ana: Path, template: Template
) -> None:
    before = state(ana)
    report = examine(ana)
    assert report.healthy and report.exit_code == 0, report.findings
    assert {"integrity", "rows", "heads", "chains", "deps", "projections"} <= report.codes("ok")
    assert report.events == len(template.hashes) and report.authors == 3
    assert state(ana) == before
    assert "The database is healthy." in doctor.render(report)


def test_repair_of_a_healthy_node_keeps_every_event_and_the_digest(
    ana: Path, template: Template
) -> None:
    report = repair(ana)
    assert report.healthy
    assert not [f for f in report.found if f.severity == "error"]
    assert log_hashes(ana) == template.hashes
    assert digest_of(ana) == template.digest


# -- a tampered event ---------------------------------------------------------------


def test_an_altered_event_is_named_and_repair_quarantines_only_it_until_a_neighbour_resends(
    ana: Path, template: Template
) -> None:
    bo = template.members["bo"]
    flip_byte(ana, bo.author, 3, in_type)
    before = state(ana)

    report = examine(ana)
    assert report.exit_code == 1
    damaged = [f for f in errors(report) if f.code == "damaged-event"]
    assert [(f.author, f.seq) for f in damaged] == [(bo.author, 3)]
    assert "Bo" in damaged[0].message and "#3" in damaged[0].message
    assert "held" in report.codes("error")  # Bo's later events follow the damaged one
    assert state(ana) == before  # examine changed nothing

    fixed = repair(ana)
    # Ana's later events depend on Bo's #3 and after, so they wait too: she must sync
    # before posting, or her next event would take a seq one of them already has
    assert {f.code for f in errors(fixed)} == {"own-chain"}, fixed.findings
    assert any("set aside event #3 of Bo" in line for line in fixed.repairs)
    proc = potluck(ana, "need", "post", "Rice", ok=False)
    assert proc.returncode != 0 and "potluck sync" in proc.stderr
    quarantined = query(ana, "SELECT author, seq, source, reason FROM quarantine")
    assert [(q[0], q[1], q[2]) for q in quarantined] == [(bo.author, 3, "events")]
    assert "signature" in str(quarantined[0][3])
    held = query(ana, "SELECT author, seq FROM pending WHERE author = ? ORDER BY seq", (bo.author,))
    assert [s for _, s in held] == list(range(4, bo.events + 1))
    kept = log_hashes(ana)
    assert len(kept) + len(query(ana, "SELECT hash FROM pending")) + 1 == len(template.hashes)
    assert kept < template.hashes
    assert query(ana, "SELECT seq FROM heads WHERE author = ?", (bo.author,)) == [(2,)]

    # Bo's node sends #3 again; the held events follow it back into the log
    asyncio.run(receive_from(template.root / "bo", ana))
    assert log_hashes(ana) == template.hashes
    assert query(ana, "SELECT count(*) FROM pending") == [(0,)]
    after = examine(ana)
    assert after.healthy and "pending" not in after.codes()
    assert digest_of(ana) == template.digest


def test_an_unreadable_event_row_is_named_by_its_columns(ana: Path, template: Template) -> None:
    cy = template.members["cy"]
    edit(
        ana,
        "UPDATE events SET raw = ? WHERE author = ? AND seq = ?",
        (b"\x00garbage", cy.author, cy.events),
    )
    report = examine(ana)
    [found] = [f for f in errors(report) if f.code == "damaged-event"]
    assert (found.author, found.seq) == (cy.author, cy.events)
    assert "cannot be read" in found.message
    fixed = repair(ana)
    assert fixed.healthy
    assert log_hashes(ana) == template.hashes - {_hash_of(template, "cy", cy.events)}


def _hash_of(template: Template, name: str, seq: int) -> bytes:
    [(hash_,)] = query(
        template.root / name,
        "SELECT hash FROM events WHERE author = ? AND seq = ?",
        (template.members[name].author, seq),
    )
    assert isinstance(hash_, bytes)
    return hash_


def test_own_damaged_event_stays_a_problem_until_a_neighbour_sends_it_back(
    ana: Path, template: Template
) -> None:
    me = template.members["ana"]
    sig_start = lambda raw: raw.index(b"\xa3sig\xc4\x40") + 10  # noqa: E731
    flip_byte(ana, me.author, me.events - 1, sig_start)
    fixed = repair(ana)
    assert fixed.exit_code == 1
    [own] = [f for f in errors(fixed) if f.code == "own-chain"]
    assert f"#{me.events - 1}" in own.message and "potluck sync" in own.message
    asyncio.run(receive_from(template.root / "bo", ana))
    assert examine(ana).healthy
    assert log_hashes(ana) == template.hashes


def test_reading_a_damaged_event_gives_one_line_pointing_to_doctor(
    ana: Path, template: Template
) -> None:
    edit(
        ana,
        "UPDATE events SET raw = ? WHERE author = ? AND seq = 3",
        (b"\x93garbage", template.members["bo"].author),
    )
    assert_one_line_pointing_to_doctor(potluck(ana, "log", ok=False))


def test_event_columns_that_disagree_with_a_verified_event_are_rewritten(
    ana: Path, template: Template
) -> None:
    bo = template.members["bo"]
    edit(ana, "UPDATE events SET seq = 99, hlc = 5 WHERE author = ? AND seq = 2", (bo.author,))
    report = examine(ana)
    assert [(f.author, f.seq) for f in errors(report) if f.code == "row-mismatch"] == [
        (bo.author, 2)
    ]
    fixed = repair(ana)
    assert fixed.healthy and "held" not in {f.code for f in fixed.found}
    assert log_hashes(ana) == template.hashes
    assert query(ana, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_damaged_held_event_is_set_aside_and_a_fork_is_reported_not_changed(
    ana: Path, template: Template
) -> None:
    bo = template.members["bo"]
    edit(
        ana,
        "INSERT INTO pending VALUES (?, ?, ?, NULL, ?, NULL)",
        (bytes(32), bo.author, bo.events + 5, b"\x8anot an event"),
    )
    [(raw,)] = query(ana, "SELECT raw FROM events WHERE author = ? AND seq = 2", (bo.author,))
    edit(ana, "INSERT INTO forks VALUES (?, 2, ?, ?)", (bo.author, bytes(range(32)), raw))
    report = examine(ana)
    assert [(f.author, f.seq) for f in errors(report) if f.code == "damaged-pending"] == [
        (bo.author, bo.events + 5)
    ]
    [fork] = [f for f in report.findings if f.code == "fork"]
    assert fork.severity == "warning" and "Bo" in fork.message and "#2" in fork.message
    fixed = repair(ana)
    assert fixed.healthy and "fork" in fixed.codes("warning")
    assert query(ana, "SELECT source FROM quarantine") == [("pending",)]
    assert query(ana, "SELECT count(*) FROM pending") == [(0,)]
    assert query(ana, "SELECT count(*) FROM forks") == [(1,)]


# -- projections and heads ----------------------------------------------------------


def test_tampered_projection_rows_are_found_and_repair_rebuilds_them(
    ana: Path, template: Template
) -> None:
    edit(ana, "UPDATE board_entries SET title = 'Free caviar' WHERE title = 'Soup 1'")
    report = examine(ana)
    assert "projections" in report.codes("error")
    assert query(ana, "SELECT count(*) FROM board_entries WHERE title = 'Free caviar'") == [(1,)]
    fixed = repair(ana)
    assert fixed.healthy and "projections" in fixed.codes("ok")
    assert digest_of(ana) == template.digest


def test_tampered_fold_state_is_found_even_when_the_rows_are_right(
    ana: Path, template: Template
) -> None:
    [(entity, state_)] = query(
        ana,
        "SELECT s.entity, s.state FROM proj_state s JOIN "
        "proj_entities e ON e.id = s.entity WHERE e.name LIKE "
        "'stock:%' LIMIT 1",
    )
    assert isinstance(state_, bytes)
    edit(
        ana,
        "UPDATE proj_state SET state = ? WHERE entity = ?",
        (msgpack.packb({"junk": 1}), entity),
    )
    report = examine(ana)
    assert "projection-state" in report.codes("error")
    assert repair(ana).healthy
    assert digest_of(ana) == template.digest


def test_a_wrong_heads_table_is_found_and_recomputed(ana: Path, template: Template) -> None:
    bo, cy = template.members["bo"], template.members["cy"]
    edit(ana, "UPDATE heads SET seq = seq - 2 WHERE author = ?", (bo.author,))
    edit(ana, "DELETE FROM heads WHERE author = ?", (cy.author,))
    report = examine(ana)
    heads = sorted((f.author or b"", f.message) for f in errors(report) if f.code == "heads")
    assert [a for a, _ in heads] == sorted([bo.author, cy.author])
    assert any("already has" in m for _, m in heads) and any("missing" in m for _, m in heads)
    assert repair(ana).healthy
    got = query(ana, "SELECT author, seq FROM heads ORDER BY author")
    assert got == sorted((m.author, m.events) for m in template.members.values())


def test_a_missing_dep_holds_its_dependants_until_it_comes_back(
    ana: Path, template: Template
) -> None:
    # delete Bo's #2 outright (not damaged: gone); Bo's later events and every event
    # that depended on one of them leave the log for pending, then come back
    bo = template.members["bo"]
    edit(ana, "DELETE FROM events WHERE author = ? AND seq = 2", (bo.author,))
    report = examine(ana)
    [gap] = [f for f in errors(report) if f.code == "chain-gap"]
    assert (gap.author, gap.seq) == (bo.author, 2)
    fixed = repair(ana)
    held = query(ana, "SELECT DISTINCT author FROM pending")
    assert (template.members["cy"].author,) in held  # Cy's claims depend on Bo's offers
    assert fixed.healthy or {f.code for f in errors(fixed)} == {"own-chain"}
    asyncio.run(receive_from(template.root / "bo", ana))
    assert examine(ana).healthy
    assert log_hashes(ana) == template.hashes
    assert digest_of(ana) == template.digest


# -- a damaged file -----------------------------------------------------------------


def overwrite_pages(path: Path, pages: list[int], seed: int = 7) -> None:
    size = 4096
    rng_bytes = hashlib.shake_256(str(seed).encode()).digest(size * len(pages))
    with path.open("r+b") as f:
        for i, page in enumerate(pages):
            f.seek((page - 1) * size)
            f.write(rng_bytes[i * size : (i + 1) * size])


def intact_events(template: Template, damaged: bytes) -> set[bytes]:
    """Events whose wire bytes are still whole somewhere in the damaged file."""
    raws = query(template.root / "ana", "SELECT hash, raw FROM events")
    return {bytes(h) for h, raw in raws if bytes(raw) in damaged}  # type: ignore[arg-type]


def assert_one_line_pointing_to_doctor(proc: subprocess.CompletedProcess[str]) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("potluck: "), proc.stderr
    assert "potluck doctor --repair" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_a_file_whose_first_page_is_garbage_is_salvaged_whole_by_scanning_its_pages(
    ana: Path, template: Template
) -> None:
    overwrite_pages(ana / LOG_FILE, [1])
    for command in (("board",), ("log",), ("offer", "post", "Rice")):
        assert_one_line_pointing_to_doctor(potluck(ana, *command, ok=False))
    report = examine(ana)
    assert report.exit_code == 1 and "damaged-file" in report.codes("error")

    fixed = repair(ana)
    assert fixed.healthy, fixed.findings
    kept = list(ana.glob(LOG_FILE + ".damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes()[:4096] != b"SQLite format 3\x00"
    assert kept[0].stat().st_mode & 0o077 == 0  # it holds the group's events: ours alone
    assert log_hashes(ana) == template.hashes
    assert digest_of(ana) == template.digest
    potluck(ana, "board")


def test_a_file_with_garbage_pages_and_a_cut_tail_keeps_every_intact_verified_event(
    ana: Path, template: Template
) -> None:
    path = ana / LOG_FILE
    pages = path.stat().st_size // 4096
    [(leaves,)] = query(
        ana, "SELECT group_concat(pageno) FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
    )
    first, *_, last = sorted(int(p) for p in str(leaves).split(","))
    # garbage over the first page of events and pages of other tables, and the file
    # cut just before the last page of events, so some events stay whole between
    overwrite_pages(path, [3, 5, first, pages // 2, pages // 2 + 1])
    with path.open("r+b") as f:
        f.truncate((last - 1) * 4096)
    damaged = path.read_bytes()
    expected = intact_events(template, damaged)
    assert 0 < len(expected) < len(template.hashes)
    assert_one_line_pointing_to_doctor(potluck(ana, "log", ok=False))

    fixed = repair(ana)
    saved = log_hashes(ana) | {
        bytes(r[0])
        for r in query(  # type: ignore[arg-type]
            ana, "SELECT hash FROM pending"
        )
    }
    assert saved == expected  # every intact event, nothing else
    assert query(ana, "PRAGMA integrity_check") == [("ok",)]
    assert not (errors(fixed) and {f.code for f in errors(fixed)} - {"own-chain"}), fixed.findings
    [kept] = ana.glob(LOG_FILE + ".damaged-*")
    assert kept.read_bytes() == damaged  # byte for byte, as it was found
    # a neighbour's sync brings back the rest
    asyncio.run(receive_from(template.root / "bo", ana))
    assert log_hashes(ana) == template.hashes
    assert examine(ana).healthy
    assert digest_of(ana) == template.digest


def test_examine_of_a_directory_without_a_log_says_to_run_init(tmp_path: Path) -> None:
    report = examine(tmp_path)
    assert report.exit_code == 1 and report.codes("error") >= {"no-log"}


def test_doctor_command_prints_plain_findings_and_exits_1_then_0(
    ana: Path, template: Template
) -> None:
    edit(ana, "UPDATE board_entries SET title = 'Free caviar' WHERE title = 'Soup 1'")
    proc = potluck(ana, "doctor", ok=False)
    assert proc.returncode == 1 and "PROBLEM" in proc.stdout and "--repair" in proc.stdout
    report = json.loads(potluck(ana, "doctor", "--repair", "--json").stdout)
    assert report["healthy"] and report["repairs"]
    assert any(f["code"] == "projections" for f in report["found"])
    potluck(ana, "doctor")
    assert digest_of(ana) == template.digest
