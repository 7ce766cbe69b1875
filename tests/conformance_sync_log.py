"""What any implementation of ``sync.log.SyncLog`` must do: a base class of tests.

Why a suite and not only the protocol: ``SyncLog`` names the methods sync/ calls, but
sync relies on what they do (arrival order, idempotent receive, held events released,
evidence recorded once, change notices). An implementation subclasses
``SyncLogConformance`` in a test module and gives the ``log_factory`` fixture: a
callable that opens a fresh, empty log of a group as an async context manager. The
class is not collected itself (its name does not start with ``Test``). As in
pyeventsourcing, whose recorders all run one shared suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
from conftest import History, make_key
from nacl.signing import SigningKey

from eventlog import events
from eventlog.events import Envelope
from eventlog.identity import Group
from sync.log import SyncLog

LogFactory = Callable[[Group], AbstractAsyncContextManager[SyncLog]]
ALL = 1_000_000  # a limit no test reaches


def twin_of(key: SigningKey, env: Envelope) -> Envelope:
    """Another version of ``env`` (same author, seq and prev), signed by its author."""
    return events.create(
        key,
        group=env.group,
        seq=env.seq,
        prev=env.prev,
        deps=list(env.deps),
        hlc=env.hlc,
        type="offer.posted",
        body={"title": "the other version"},
    )


def three_authors(group: Group) -> History:
    """A, B and C writing in turns, B's events naming A's head: 12 events in all."""
    history = History(group, [make_key(1), make_key(2), make_key(3)])
    a, b, c = history.keys
    for _ in range(4):
        history.write(a)
        history.write(b, deps=[history.heads[bytes(a.verify_key)]])
        history.write(c)
    return history


def author_of(key: SigningKey) -> bytes:
    return bytes(key.verify_key)


class SyncLogConformance:
    """Tests every ``SyncLog`` must pass; subclass and provide ``log_factory``."""

    @pytest.fixture
    async def log(self, log_factory: LogFactory, group: Group) -> AsyncIterator[SyncLog]:
        async with log_factory(group) as log:
            yield log

    async def receive_one_by_one(self, log: SyncLog, envs: list[Envelope]) -> None:
        """Receive ``envs`` one event per call, so they arrive in this order."""
        for env in envs:
            result = await log.receive([env])
            assert result.stored == [env] and result.rejected == []

    # -- the log's group and vector ------------------------------------------------

    async def test_the_log_belongs_to_the_group_it_was_opened_for(
        self, log: SyncLog, group: Group
    ) -> None:
        assert log.group == group

    async def test_an_empty_log_has_an_empty_vector_and_no_arrivals(self, log: SyncLog) -> None:
        assert await log.vector() == {}
        assert await log.heads() == {}
        assert await log.last_id() == 0
        assert await log.read_after(0, ALL) == []
        assert await log.pending_count() == 0
        assert await log.fork_points() == {}

    async def test_the_vector_names_each_authors_last_event(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        result = await log.receive(history.events)
        assert len(result.stored) == len(history.events)
        heads = history.heads
        assert await log.vector() == {a: (e.seq, e.hash) for a, e in heads.items()}
        stored = await log.heads()
        assert {a: (h.seq, h.hash, h.hlc) for a, h in stored.items()} == {
            a: (e.seq, e.hash, e.hlc) for a, e in heads.items()
        }
        more = history.write(history.keys[0])
        await log.receive([more])
        assert (await log.vector())[more.author] == (more.seq, more.hash)

    # -- receive -------------------------------------------------------------------

    async def test_receive_is_idempotent_even_with_duplicates_in_one_batch(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        first = await log.receive(history.events + history.events[3:7])
        assert sorted(e.hash for e in first.stored) == sorted(e.hash for e in history.events)
        vector, last = await log.vector(), await log.last_id()
        again = await log.receive(history.events[::-1])
        assert again.stored == [] and again.rejected == [] and again.forks == []
        assert again.duplicates == len(history.events)
        assert await log.vector() == vector
        assert await log.last_id() == last
        assert len(await log.read_after(0, ALL)) == len(history.events)

    async def test_an_event_is_held_until_its_predecessor_arrives(
        self, log: SyncLog, group: Group
    ) -> None:
        history = History(group, [make_key(1)])
        one, two, three = (history.write(history.keys[0]) for _ in range(3))
        await log.receive([one])
        held = await log.receive([three])
        assert held.stored == [] and held.held == 1 and held.rejected == []
        assert await log.pending_count() == 1
        assert await log.vector() == {one.author: (1, one.hash)}
        released = await log.receive([two])
        assert {e.hash for e in released.stored} == {two.hash, three.hash}
        assert await log.pending_count() == 0
        assert await log.vector() == {one.author: (3, three.hash)}
        rows = await log.read_after(0, ALL)
        assert [seq for _, _, seq, _ in rows] == [1, 2, 3]  # stored once it could follow

    async def test_receive_rejects_an_event_of_another_group_or_with_a_bad_signature(
        self, log: SyncLog, group: Group
    ) -> None:
        other = History(Group.new("Another group"), [make_key(1)])
        stranger = other.write(other.keys[0])
        ours = History(group, [make_key(1)]).write(make_key(1))
        forged = events.decode(ours.raw.replace(ours.sig, bytes(64)))
        for bad in (stranger, forged):
            result = await log.receive([bad])
            assert result.stored == [] and len(result.rejected) == 1
        assert await log.vector() == {}
        assert await log.last_id() == 0

    # -- arrivals ------------------------------------------------------------------

    async def test_read_arrivals_gives_the_wanted_events_in_arrival_order(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        a, b, c = (author_of(key) for key in history.keys)
        # arrival order differs from both (author, seq) and hlc order: C's first
        order = sorted(history.events, key=lambda e: (e.author != c, e.hlc))
        await self.receive_one_by_one(log, order)
        wants = {a: 1, b: 3}  # all of A, B from seq 3, nothing of C
        expected = [
            (e.author, e.seq, e.raw)
            for e in order
            if e.author in wants and e.seq >= wants[e.author]
        ]
        last, rows = await log.read_arrivals(wants, 0, ALL)
        assert rows == expected
        assert last == await log.last_id()
        of_c = [(e.author, e.seq, e.raw) for e in order if e.author == c]
        cursor, page = await log.read_arrivals({c: 1}, 0, 2)
        assert cursor > 0 and 1 <= len(page) <= 2 and page == of_c[: len(page)]
        first = await log.first_arrival(wants)
        assert first is not None
        paged: list[tuple[bytes, int, bytes]] = []
        cursor = first - 1
        for _ in range(len(order) + 1):  # as sync/transport.py streams: until it stops
            before = cursor
            cursor, page = await log.read_arrivals(wants, cursor, 2)
            assert len(page) <= 2
            if cursor == before:
                break
            assert cursor > before
            paged.extend(page)
        assert paged == expected

    async def test_first_arrival_is_the_arrival_number_of_the_first_wanted_event(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        await self.receive_one_by_one(log, history.events)
        a, b, _ = (author_of(key) for key in history.keys)
        ids = {(author, seq): id_ for id_, author, seq, _ in await log.read_after(0, ALL)}
        assert await log.first_arrival({b: 2}) == ids[(b, 2)]
        assert await log.first_arrival({a: 4, b: 2}) == min(ids[(a, 4)], ids[(b, 2)])
        assert await log.first_arrival({a: 5}) is None  # beyond A's head
        assert await log.first_arrival({}) is None

    async def test_last_id_and_read_after_stream_every_event_once_in_arrival_order(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        early, late = history.events[:7], history.events[7:]
        await self.receive_one_by_one(log, early)
        last = await log.last_id()
        seen: list[tuple[int, bytes, int, bytes]] = []
        cursor = 0
        for _ in range(len(early) + 1):  # as sync/peers.py streams: until nothing is new
            rows = await log.read_after(cursor, 3)
            if not rows:
                break
            assert len(rows) <= 3 and rows[0][0] > cursor
            seen.extend(rows)
            cursor = rows[-1][0]
        assert [(author, seq, raw) for _, author, seq, raw in seen] == [
            (e.author, e.seq, e.raw) for e in early
        ]
        ids = [id_ for id_, _, _, _ in seen]
        assert ids == sorted(set(ids)) and ids[-1] == last
        await self.receive_one_by_one(log, late)
        new = await log.read_after(last, ALL)
        assert [(author, seq) for _, author, seq, _ in new] == [(e.author, e.seq) for e in late]
        assert new[0][0] > last and new[-1][0] == await log.last_id()

    async def test_read_raw_gives_one_authors_events_from_a_seq(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        await log.receive(history.events)
        a = author_of(history.keys[0])
        of_a = [e for e in history.events if e.author == a]
        assert await log.read_raw(a, 2, 2) == [of_a[1].raw, of_a[2].raw]
        assert await log.read_raw(a, 1, ALL) == [e.raw for e in of_a]
        assert await log.read_raw(a, 5, ALL) == []

    # -- fork evidence -------------------------------------------------------------

    async def test_fork_evidence_is_recorded_once(self, log: SyncLog, group: Group) -> None:
        history = three_authors(group)
        await log.receive(history.events)
        a = history.keys[0]
        kept = [e for e in history.events if e.author == author_of(a)][1]
        twin = twin_of(a, kept)
        assert await log.fork_evidence(author_of(a)) is None
        assert await log.record_evidence(kept, twin) is True
        assert await log.fork_points() == {author_of(a): 2}
        proof = await log.fork_evidence(author_of(a))
        assert proof is not None and set(proof) == {kept.raw, twin.raw}
        assert await log.record_evidence(twin, kept) is False
        assert await log.record_evidence(kept, twin, authenticated=True) is False
        assert await log.fork_points() == {author_of(a): 2}
        with pytest.raises(ValueError, match="two different versions"):
            await log.record_evidence(kept, kept)

    async def test_a_second_version_received_is_fork_evidence_and_a_lower_one_moves_the_point(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        await log.receive(history.events)
        a = history.keys[0]
        of_a = [e for e in history.events if e.author == author_of(a)]
        result = await log.receive([twin_of(a, of_a[2])])
        assert result.forks == [(author_of(a), 3)] and result.stored == []
        assert await log.fork_points() == {author_of(a): 3}
        assert await log.record_evidence(of_a[1], twin_of(a, of_a[1])) is True
        assert await log.fork_points() == {author_of(a): 2}
        assert await log.vector() == {e.author: (e.seq, e.hash) for e in history.heads.values()}

    # -- change notices ------------------------------------------------------------

    async def test_on_change_is_called_after_each_commit_that_changed_the_log(
        self, log: SyncLog, group: Group
    ) -> None:
        history = three_authors(group)
        seen: list[int] = []
        log.on_change(lambda: seen.append(len(seen)))
        await log.receive(history.events[:4])
        after_events = len(seen)
        assert after_events >= 1
        a = history.keys[0]
        await log.record_evidence(history.events[0], twin_of(a, history.events[0]))
        assert len(seen) > after_events
