"""mDNS discovery without a real network (sync/discovery.py, docs/discovery.md).

The blinded hint is checked as pure functions: it changes every hour, differs between
groups and between two adverts of one group, and only the secret recognises it. The
advert is checked as the exact records python-zeroconf would send. A pair of members and
a stranger then run on the loopback interface only (skipped where multicast does not loop
back); real multicast between hosts is tests/test_discovery_netns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from helpers import until

from eventlog.identity import Group
from sync import discovery as d
from sync.discovery import (
    HINT_HEX_LENGTH,
    SERVICE_TYPE,
    WINDOW_SECONDS,
    Discovery,
    hint,
    interfaces_for,
    matches,
    pick_address,
    txt_record,
    window_of,
)

NOW = 1_790_000_000.0  # some unix time, in the middle of no window in particular
SALT = bytes(range(8))
AT = {"port": 7717, "addresses": ["192.168.1.20"]}
"""Where the adverts of these tests say their node listens: what a hint is bound to."""


def group(name: str = "Westside pantry") -> Group:
    return Group.new(name)


# -- the hint --------------------------------------------------------------------------


def test_hint_changes_from_one_window_to_the_next() -> None:
    g = group()
    w = window_of(NOW)
    hints = {hint(g.secret, w + i, SALT, **AT) for i in range(24)}
    assert len(hints) == 24


def test_hint_windows_are_hours_of_unix_time() -> None:
    assert window_of(0) == 0
    assert window_of(WINDOW_SECONDS - 0.001) == 0
    assert window_of(WINDOW_SECONDS) == 1
    assert window_of(NOW) == int(NOW // 3600)


def test_two_groups_hints_differ_in_the_same_window() -> None:
    w = window_of(NOW)
    assert hint(group("A").secret, w, SALT, **AT) != hint(group("A").secret, w, SALT, **AT)


def test_two_adverts_of_one_group_carry_unrelated_hints() -> None:
    # A fresh salt per advert: an observer cannot even group the adverts by equal hints.
    g = group()
    w = window_of(NOW)
    first, second = hint(g.secret, w, **AT), hint(g.secret, w, **AT)
    assert first != second
    assert first[16:] != second[16:]  # the tags differ too, not only the salts
    assert matches(g.secret, first, NOW, **AT) and matches(g.secret, second, NOW, **AT)


def test_hint_is_hex_of_salt_and_a_16_byte_tag() -> None:
    h = hint(group().secret, window_of(NOW), SALT, **AT)
    assert len(h) == HINT_HEX_LENGTH == 48
    assert bytes.fromhex(h)[:8] == SALT


def test_hint_is_keyed_blake2b_of_the_context_window_and_salt() -> None:
    # The construction docs/discovery.md specifies, so a second implementation agrees.
    import hashlib

    g = group()
    w = window_of(NOW)
    tag = hashlib.blake2b(
        b"potluck mdns hint v2"
        + w.to_bytes(8, "big")
        + SALT
        + (7717).to_bytes(2, "big")
        + bytes([1, 192, 168, 1, 20]),
        key=g.secret,
    ).digest()[:16]
    assert hint(g.secret, w, SALT, **AT) == (SALT + tag).hex()


def test_a_member_recognises_the_hint() -> None:
    g = group()
    assert matches(g.secret, hint(g.secret, window_of(NOW), **AT), NOW, **AT)


def test_a_non_member_does_not_recognise_the_hint() -> None:
    g, stranger = group("Westside"), group("Westside")  # same name, other secret
    for offset in (-1, 0, 1):
        h = hint(g.secret, window_of(NOW) + offset, **AT)
        assert not matches(stranger.secret, h, NOW, **AT)


def test_matches_tolerates_one_window_of_clock_skew_and_no_more() -> None:
    g = group()
    w = window_of(NOW)
    assert matches(g.secret, hint(g.secret, w - 1, **AT), NOW, **AT)
    assert matches(g.secret, hint(g.secret, w + 1, **AT), NOW, **AT)
    assert not matches(g.secret, hint(g.secret, w - 2, **AT), NOW, **AT)
    assert not matches(g.secret, hint(g.secret, w + 2, **AT), NOW, **AT)


def test_an_advert_made_a_minute_before_the_hour_is_recognised_after_it() -> None:
    g = group()
    boundary = (window_of(NOW) + 1) * WINDOW_SECONDS
    made = hint(g.secret, window_of(boundary - 60), **AT)
    assert matches(g.secret, made, boundary + 60, **AT)
    assert matches(g.secret, made, boundary + WINDOW_SECONDS - 1, **AT)
    assert not matches(g.secret, made, boundary + WINDOW_SECONDS + 1, **AT)


@pytest.mark.parametrize("bad", [None, "", "zz" * 24, "ab" * 23, "ab" * 25, b"ab" * 24, 7])
def test_matches_refuses_what_is_not_a_hint(bad: object) -> None:
    assert not matches(group().secret, bad, NOW, **AT)


def test_a_tampered_hint_is_refused() -> None:
    g = group()
    h = bytearray(bytes.fromhex(hint(g.secret, window_of(NOW), **AT)))
    for i in (0, 8, 23):  # in the salt, at the start and the end of the tag
        changed = bytearray(h)
        changed[i] ^= 1
        assert not matches(g.secret, changed.hex(), NOW, **AT)


def test_hint_refuses_a_salt_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        hint(group().secret, 1, b"short", **AT)


# -- what is advertised ------------------------------------------------------------------


def _forbidden(g: Group, person: str) -> list[bytes]:
    """Byte strings that must not appear anywhere in an advert."""
    return [
        g.id,
        g.secret,
        g.id.hex().encode(),
        g.secret.hex().encode(),
        g.name.encode(),
        person.encode(),
        g.id.hex()[:8].encode(),
        socket.gethostname().encode(),
    ]


def test_txt_record_holds_only_the_version_and_the_hint() -> None:
    g = group("Eastside tool library")
    record = txt_record(g.secret, NOW, **AT)
    assert set(record) == {"v", "h"}
    assert record["v"] == "1"
    assert matches(g.secret, record["h"], NOW, **AT)


def test_the_advert_carries_no_group_id_name_or_person() -> None:
    g = group("Eastside tool library")
    node = Discovery(g, 7717, lambda a, i: None, lambda a: None, interfaces=["10.1.2.3"])
    node._addresses = ["10.1.2.3"]
    info = node._service_info()
    assert info.type == SERVICE_TYPE
    assert info.port == 7717
    assert info.parsed_addresses() == ["10.1.2.3"]
    assert set(info.properties) == {b"v", b"h"}
    # Every record zeroconf would put on the wire for this service, as bytes.
    wire = b"".join([info.text, info.name.encode(), (info.server or "").encode()])
    for secret_thing in _forbidden(g, "Ana"):
        if len(secret_thing) >= 4:  # a short name could occur in hex by chance
            assert secret_thing.lower() not in wire.lower(), secret_thing
    instance = info.name.removesuffix("." + SERVICE_TYPE)
    assert len(instance) == 16 and int(instance, 16) >= 0  # 64 random bits, hex
    assert info.server == f"{instance}.local."


def test_each_node_draws_its_own_instance_name() -> None:
    g = group()
    names = {Discovery(g, 1, lambda a, i: None, lambda a: None).instance for _ in range(50)}
    assert len(names) == 50


# -- choosing what to dial -------------------------------------------------------------


def test_pick_address_prefers_an_address_on_our_subnet() -> None:
    assert pick_address(["192.168.5.9", "10.77.0.2"], ["10.77.0.1/24"]) == "10.77.0.2"


def test_pick_address_falls_back_to_a_routable_address() -> None:
    assert pick_address(["127.0.0.1", "192.168.5.9"], ["10.77.0.1/24"]) == "192.168.5.9"


def test_pick_address_never_takes_loopback_unless_we_are_on_loopback() -> None:
    assert pick_address(["127.0.0.1"], ["10.77.0.1/24"]) is None
    assert pick_address(["127.0.0.1"], ["127.0.0.1/8"]) == "127.0.0.1"
    assert pick_address(["not an address", "::1"], ["10.77.0.1/24"]) is None


def test_our_networks_take_the_prefix_of_the_interface() -> None:
    assert d.networks_of(["127.0.0.1"]) == ["127.0.0.1/8"]
    assert d.networks_of(["203.0.113.77"]) == ["203.0.113.77/32"]  # not ours: itself only


def test_interfaces_follow_the_listen_address() -> None:
    assert interfaces_for(None) is None
    assert interfaces_for("0.0.0.0") is None
    assert interfaces_for("::") is None
    assert interfaces_for("10.77.0.1") == ["10.77.0.1"]
    assert interfaces_for("127.0.0.1") == ["127.0.0.1"]
    assert interfaces_for("localhost") is None


def test_local_addresses_leave_out_loopback() -> None:
    assert all(not a.startswith("127.") for a in d.local_addresses())


# -- a pair of members and a stranger on loopback ----------------------------------------


def _multicast_loops_back() -> bool:
    """Whether a multicast datagram sent on loopback comes back to a member socket."""
    group_addr, port = "224.0.0.251", 0
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        recv.bind(("0.0.0.0", port))
        port = recv.getsockname()[1]
        recv.setsockopt(
            socket.IPPROTO_IP,
            socket.IP_ADD_MEMBERSHIP,
            struct.pack("4s4s", socket.inet_aton(group_addr), socket.inet_aton("127.0.0.1")),
        )
        recv.settimeout(1.0)
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        send.sendto(b"potluck probe", (group_addr, port))
        return recv.recv(64) == b"potluck probe"
    except OSError:
        return False
    finally:
        recv.close()
        send.close()


@pytest.fixture(scope="module")
def loopback_multicast() -> Iterator[None]:
    if not _multicast_loops_back():
        pytest.skip(
            "multicast does not loop back on 127.0.0.1 here (the netns test "
            "covers discovery across hosts)"
        )
    yield


class Seen:
    """What one Discovery reported through its callbacks."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []
        self.lost: list[str] = []

    def on_found(self, address: str, instance: str) -> None:
        self.found.append((address, instance))

    def on_lost(self, address: str) -> None:
        self.lost.append(address)


