"""Real multicast between hosts: ``potluck serve`` nodes find each other by mDNS.

Each node runs in its own network namespace, with its own address (10.77.0.N/24 on an
``eth0`` veth), and the namespaces are joined by a bridge that lives in a fourth,
"switch" namespace: nothing is created in, or changed on, the host's own network. Two
nodes of one group are started with no ``--peer``; they must discover each other over
real mDNS and converge (same ``potluck digest``) within 10 seconds. A node of another
group in the third namespace sees their adverts but recognises neither, and is never
dialed: its peers table stays empty and its log holds only its own events.

Needs root and iproute2 (``ip netns``); CI has both. Without them the tests skip and say
which is missing. The namespaces are deleted, and the nodes killed, even when a test
fails. Discovery times are printed (``pytest -s``) and quoted in docs/discovery.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import POTLUCK, potluck
from netns import (
    Host,
    Lab,
    digest,
    events,
    missing_capability,
    peers,
    run,
    wait_for,
)

from eventlog import body
from eventlog.identity import Group, load_group
from node.app import Node

SUBNET = "10.77.0"
PORT = 7717
CONVERGE_SECONDS = 10.0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    missing = missing_capability()
    if missing:
        pytest.skip(missing)
    lab = Lab(tmp_path, subnet=SUBNET)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        left = run("ip", "netns", "list", check=False).stdout
        assert lab.prefix not in left, f"namespaces left behind: {left}"


def make_nodes(lab: Lab) -> tuple[Host, Host, Host]:
    """Ana (a) and Bo (b) in one group, Cy (c) alone in another of the same name, each
    with an event of their own. Bo joins with the group read from Ana's data dir (what
    an invite carries)."""
    a, b, c = lab.hosts

    async def create() -> None:
        ana = await Node.init(a.data_dir, "Ana", Group.new("Westside pantry"))
        bo = await Node.init(b.data_dir, "Bo", load_group(a.data_dir))
        cy = await Node.init(c.data_dir, "Cy", Group.new("Westside pantry"))
        await ana.post(body.OfferPosted(title="Tomatoes", quantity=4))
        await bo.post(body.NeedPosted(title="Baby formula", urgency="urgent"))
        await cy.post(body.OfferPosted(title="Ladders"))
        for node in (ana, bo, cy):
            await node.close()

    asyncio.run(create())
    return a, b, c


def found_line(other: Host | str) -> str:
    address = other.address if isinstance(other, Host) else other
    return f"discovered a node of this group at {address}:{PORT}"


def lost_line(other: Host | str) -> str:
    address = other.address if isinstance(other, Host) else other
    return f"mdns: {address}:{PORT} is no longer advertised"


class Watch:
    """Notes when a line first shows in a host's output, to 20 ms, from a thread (so the
    test spends no processor time that the nodes need)."""

    def __init__(self, host: Host, line: str) -> None:
        self.host = host
        self.line = line
        self.at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while self.at is None and time.monotonic() < deadline:
            if self.line in self.host.output():
                self.at = time.monotonic()
            time.sleep(0.02)

    def wait(self, seconds: float, since: float | None = None) -> float:
        """The monotonic time the line showed; fails after ``seconds`` from ``since``."""
        wait_for(
            lambda: self.at is not None,
            f"'{self.line}' in the output of {self.host.ns}",
            seconds,
            since,
        )
        assert self.at is not None
        return self.at


OBSERVER = """
import asyncio, json, sys
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

