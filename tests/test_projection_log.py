"""``ProjectionLog`` (projections/log.py) is what projections need of the log, and the
store is one: checked by mypy (the assignment below) and on a real SQLite file, through
the protocol's methods only."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from conftest import make_key

from eventlog.events import Envelope
from eventlog.identity import Group
from eventlog.store import Store
from projections import views
from projections.log import ProjectionLog
from projections.runner import Runner

OFFER = ("offer.posted", {"title": "Bread"})


class Boom(Exception):
    """A failure inside a write transaction."""


@pytest.fixture
async def store(tmp_path: Path, group: Group) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "log.db", group)
    try:
        yield opened
    finally:
        await opened.close()


async def append_joined(store: Store, name: str = "Ada") -> list[Envelope]:
    key = make_key(1)
    body = store.first_event_body(name, bytes(key.verify_key))
    return await store.append(key, [("member.joined", body), OFFER])


async def test_a_hook_sees_the_appended_events_inside_their_transaction(store: Store) -> None:
    log: ProjectionLog = store  # mypy: the store satisfies the protocol
    seen: list[tuple[bool, int, list[bytes]]] = []
    committed: list[bool] = []
    changes: list[int] = []

    def hook(db: sqlite3.Connection, added: Sequence[Envelope]) -> None:
        hashes = [env.hash for env in added]
        marks = ",".join("?" * len(hashes))
        stored = db.execute(f"SELECT count(*) FROM events WHERE hash IN ({marks})", hashes)
        seen.append((db.in_transaction, stored.fetchone()[0], hashes))

    log.add_hook(hook, before_commit=lambda db: committed.append(db.in_transaction))
    log.on_change(lambda: changes.append(len(seen)))
    appended = await append_joined(store)

    assert seen == [(True, 2, [env.hash for env in appended])]
    assert committed == [True]  # before the COMMIT, in the same transaction
    assert changes == [1]  # after it


async def test_a_write_that_fails_is_rolled_back_and_the_hooks_told(store: Store) -> None:
    log: ProjectionLog = store
    rolled_back: list[bool] = []
    log.add_hook(lambda db, added: None, on_rollback=lambda: rolled_back.append(True))
    await log.write(lambda db: db.execute("CREATE TABLE notes (text TEXT)"))

    def fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO notes VALUES ('kept?')")
        raise Boom

    with pytest.raises(Boom):
        await log.write(fail)

    assert rolled_back == [True]
    assert await log.read(lambda db: db.execute("SELECT count(*) FROM notes").fetchone()[0]) == 0
    await log.write(lambda db: db.execute("INSERT INTO notes VALUES ('kept')"))
    assert await log.read(lambda db: db.execute("SELECT text FROM notes").fetchall()) == [("kept",)]


async def test_a_runner_attached_through_the_protocol_folds_each_append(store: Store) -> None:
    log: ProjectionLog = store
    runner = Runner()
    await log.write(runner.setup)
    runner.attach(log)
    log.fold_behind(None)  # every receive folds in its own transaction
    await append_joined(store, "Bea")

    assert [m["name"] for m in await log.read(views.members)] == ["Bea"]
    assert await log.read(runner.behind) == 0