@contextlib.asynccontextmanager
async def running(*nodes: Discovery) -> AsyncIterator[None]:
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        yield
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


def _node(
    g: Group,
    port: int,
    seen: Seen,
    *,
    poll_seconds: float = d.POLL_SECONDS,
    clock: Callable[[], float] = time.time,
) -> Discovery:
    return Discovery(
        g,
        port,
        seen.on_found,
        seen.on_lost,
        interfaces=["127.0.0.1"],
        poll_seconds=poll_seconds,
        clock=clock,
    )


@pytest.mark.usefixtures("loopback_multicast")
async def test_two_members_find_each_other_and_ignore_a_stranger() -> None:
    g, other = group("Westside"), group("Westside")
    seen_a, seen_b, seen_c = Seen(), Seen(), Seen()
    a, b = _node(g, 47101, seen_a), _node(g, 47102, seen_b)
    c = _node(other, 47103, seen_c)
    async with running(c, a, b):
        await until(lambda: bool(seen_a.found and seen_b.found), what="the members meet")
        assert seen_a.found == [("127.0.0.1:47102", b.instance)]
        assert seen_b.found == [("127.0.0.1:47101", a.instance)]
        # Kept on purpose: the stranger must stay unrecognised, which only time can show.
        await asyncio.sleep(1.5)  # time enough to have seen (and ignored) the stranger
        assert [f for f, _ in seen_a.found + seen_b.found] == ["127.0.0.1:47102", "127.0.0.1:47101"]
        assert seen_c.found == []  # the stranger saw two adverts and recognised neither
        assert a.name not in a.peers  # our own advert is not a peer
        await b.stop()
        await until(
            lambda: seen_a.lost == ["127.0.0.1:47102"], what="the goodbye arrives", timeout=3
        )
    assert seen_c.lost == []