async def main():
    zc = AsyncZeroconf(interfaces=[sys.argv[1]], ip_version=IPVersion.V4Only)
    names = set()
    AsyncServiceBrowser(zc.zeroconf, "_potluck._tcp.local.",
                        handlers=[lambda zeroconf, service_type, name, state_change:
                                  names.add(name)])
    await asyncio.sleep(float(sys.argv[2]))
    out = []
    for name in sorted(names):
        info = AsyncServiceInfo("_potluck._tcp.local.", name)
        await info.async_request(zc.zeroconf, 3000)
        out.append({"name": name, "server": info.server, "port": info.port,
                    "addresses": info.parsed_addresses(),
                    "txt": {k.decode(): (v or b"").decode() for k, v in
                            info.properties.items()}, "text": info.text.hex()})
    await zc.async_close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_two_nodes_of_a_group_find_each_other_by_mdns_and_converge(lab: Lab) -> None:
    a, b, c = make_nodes(lab)
    c_digest, c_events = digest(c.data_dir), events(c.data_dir)
    assert digest(a.data_dir) != digest(b.data_dir)

    for host in (c, a, b):
        host.serve()
    listening = [Watch(h, "listening on") for h in (a, b)]
    found = [Watch(a, found_line(b)), Watch(b, found_line(a))]
    caught_up = [Watch(h, "caught up with") for h in (a, b)]
    # The clock starts once both nodes run: starting Python is not discovery.
    up = max(w.wait(30, since=h.started) for w, h in zip(listening, (a, b), strict=True))
    try:
        synced = max(w.wait(CONVERGE_SECONDS, since=up) for w in caught_up)
        wait_for(
            lambda: digest(a.data_dir) == digest(b.data_dir),
            "a and b have one digest",
            CONVERGE_SECONDS,
            since=up,
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; serve output:\n" + "\n".join(f"--- {h.ns}\n{h.output()}" for h in lab.hosts)
        ) from None
    confirmed = time.monotonic()
    found_at = [w.wait(1.0) for w in found]
    start_up = [w.wait(0) - h.started for w, h in zip(listening, (a, b), strict=True)]
    print(
        f"\nstart-up (serve started -> listening): a {start_up[0]:.2f} s, "
        f"b {start_up[1]:.2f} s"
        f"\nmDNS discovery (both listening -> 'discovered'): "
        f"a->b {found_at[0] - up:.2f} s, b->a {found_at[1] - up:.2f} s"
        f"\nsame events ('caught up'): {synced - up:.2f} s; same digest read back at "
        f"{confirmed - up:.2f} s"
    )

    # Both members know the other as found by mDNS, dialed at its own address.
    for me, other in ((a, b), (b, a)):
        rows = peers(me.data_dir)
        dialed = [r for r in rows if r["address"] == f"{other.address}:{PORT}"]
        assert dialed and dialed[0]["found"] == "mdns", rows
        assert dialed[0]["last_seen"] is not None

    # What an observer on the network sees: three adverts, none naming a group.
    seen = json.loads(a.run(*POTLUCK[:1], "-c", OBSERVER, a.address, "2").stdout)
    assert sorted(s["addresses"][0] for s in seen) == [a.address, b.address, c.address]
    group_ids = {load_group(h.data_dir).id.hex() for h in (a, c)}
    for advert in seen:
        assert advert["port"] == PORT
        assert set(advert["txt"]) == {"v", "h"} and advert["txt"]["v"] == "1"
        everything = json.dumps(advert).lower()
        for secret_thing in [
            "westside",
            "pantry",
            "ana",
            "bo",
            "cy",
            *group_ids,
            *(g[:16] for g in group_ids),
        ]:
            assert secret_thing not in everything, (secret_thing, advert)
    hints = [s["txt"]["h"] for s in seen]
    assert len(set(hints)) == 3  # not even the two members' hints are equal

    # The stranger saw both members' adverts by now and was never dialed, nor dialed.
    time.sleep(1.0)
    assert peers(c.data_dir) == []
    assert digest(c.data_dir) == c_digest and events(c.data_dir) == c_events
    assert "discovered" not in c.output() and "peer connected" not in c.output()
    for member in (a, b):
        assert all(c.address not in str(r["address"]) for r in peers(member.data_dir))
        assert c.address not in member.output()

    # A clean stop withdraws the advert: the other member hears the goodbye.
    b.terminate()
    heard = wait_for(lambda: lost_line(b) in a.output(), "a hears b's goodbye", 5.0)
    print(f"a clean stop is heard as 'no longer advertised' after {heard:.2f} s")
    b.stop()
    assert "stopped" in b.output()


def test_no_discovery_means_no_advert_and_no_dial(lab: Lab) -> None:
    a, b, _c = make_nodes(lab)
    a.serve("--no-discovery")
    b.serve("--no-discovery")
    wait_for(
        lambda: "listening on" in a.output() and "listening on" in b.output(), "both listen", 10.0
    )
    seen = json.loads(a.run(*POTLUCK[:1], "-c", OBSERVER, a.address, "3").stdout)
    assert seen == []
    assert digest(a.data_dir) != digest(b.data_dir)
    assert peers(a.data_dir) == [] and peers(b.data_dir) == []


def test_a_node_that_changes_address_is_found_again_at_the_new_one(lab: Lab) -> None:
    a, b, _c = make_nodes(lab)
    a.serve()
    b.serve()
    wait_for(
        lambda: digest(a.data_dir) == digest(b.data_dir),
        "a and b converge",
        CONVERGE_SECONDS,
        since=min(a.started, b.started),
    )
    # a's Wi-Fi drops and is rejoined, with another address from the DHCP server.
    moved = f"{SUBNET}.11"
    a.run("ip", "addr", "del", f"{a.address}/24", "dev", "eth0")
    time.sleep(1.0)
    a.run("ip", "addr", "add", f"{moved}/24", "dev", "eth0")
    swapped = time.monotonic()
    # a polls its addresses every 10 s; then it re-announces and b dials the new one.
    took = wait_for(
        lambda: found_line(moved) in b.output(), "b finds a at its new address", 20.0, since=swapped
    )
    print(f"\nafter an address change, found again at the new address in {took:.2f} s")
    # the old name's goodbye counts after a grace (sync/discovery.py LOST_GRACE): the
    # advert was renamed, and the new name may be resolved first
    wait_for(lambda: lost_line(a) in b.output(), "b drops the old address", 5.0)
    potluck(a.data_dir, "offer", "post", "Candles")
    wait_for(
        lambda: digest(a.data_dir) == digest(b.data_dir),
        "a's new offer reaches b through the new address",
        15.0,
    )
    rows = peers(b.data_dir)
    assert any(r["address"] == f"{moved}:{PORT}" and r["found"] == "mdns" for r in rows), rows
    assert re.search(rf"peer connected: Ana \(\w+\) at {re.escape(moved)}:{PORT}", b.output()), (
        b.output()
    )
