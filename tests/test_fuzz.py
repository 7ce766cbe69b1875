"""Hostile input, the short run: the decoder, the validation rules and the sync protocol
state machine fuzzed with hypothesis (a few hundred examples each, a deadline per
example), plus deterministic garbage in every reachable protocol state and the largest
frames for memory.

The targets and their invariants live in bench/fuzz.py, which runs the same targets with
atheris for 100,000 inputs each (figures in docs/reliability.md). Here every example
must finish within its deadline, raise nothing but what the contract allows, and the
protocol core must never raise at all (``receive_data``: "never raises for the peer's
faults").
"""

from __future__ import annotations

import asyncio
import copy
import gc
import importlib.util
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from eventlog import events
from eventlog.body import TYPES
from eventlog.clock import pack as hlc_pack
from eventlog.errors import InvalidEvent, MalformedEvent
from eventlog.events import Envelope
from eventlog.identity import Group, membership_proof
from eventlog.store import Store
from projections.runner import Runner
from sync.errors import ProtocolError
from sync.protocol import MAX_BATCH_BYTES, MAX_FRAME_BYTES, State


def _load_harness() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("potluck_bench_fuzz", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


fuzz = _load_harness()

DEADLINE = timedelta(seconds=2)  # per example, generous for a loaded CI machine
FUZZ = settings(
    max_examples=300,
    deadline=DEADLINE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MEMORY_BOUND = 16 << 20  # bytes one frame may make the core allocate (frames are <= 1.1 MiB)


# -- the event decoder and the pure rules ------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_of_random_bytes_raises_only_invalid_event(data: bytes) -> None:
    fuzz.check_decode(data)


@settings(FUZZ, max_examples=400)
@given(fuzz.mutated_events())
def test_decode_of_mutated_valid_events_raises_only_invalid_event(data: bytes) -> None:
    """Bit flips, truncations, splices, crossings and repeats of real events."""
    fuzz.check_decode(data)


@FUZZ
@given(fuzz.envelope_maps())
def test_decode_of_envelope_shaped_maps_raises_only_invalid_event(data: bytes) -> None:
    """Maps with the envelope's fields, each valid, odd or missing, reach the later
    checks (deps, hlc, type, canonical order) instead of failing at msgpack."""
    fuzz.check_decode(data)


def test_the_seed_events_decode_and_verify_so_the_mutations_start_from_valid_events() -> None:
    for env in fuzz.seed_events():
        decoded = events.decode(env.raw)
        events.verify_signature(decoded)
        assert decoded == env and decoded.hash == env.hash


def test_decode_refuses_an_oversized_event_before_parsing_it() -> None:
    began = time.perf_counter()
    with pytest.raises(InvalidEvent, match="limit"):
        events.decode(b"\x80" * (events.MAX_EVENT_BYTES + 1))
    assert time.perf_counter() - began < 0.1


# -- body validation ---------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(fuzz.body_inputs())
def test_body_parse_gives_none_invalid_body_or_a_value_that_survives_the_wire(
    pair: tuple[str, object],
) -> None:
    """Known types with near-valid and hostile fields, unknown types, non-maps."""
    fuzz.check_body(*pair)


@FUZZ
@given(st.binary(max_size=512))
def test_body_parse_of_bodies_built_from_random_bytes_never_crashes(data: bytes) -> None:
    fuzz.check_body_bytes(data)


# -- the validation rules of the store ---------------------------------------------------

SECRET = bytes(range(1, 33))
NOW_MS = 1_760_000_000_000
MEMBERS = (SigningKey(b"m" * 32), SigningKey(b"n" * 32))
OUTSIDER = SigningKey(b"o" * 32)
DAY_MS = 24 * 3600 * 1000

_hlcs = st.one_of(
    st.integers(-365 * DAY_MS, 2 * DAY_MS).map(lambda d: hlc_pack(NOW_MS + d, 0)),
    st.integers(1, (1 << 63) - 1),
    st.sampled_from(
        [1, (1 << 63) - 1, hlc_pack(NOW_MS + DAY_MS, 0), hlc_pack(NOW_MS + DAY_MS + 1, 0)]
    ),
)
_event_specs = st.lists(
    st.tuples(
        st.integers(0, 2),  # author: member, member, outsider
        # seq: small, or large; >= 2^63 is a known bug (test_store_refuses_a_seq_beyond_...)
        st.one_of(st.integers(1, 6), st.integers(7, (1 << 63) - 1)),
        st.integers(0, 3),  # prev: real, other event's, random, none
        st.lists(st.integers(0, 40), max_size=3),  # deps: indexes of earlier events, 40=random
        _hlcs,
        fuzz.body_inputs(),
        st.integers(0, 5).map(bool),  # this group (5 in 6), or another
    ),
    max_size=14,
)


Spec = tuple[int, int, int, list[int], int, tuple[str, object], bool]


def _hostile_events(group: Group, specs: Sequence[Spec]) -> list[Envelope]:
    """Signed events built from ``specs``: valid chains, gaps, forks, bad prevs, missing
    deps, hlcs from the past to 2^64, hostile bodies, outsiders, other groups."""
    keys = (*MEMBERS, OUTSIDER)
    made: list[Envelope] = []
    heads: dict[bytes, Envelope] = {}
    for key in MEMBERS:  # both members joined validly first
        joined = events.create(
            key,
            group=group.id,
            seq=1,
            prev=None,
            deps=[],
            hlc=hlc_pack(NOW_MS - DAY_MS, 0),
            type="member.joined",
            body={"name": "M", "proof": membership_proof(group, bytes(key.verify_key))},
        )
        made.append(joined)
        heads[joined.author] = joined
    for who, seq, prev_kind, dep_picks, hlc, (type_, body), same_group in specs:
        key = keys[who]
        author = bytes(key.verify_key)
        head = heads.get(author)
        prev: bytes | None
        if seq == 1 or (head is None and prev_kind == 0):
            seq, prev = 1, None
        elif prev_kind == 0 and head is not None:
            seq, prev = head.seq + 1, head.hash
        elif prev_kind == 1 and made:
            prev = made[seq % len(made)].hash
        else:
            prev = bytes([seq % 256]) * 32
        deps = sorted({made[i].hash if i < len(made) else bytes([i]) * 32 for i in dep_picks})
        body_map = body if isinstance(body, dict) else {"value": body}
        try:
            env = events.create(
                key,
                group=group.id if same_group else bytes(32),
                seq=seq,
                prev=prev,
                deps=deps,
                hlc=hlc,
                type=type_,
                body=body_map,
            )
        except (InvalidEvent, TypeError, ValueError, OverflowError):
            continue  # the body cannot be encoded (e.g. NaN keys): no peer can send it
        made.append(env)
        if prev_kind == 0:
            heads[author] = env
    return made


async def _receive_all(batches: Sequence[Sequence[Envelope]], group: Group) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "log.db", group, now_ms=lambda: NOW_MS)
        runner = Runner()
        if await store.write(runner.setup):
            await store.write(runner.rebuild)
        runner.attach(store)
        try:
            for batch in batches:
                result = await store.receive(batch)
                for _env, exc in result.rejected:
                    assert isinstance(exc, InvalidEvent)
            await store.receive([])
            await _assert_log_is_valid(store, group)
            incremental = await store.read(runner.digest)
            await store.write(runner.rebuild)
            assert await store.read(runner.digest) == incremental
        finally:
            await store.close()


async def _assert_log_is_valid(store: Store, group: Group) -> None:
    """Whatever arrived, the log holds only valid chains of members of this group."""
    by_author: dict[bytes, list[Envelope]] = {}
    hlc_of: dict[bytes, int] = {}
    async for env in store.iter_events():
        by_author.setdefault(env.author, []).append(env)
        hlc_of[env.hash] = env.hlc
    assert bytes(OUTSIDER.verify_key) not in by_author
    for chain in by_author.values():
        chain.sort(key=lambda e: e.seq)
        assert chain[0].seq == 1 and chain[0].type == "member.joined"
        events.verify_signature(chain[0])
        events.verify_chain(chain[1:], chain[0])
        for env in chain:
            events.check_group(env, group.id)
            assert (env.hlc >> 16) <= NOW_MS + DAY_MS, "an event beyond the bound was applied"
            for dep in env.deps:
                assert dep in hlc_of and hlc_of[dep] < env.hlc


@settings(FUZZ, max_examples=60, deadline=timedelta(seconds=5))
@given(_event_specs, st.randoms(use_true_random=False))
def test_the_store_keeps_only_valid_chains_whatever_signed_events_arrive(
    specs: list[Spec], rng: random.Random
) -> None:
    """Signed events with every validity rule broken in turn, delivered in random
    batches and orders: receive never raises, rejects with InvalidEvent only, the log
    holds only valid chains of members, and projections equal a rebuild."""
    group = Group.from_secret(SECRET, "fuzz")
    made = _hostile_events(group, specs)
    rng.shuffle(made)
    cuts = sorted(rng.sample(range(len(made) + 1), min(3, len(made) + 1)))
    batches = [made[a:b_] for a, b_ in zip([0, *cuts], [*cuts, len(made)], strict=True)]
    asyncio.run(_receive_all(batches, group))


@pytest.mark.parametrize("field", ["seq", "hlc"])
def test_a_seq_or_hlc_beyond_what_sqlite_can_hold_is_malformed(field: str) -> None:
    """SQLite integers are signed 64-bit: 2^63 must be refused by the decoder (and by
    ``create``), never reach a query and raise OverflowError out of Store.receive."""
    group = Group.from_secret(SECRET, "fuzz")
    key = MEMBERS[0]
    fields: dict[str, object] = {"seq": 2, "hlc": hlc_pack(NOW_MS, 0)}
    fine = events.create(
        key,
        group=group.id,
        prev=bytes(32),
        deps=[],
        type="offer.posted",
        body={"title": "x"},
        **fields,
    )  # type: ignore[arg-type]
    wire = msgpack.unpackb(fine.raw, raw=False)
    wire[field] = 1 << 63
    with pytest.raises(MalformedEvent, match=f"^{field}:"):
        events.decode(msgpack.packb(wire, use_bin_type=True))
    fields[field] = 1 << 63
    with pytest.raises(MalformedEvent, match=f"^{field}:"):
        events.create(
            key,
            group=group.id,
            prev=bytes(32),
            deps=[],
            type="offer.posted",
            body={"title": "x"},
            **fields,
        )  # type: ignore[arg-type]


# -- the sync protocol state machine -----------------------------------------------------

EXPECTED_SCENARIOS = {
    "responder-hello",
    "responder-await_message_1",
    "responder-await_message_3",
    "responder-open",
    "responder-open_synced",
    "responder-peer_done",
    "responder-closed",
    "responder-failed",
    "initiator-hello",
    "initiator-await_message_2",
    "initiator-open",
    "initiator-open_synced",
    "initiator-local_done",
    "initiator-closed",
}
SCENARIOS = [s.name for s in fuzz.scenarios()]


def test_the_fuzzed_cores_cover_every_reachable_state_of_both_roles() -> None:
    assert set(SCENARIOS) == EXPECTED_SCENARIOS
    states = {s.target.state for s in fuzz.scenarios()}
    assert states == set(State), "a state of the protocol is never fuzzed"


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=SCENARIOS)
def test_the_honest_script_from_each_state_still_ends_closed(index: int) -> None:
    """The harness is sound: replaying the honest peer's frames completes the session."""
    sc = fuzz.scenarios()[index]
    fuzz.run_protocol(index, [(3, b"\x00")] * len(sc.script))
    copy_ = fuzz.scenarios()[index].target
    assert copy_.state is sc.target.state  # the snapshot itself is never consumed