@pytest.mark.usefixtures("loopback_multicast")
async def test_the_advert_rotates_its_hint_with_the_hour_and_stays_recognised() -> None:
    g = group()
    now = [time.time()]
    seen_a, seen_b = Seen(), Seen()
    a = _node(g, 47111, seen_a, poll_seconds=0.2, clock=lambda: now[0])
    b = _node(g, 47112, seen_b)
    async with running(a, b):
        await until(lambda: bool(seen_b.found), what="b finds a")
        assert a._info is not None
        before = a._info.properties[b"h"]
        now[0] += WINDOW_SECONDS  # a's clock crosses into the next hour
        await until(
            lambda: a._info is not None and a._info.properties[b"h"] != before,
            what="a re-announces",
        )
        await asyncio.sleep(1.0)  # the scenario: a second of re-announcing, still recognised
        assert seen_b.lost == []  # within b's tolerance: still a member
        now[0] += 2 * WINDOW_SECONDS  # now two hours ahead of b: no longer recognised
        await until(
            lambda: seen_b.lost == [f"127.0.0.1:{a.port}"],
            what="b drops an advert it can no longer recognise",
        )


# -- the advert is bound to where it says the node listens (docs/discovery.md §binding) --


def test_a_hint_copied_to_another_address_or_port_is_not_recognised() -> None:
    g = group()
    made = hint(g.secret, window_of(NOW), port=7717, addresses=["192.168.1.20"])
    assert matches(g.secret, made, NOW, port=7717, addresses=["192.168.1.20"])
    assert not matches(g.secret, made, NOW, port=7718, addresses=["192.168.1.20"])
    assert not matches(g.secret, made, NOW, port=7717, addresses=["192.168.1.66"])
    assert not matches(g.secret, made, NOW, port=7717, addresses=["192.168.1.20", "192.168.1.66"])
    assert not matches(g.secret, made, NOW, port=7717, addresses=[])


