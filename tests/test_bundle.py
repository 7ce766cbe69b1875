"""Offline bundles (sync/bundle.py) between real stores on disk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from helpers import make_key
from nacl.signing import SigningKey

from eventlog import events
from eventlog.errors import UsageError
from eventlog.identity import Group
from eventlog.store import Store
from sync import bundle
from sync.bundle import (
    HEADER_BYTES,
    BundleDamaged,
    BundleSealer,
    export_bundle,
    import_bundle,
    is_bundle_of,
    read_vector_file,
    write_vector_file,
)

ALICE = make_key(1)
CARLOS = make_key(2)
MALLORY = make_key(3)


@pytest.fixture
async def stores(tmp_path: Path, group: Group) -> AsyncIterator[tuple[Store, Store]]:
    """Store A with two members' events, and an empty store B of the same group."""
    a = await Store.open(tmp_path / "a.db", group)
    b = await Store.open(tmp_path / "b.db", group)
    try:
        for key, name in ((ALICE, "Alice"), (CARLOS, "Carlos")):
            await join(a, key, name)
        for n in range(30):  # interleaved, so events carry deps on the other author
            await offer(a, ALICE if n % 3 else CARLOS, f"Offer {n}")
        yield a, b
    finally:
        await a.close()
        await b.close()


async def join(store: Store, key: SigningKey, name: str) -> None:
    body = store.first_event_body(name, bytes(key.verify_key))
    await store.append(key, [("member.joined", body)])


async def offer(store: Store, key: SigningKey, title: str) -> events.Envelope:
    return (await store.append(key, [("offer.posted", {"title": title})]))[0]


async def seqs(store: Store) -> dict[bytes, int]:
    return {author: seq for author, (seq, _) in (await store.vector()).items()}


def frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every chunk in a bundle's bytes."""
    out = []
    at = HEADER_BYTES
    while at < len(data):
        length = int.from_bytes(data[at + 1 : at + 5], "big")
        end = at + 5 + 24 + length
        out.append((at, end))
        at = end
    return out


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- the round trip ---------------------------------------------------------------------