def _garbage(side_has_session: bool) -> list[tuple[str, fuzz.Frame, set[str]]]:
    """(name, frame, error codes that may end the connection) for frames no honest peer
    sends. Before the handshake the core refuses them as frames; after it, a raw frame
    fails the AEAD and a sealed one reaches the message checks."""
    raw_codes = (
        {"decrypt-failed"}
        if side_has_session
        else {
            "malformed-frame",
            "unknown-message",
            "unexpected-message",
            "version-mismatch",
            "handshake-failed",
            "frame-too-large",
        }
    )
    sealed = {"malformed-frame", "unknown-message", "unexpected-message"}
    if not side_has_session:
        sealed |= raw_codes
    return [
        ("empty frame", (0, b""), raw_codes),
        ("one zero byte", (0, b"\x00"), raw_codes),
        ("never-used msgpack byte", (0, b"\xc1"), raw_codes),
        ("random bytes", (0, bytes(range(256)) * 2), raw_codes),
        ("oversized frame", (0, b"\x00" * (MAX_FRAME_BYTES + 1)), {"frame-too-large"}),
        ("sealed nothing", (1, b""), sealed),
        ("sealed list", (1, b"\x92\x01\x02"), sealed),
        ("sealed map without t", (1, b"\x81\xa1x\x01"), sealed),
        ("sealed t not a string", (1, b"\x81\xa1t\x05"), sealed),
        ("sealed unknown type", (1, b"\x81\xa1t\xa4nope"), sealed),
        ("sealed map with int keys", (1, b"\x81\x01\x01"), sealed),
        ("sealed deep nesting", (1, b"\x91" * 5000 + b"\x00"), sealed),
        ("sealed huge declared array", (1, b"\xdd\xff\xff\xff\xff"), sealed),
    ]


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=SCENARIOS)
def test_garbage_in_every_state_fails_the_connection_without_raising(index: int) -> None:
    sc = fuzz.scenarios()[index]
    for name, frame, codes in _garbage(sc.target.peer_key is not None):
        began = time.perf_counter()
        side = copy.deepcopy(sc.target)
        before = side.error
        side.receive_data(frame[1] if frame[0] == 0 else fuzz.seal(side, frame[1]))
        fuzz.check_state(side)
        assert time.perf_counter() - began < fuzz.TIME_BOUND_S, name
        if sc.target.state is State.FAILED:
            assert side.error is before, f"{name}: input after FAILED was not discarded"
            continue
        assert side.state is State.FAILED, f"{name}: accepted in {sc.name}"
        assert isinstance(side.error, ProtocolError)
        assert side.error.code in codes, f"{name} in {sc.name}: {side.error}"
        # the rest of the stream is discarded, and the end of it is quiet
        side.receive_data(frame[1])
        side.receive_eof()
        fuzz.check_state(side)


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=SCENARIOS)
def test_every_real_frame_replayed_or_mutated_fails_the_connection(index: int) -> None:
    """Replays, and each real frame of the honest script with one byte changed."""
    sc = fuzz.scenarios()[index]
    for i in range(len(sc.script)):
        honest = [(3, b"\x00")] * i
        fuzz.run_protocol(index, [*honest, (3, b"\x02"), (3, b"\x00")])  # replayed
        for pos in (0, len(sc.script[i]) // 2, len(sc.script[i]) - 1):
            fuzz.run_protocol(
                index, [*honest, (3, bytes([1]) + pos.to_bytes(2, "big") + b"\x00\xee")]
            )


@settings(FUZZ, max_examples=400)
@given(fuzz.protocol_inputs)
def test_receive_data_never_raises_in_any_state_whatever_the_frames(
    data: tuple[int, list[fuzz.Frame]],
) -> None:
    """Raw garbage, sealed messages with odd fields and mutated events, mutated
    templates of every message, and the honest script replayed, mutated or cut."""
    longest = fuzz.run_protocol(*data)
    assert longest < fuzz.TIME_BOUND_S


def _sealed_events(raws: list[bytes]) -> bytes:
    author = bytes(fuzz.ALICE.verify_key)
    return fuzz._pack({"t": "events", "author": author, "events": raws})


def _peak_of(index: int, frames: list[fuzz.Frame]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fuzz.run_protocol(index, frames)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_largest_frames_keep_memory_bounded() -> None:
    """A frame at the size limit, a sealed plaintext at the limit, and a batch of
    MAX_BATCH_BYTES of events that fail to decode: the core's peak stays a small
    multiple of the frame, and nothing is kept once the connection failed."""
    index = SCENARIOS.index("responder-open_synced")
    size = MAX_FRAME_BYTES - 16 - 64
    bad_event = b"\x80" * 1000
    cases = {
        "raw frame at the limit": [(0, b"\x00" * MAX_FRAME_BYTES)],
        "sealed garbage at the limit": [(1, b"\xc1" * size)],
        "events of MAX_BATCH_BYTES": [(1, _sealed_events([bad_event] * (MAX_BATCH_BYTES // 1003)))],
        "have of 8192 entries": [
            (
                1,
                fuzz._pack(
                    {
                        "t": "have",
                        "end": True,
                        "vector": [
                            [bytes([i % 256, i // 256]) * 16, 1, bytes(32)] for i in range(8192)
                        ],
                    }
                ),
            )
        ],
    }
    for name, frames in cases.items():
        peak = _peak_of(index, frames)
        assert peak < MEMORY_BOUND, f"{name}: peak {peak / 2**20:.1f} MiB"


def test_repeated_hostile_sessions_do_not_leak() -> None:
    """500 sessions fed garbage: memory after them equals memory before (± 1 MiB)."""
    rounds = [(i % len(SCENARIOS), [(i % 4, bytes([i % 256]) * (i % 97))] * 3) for i in range(500)]
    for scenario, frames in rounds[:50]:  # warm caches
        fuzz.run_protocol(scenario, frames)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for scenario, frames in rounds:
            fuzz.run_protocol(scenario, frames)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 1 << 20, f"grew by {(after - before) / 1024:.0f} KiB"


def test_every_known_body_type_is_fuzzed() -> None:
    assert set(TYPES) <= set(fuzz.TYPE_NAMES)