def test_the_binding_ignores_the_order_and_repeats_of_addresses() -> None:
    g = group()
    made = hint(g.secret, window_of(NOW), port=7717, addresses=["10.0.0.2", "10.0.0.1"])
    assert matches(g.secret, made, NOW, port=7717, addresses=["10.0.0.1", "10.0.0.2", "10.0.0.1"])


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_matches_refuses_what_is_not_a_port_or_an_address(port: int) -> None:
    g = group()
    made = hint(g.secret, window_of(NOW), **AT)
    assert not matches(g.secret, made, NOW, port=port, addresses=["192.168.1.20"])
    assert not matches(g.secret, made, NOW, port=7717, addresses=["not an address"])


@pytest.mark.usefixtures("loopback_multicast")
async def test_a_stranger_re_advertising_a_members_txt_record_is_not_dialled() -> None:
    from zeroconf import IPVersion, ServiceInfo
    from zeroconf.asyncio import AsyncZeroconf

    g = group()
    seen_a, seen_b = Seen(), Seen()
    a, b = _node(g, 47121, seen_a), _node(g, 47122, seen_b)
    async with running(a, b):
        await until(lambda: bool(seen_b.found), what="b finds a")
        assert a._info is not None
        # the stranger copies a's TXT record, word for word, into its own advert
        lure = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        copied = ServiceInfo(
            SERVICE_TYPE,
            f"0123456789abcdef.{SERVICE_TYPE}",
            port=47199,
            properties=a._info.properties,
            server="0123456789abcdef.local.",
            parsed_addresses=["127.0.0.1"],
        )
        try:
            await lure.async_register_service(copied)
            await asyncio.sleep(2.0)  # time enough for b to have seen and resolved it
        finally:
            await lure.async_close()
    assert [address for address, _ in seen_b.found] == ["127.0.0.1:47121"]


@pytest.mark.usefixtures("loopback_multicast")
async def test_the_advert_changes_its_names_with_the_hint_and_is_not_lost() -> None:
    g = group()
    now = [time.time()]
    seen_a, seen_b = Seen(), Seen()
    a = _node(g, 47131, seen_a, poll_seconds=0.2, clock=lambda: now[0])
    b = _node(g, 47132, seen_b)
    async with running(a, b):
        await until(lambda: bool(seen_b.found), what="b finds a")
        first = a.instance
        assert a._info is not None and a._info.server == f"{first}.local."
        now[0] += WINDOW_SECONDS  # the hint turns, and the names with it
        await until(lambda: a.instance != first, what="a re-announces under a new name")
        await until(
            lambda: any(instance == a.instance for _, instance in seen_b.found),
            what="b recognises the new name",
        )
        assert a._info is not None and a._info.server == f"{a.instance}.local."
        await asyncio.sleep(2 * d.LOST_GRACE)  # the old name's goodbye has been handled
        assert seen_b.lost == []  # the same node, renamed: never reported lost
        assert set(b.peers) == {f"{a.instance}.{SERVICE_TYPE}"}