async def test_a_bundle_brings_the_other_store_to_the_same_vector(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "stick" / "pantry.potluck"
    path.parent.mkdir()
    info = await export_bundle(a, path)
    assert info.events == await a.count() == 32
    assert info.authors == 2
    assert info.bytes == path.stat().st_size
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind

    result = await import_bundle(b, path)
    assert (result.stored, result.duplicates, result.held, result.rejected) == (32, 0, 0, 0)
    assert result.events == 32 and result.chunks == 2 and not result.forks
    assert await b.vector() == await a.vector()
    assert {e.hash async for e in b.iter_events()} == {e.hash async for e in a.iter_events()}


async def test_importing_a_bundle_twice_stores_nothing_new(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    await import_bundle(b, path)
    again = await import_bundle(b, path)
    assert (again.stored, again.duplicates, again.held, again.rejected) == (0, 32, 0, 0)
    assert await b.count() == 32


async def test_a_bundle_since_a_vector_file_holds_only_what_is_newer(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    await export_bundle(a, tmp_path / "first.potluck")
    await import_bundle(b, tmp_path / "first.potluck")
    for n in range(5):
        await offer(a, ALICE, f"Later {n}")

    have = tmp_path / "have.json"
    assert await write_vector_file(b, have) == await seqs(b)
    assert read_vector_file(have) == await seqs(b)
    info = await export_bundle(a, tmp_path / "news.potluck", since=read_vector_file(have))
    assert (info.events, info.authors) == (5, 1)

    result = await import_bundle(b, tmp_path / "news.potluck")
    assert (result.stored, result.duplicates) == (5, 0)
    assert await b.vector() == await a.vector()


async def test_events_whose_past_is_missing_are_held_until_it_arrives(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    start = await seqs(a)
    for n in range(4):
        await offer(a, CARLOS, f"Later {n}")
    await export_bundle(a, tmp_path / "news.potluck", since=start)
    await export_bundle(a, tmp_path / "all.potluck")

    result = await import_bundle(b, tmp_path / "news.potluck")
    assert (result.stored, result.held) == (0, 4)
    result = await import_bundle(b, tmp_path / "all.potluck")
    assert result.stored == 36 and result.held == 0
    assert await b.vector() == await a.vector()


async def test_an_empty_store_exports_a_bundle_that_imports_nothing(
    tmp_path: Path,
    group: Group,
) -> None:
    empty = await Store.open(tmp_path / "empty.db", group)
    try:
        info = await export_bundle(empty, tmp_path / "nothing.potluck")
        assert (info.events, info.authors) == (0, 0)
        result = await import_bundle(empty, tmp_path / "nothing.potluck")
        assert (result.stored, result.events, result.chunks) == (0, 0, 0)
    finally:
        await empty.close()


async def test_chunks_stay_small_and_an_author_may_span_many(
    stores: tuple[Store, Store],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = stores
    monkeypatch.setattr(bundle, "CHUNK_BYTES", 1000)
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    data = path.read_bytes()
    chunks = frames(data)
    assert len(chunks) > 6
    assert all(end - start - 5 - 24 <= 1000 + 16 for start, end in chunks)
    result = await import_bundle(b, path)
    assert result.stored == 32 and result.chunks == len(chunks) - 1
    assert await b.vector() == await a.vector()


# -- whose bundle -----------------------------------------------------------------------


async def test_another_groups_store_refuses_the_bundle_and_stores_nothing(
    stores: tuple[Store, Store],
    tmp_path: Path,
    group: Group,
) -> None:
    a, _ = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    other_group = Group.new("Westside Kitchen")
    other = await Store.open(tmp_path / "other.db", other_group)
    try:
        with pytest.raises(UsageError) as caught:
            await import_bundle(other, path)
        assert str(caught.value) == (
            "this bundle belongs to another group, not Westside Kitchen: nothing was imported"
        )
        assert not isinstance(caught.value, BundleDamaged)
        assert await other.count() == 0 and await other.pending_count() == 0
    finally:
        await other.close()
    assert is_bundle_of(path, group)
    assert not is_bundle_of(path, other_group)


async def test_the_header_does_not_reveal_the_group(
    stores: tuple[Store, Store],
    tmp_path: Path,
    group: Group,
) -> None:
    a, _ = stores
    await export_bundle(a, tmp_path / "one.potluck")
    await export_bundle(a, tmp_path / "two.potluck")
    one = (tmp_path / "one.potluck").read_bytes()
    two = (tmp_path / "two.potluck").read_bytes()
    assert group.id not in one and group.secret not in one
    assert one[:9] == two[:9] == b"POTLUCKB\x01"
    assert one[9:HEADER_BYTES] != two[9:HEADER_BYTES]  # salted: two bundles do not link
    assert bytes(ALICE.verify_key) not in one  # authors and events are sealed too


# -- damage -----------------------------------------------------------------------------


async def test_a_flipped_byte_in_a_chunk_stops_the_import_there(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    _first, second, _end = frames(path.read_bytes())
    flip(path, (second[0] + second[1]) // 2)

    with pytest.raises(BundleDamaged) as caught:
        await import_bundle(b, path)
    message = str(caught.value)
    assert message.startswith("the bundle is damaged at chunk 2 (")
    assert "nothing after it was imported; what came before it was kept" in message
    assert caught.value.chunk == 2
    kept = caught.value.imported.stored
    assert 0 < kept < 32 and await b.count() == kept


async def test_a_flipped_byte_in_the_first_chunk_imports_nothing(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    first = frames(path.read_bytes())[0]
    for offset in (first[0], first[0] + 3, first[0] + 10, first[1] - 1):
        data = path.read_bytes()
        flip(path, offset)
        with pytest.raises(BundleDamaged, match=r"damaged at chunk 1 .*nothing was imported"):
            await import_bundle(b, path)
        path.write_bytes(data)
    assert await b.count() == 0


async def test_a_flipped_byte_in_the_header_is_refused(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    for offset in (0, 8, 9, 30):
        data = path.read_bytes()
        flip(path, offset)
        with pytest.raises(UsageError):
            await import_bundle(b, path)
        path.write_bytes(data)
    assert await b.count() == 0


async def test_a_cut_short_bundle_is_damaged_wherever_it_is_cut(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    whole = path.read_bytes()
    (_, end1), (_, end2), (_, end3) = frames(whole)
    cuts = {end1 - 7: 1, end1: 2, end1 + 3: 2, end2: 3, end3 - 1: 3}
    for cut, chunk in cuts.items():
        path.write_bytes(whole[:cut])
        with pytest.raises(BundleDamaged) as caught:
            await import_bundle(b, path)
        assert caught.value.chunk == chunk
        assert f"damaged at chunk {chunk}" in str(caught.value)
    path.write_bytes(whole[: HEADER_BYTES - 5])
    with pytest.raises(UsageError, match="ends inside its header"):
        await import_bundle(b, path)


async def test_chunks_out_of_order_or_missing_are_damage(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    whole = path.read_bytes()
    (s1, e1), (s2, e2), (s3, e3) = frames(whole)
    header, c1, c2, c3 = whole[:s1], whole[s1:e1], whole[s2:e2], whole[s3:e3]
    for variant in (header + c2 + c1 + c3, header + c1 + c3, header + c2 + c3):
        path.write_bytes(variant)
        with pytest.raises(BundleDamaged, match="out of order"):
            await import_bundle(b, path)


async def test_a_chunk_from_another_bundle_is_damage(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    await export_bundle(a, tmp_path / "one.potluck")
    await export_bundle(a, tmp_path / "two.potluck")
    one, two = (tmp_path / "one.potluck").read_bytes(), (tmp_path / "two.potluck").read_bytes()
    (s1, e1), *_ = frames(one)
    (t1, _), *_ = frames(two)
    spliced = two[:t1] + one[s1:e1] + two[e1 - s1 + t1 :]
    (tmp_path / "spliced.potluck").write_bytes(spliced)
    with pytest.raises(BundleDamaged, match="chunk 1"):
        await import_bundle(b, tmp_path / "spliced.potluck")


async def test_bytes_after_the_end_are_reported_after_importing_everything(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "pantry.potluck"
    await export_bundle(a, path)
    path.write_bytes(path.read_bytes() * 2)
    with pytest.raises(BundleDamaged, match=r"bytes after its end.*everything in it was imp"):
        await import_bundle(b, path)
    assert await b.vector() == await a.vector()


# -- what a member can put in a bundle ---------------------------------------------------


async def test_a_forged_event_in_a_sealed_chunk_is_rejected_and_the_rest_stored(
    stores: tuple[Store, Store],
    tmp_path: Path,
    group: Group,
) -> None:
    a, b = stores
    alice = bytes(ALICE.verify_key)
    carlos = bytes(CARLOS.verify_key)
    head = (await a.heads())[alice]
    # Mallory is a member (she has the secret) and signs an event as if Alice wrote it.
    made = events.create(
        MALLORY,
        group=group.id,
        seq=head.seq + 1,
        prev=head.hash,
        deps=[],
        hlc=head.hlc + 1,
        type="offer.posted",
        body={"title": "Forged"},
    )
    fields = msgpack.unpackb(made.raw, raw=False)
    fields["author"] = alice
    forged = events.pack(fields)
    assert events.decode(forged).author == alice

    sealer = BundleSealer(group.secret)
    alices = await a.read_raw(alice, 1, 1000)
    carloss = await a.read_raw(carlos, 1, 1000)
    path = tmp_path / "mallory.potluck"
    path.write_bytes(
        sealer.header
        + sealer.events_chunk(alice, [*alices, forged])
        + sealer.events_chunk(carlos, [*carloss, b"not an event"])
        + sealer.end_chunk()
    )

    result = await import_bundle(b, path)
    assert result.stored == 32 and result.rejected == 2
    codes = " ".join(result.reasons)
    assert "bad-signature" in codes and "malformed-event" in codes
    assert await b.vector() == await a.vector()
    assert await b.get(events.decode(forged).hash) is None


async def test_an_event_in_the_wrong_authors_chunk_is_rejected(
    stores: tuple[Store, Store],
    tmp_path: Path,
    group: Group,
) -> None:
    a, b = stores
    alice, carlos = bytes(ALICE.verify_key), bytes(CARLOS.verify_key)
    sealer = BundleSealer(group.secret)
    path = tmp_path / "odd.potluck"
    path.write_bytes(
        sealer.header + sealer.events_chunk(carlos, await a.read_raw(alice, 1)) + sealer.end_chunk()
    )
    result = await import_bundle(b, path)
    assert result.stored == 0 and result.rejected == len(await a.read_raw(alice, 1))


async def test_a_sealed_chunk_that_is_not_an_events_chunk_is_damage(
    stores: tuple[Store, Store],
    tmp_path: Path,
    group: Group,
) -> None:
    _, b = stores
    for plaintext in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"author": 1})):
        sealer = BundleSealer(group.secret)
        path = tmp_path / "odd.potluck"
        path.write_bytes(sealer.header + sealer.seal(plaintext, final=False) + sealer.end_chunk())
        with pytest.raises(BundleDamaged, match=r"chunk 1 \(its contents are not understood\)"):
            await import_bundle(b, path)


async def test_an_end_marker_with_the_wrong_count_is_damage(
    stores: tuple[Store, Store],
    tmp_path: Path,
    group: Group,
) -> None:
    a, b = stores
    alice = bytes(ALICE.verify_key)
    sealer = BundleSealer(group.secret)
    chunk = sealer.events_chunk(alice, await a.read_raw(alice, 1))
    sealer.count += 1
    path = tmp_path / "odd.potluck"
    path.write_bytes(sealer.header + chunk + sealer.end_chunk())
    with pytest.raises(BundleDamaged, match="end marker"):
        await import_bundle(b, path)


# -- not a bundle -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"is not a Potluck bundle \(it is empty\)"),
        (b"hello, this is a shopping list", "is not a Potluck bundle"),
        (b"POTLUCKB\x03" + bytes(40), r"made by a newer Potluck \(bundle format 3\)"),
        (b"POTLUCKB", "ends inside its header"),
    ],
)
async def test_a_file_that_is_not_a_bundle_is_refused(
    stores: tuple[Store, Store],
    tmp_path: Path,
    content: bytes,
    message: str,
) -> None:
    _, b = stores
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        await import_bundle(b, path)


async def test_a_missing_bundle_or_folder_is_named(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    with pytest.raises(UsageError, match="no file"):
        await import_bundle(b, tmp_path / "nope.potluck")
    with pytest.raises(UsageError, match="is a folder"):
        await import_bundle(b, tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        await export_bundle(a, tmp_path / "no-such-folder" / "x.potluck")
    with pytest.raises(UsageError, match="is a folder"):
        await export_bundle(a, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.db",
        "a.db-shm",
        "a.db-wal",
        "b.db",
        "b.db-shm",
        "b.db-wal",
    ]


# -- vector files -----------------------------------------------------------------------


async def test_a_vector_file_is_json_of_author_hex_to_seq(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, _ = stores
    path = tmp_path / "have.json"
    await write_vector_file(a, path)
    assert json.loads(path.read_text()) == {
        author.hex(): seq for author, seq in (await seqs(a)).items()
    }


@pytest.mark.parametrize(
    "text, problem",
    [
        ("not json", "is not a vector file"),
        ("[1, 2]", "is not a vector file"),
        ('{"abc": 1}', "'abc' is not an author key"),
        ('{"' + "zz" * 32 + '": 1}', "is not an author key"),
        ('{"' + "ab" * 32 + '": -1}', "is not a whole number"),
        ('{"' + "ab" * 32 + '": true}', "is not a whole number"),
        ('{"' + "ab" * 32 + '": 1.5}', "is not a whole number"),
    ],
)
def test_a_bad_vector_file_is_refused_naming_the_problem(
    tmp_path: Path,
    text: str,
    problem: str,
) -> None:
    path = tmp_path / "have.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=problem):
        read_vector_file(path)


def test_a_missing_vector_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no file"):
        read_vector_file(tmp_path / "have.json")


# -- fork evidence (format 2) -------------------------------------------------------------


async def other_version(store: Store, key: SigningKey, seq: int) -> events.Envelope:
    """A second, different event at ``key``'s ``seq`` in ``store``: an equivocation."""
    author = bytes(key.verify_key)
    [kept] = [e async for e in store.iter_events(author=author) if e.seq == seq]
    return events.create(
        key,
        group=store.group.id,
        seq=seq,
        prev=kept.prev,
        deps=kept.deps,
        hlc=kept.hlc,
        type="offer.posted",
        body={"title": "The same tins, promised twice"},
    )


async def forked(store: Store) -> tuple[events.Envelope, events.Envelope]:
    """Make Alice equivocate at her seq 5 in ``store``; both versions."""
    twin = await other_version(store, ALICE, 5)
    result = await store.receive([twin])
    assert result.forks == [(bytes(ALICE.verify_key), 5)]
    first, second = await store.fork_evidence(bytes(ALICE.verify_key)) or (b"", b"")
    return events.decode(first), events.decode(second)


async def test_a_bundle_carries_fork_evidence_to_a_store_that_holds_one_version(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    await forked(a)
    path = tmp_path / "forked.potluck"
    info = await export_bundle(a, path)
    assert info.evidence == 1 and path.read_bytes()[:9] == b"POTLUCKB\x02"

    result = await import_bundle(b, path)
    alice = bytes(ALICE.verify_key)
    assert (result.stored, result.rejected, result.evidence) == (32, 0, 1)
    assert result.forks == [(alice, 5)]
    assert await b.fork_points() == await a.fork_points() == {alice: 5}

    again = await import_bundle(b, path)  # nothing new: no evidence counted, no fork
    assert (again.stored, again.duplicates, again.evidence, again.forks) == (0, 32, 0, [])


async def test_a_bundle_without_evidence_stays_in_the_first_format(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, _ = stores
    info = await export_bundle(a, tmp_path / "plain.potluck")
    assert info.evidence == 0
    assert (tmp_path / "plain.potluck").read_bytes()[:9] == b"POTLUCKB\x01"


async def write_with_evidence(a: Store, path: Path, pairs: list[list[object]]) -> None:
    """A format-2 bundle of all of ``a``'s events, then one evidence chunk per pair."""
    sealer = BundleSealer(a.group.secret, version=2)
    data = sealer.header
    for author in await seqs(a):
        raws = [e.raw async for e in a.iter_events(author=author)]
        data += sealer.events_chunk(author, raws)
    for pair in pairs:
        data += sealer.seal(msgpack.packb({"evidence": pair}, use_bin_type=True), final=False)
    path.write_bytes(data + sealer.end_chunk())


async def test_evidence_that_proves_nothing_is_refused_and_the_rest_imported(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    alice = bytes(ALICE.verify_key)
    [kept] = [e async for e in a.iter_events(author=alice) if e.seq == 5]
    twin = await other_version(a, ALICE, 5)
    sig_at = twin.raw.index(twin.sig)
    bad_sig = twin.raw[:sig_at] + bytes(64) + twin.raw[sig_at + 64 :]
    path = tmp_path / "odd.potluck"
    await write_with_evidence(a, path, [[kept.raw, kept.raw], [kept.raw, bad_sig]])
    result = await import_bundle(b, path)
    assert (result.stored, result.evidence, result.rejected) == (32, 0, 2)
    assert result.reasons[0].startswith("evidence 1: bad-evidence: ")
    assert result.reasons[1].startswith("evidence 2: bad-signature: ")
    assert await b.fork_points() == {}


async def test_an_evidence_chunk_that_is_not_two_events_is_damage(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    path = tmp_path / "garbled.potluck"
    await write_with_evidence(a, path, [["not bytes", b"x"]])
    with pytest.raises(BundleDamaged, match="its contents are not understood") as caught:
        await import_bundle(b, path)
    assert caught.value.imported.stored == 32  # the events before it stay


async def test_a_first_format_bundle_does_not_carry_evidence(
    stores: tuple[Store, Store],
    tmp_path: Path,
) -> None:
    a, b = stores
    first, second = await forked(a)
    sealer = BundleSealer(a.group.secret)  # format 1
    with pytest.raises(ValueError, match="format 2"):
        sealer.evidence_chunk(first.raw, second.raw)
    data = sealer.header + sealer.seal(
        msgpack.packb({"evidence": [first.raw, second.raw]}, use_bin_type=True), final=False
    )
    path = tmp_path / "v1.potluck"
    path.write_bytes(data + sealer.end_chunk())
    with pytest.raises(BundleDamaged, match="its contents are not understood"):
        await import_bundle(b, path)
    assert await b.fork_points() == {}
