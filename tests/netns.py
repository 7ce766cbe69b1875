"""Network namespaces for tests and benches: real ``potluck serve`` processes on a
virtual switch, and the faults of a bad network between them.

A ``Lab`` is one namespace per node, each with an ``eth0`` veth whose other end sits on
a bridge in a "switch" namespace: nothing is created in, or changed on, the host's own
network, and deleting the namespaces removes everything.

``run_faults`` is the network-fault scenario of tests/test_network_faults.py and
bench/netfault.py (see its docstring). Two helpers of it run as processes, so this file
is also a script: ``python tests/netns.py relay ...`` (the delaying TCP relay, in the
switch namespace) and ``python tests/netns.py write ...`` (one node's writer).

Needs root, iproute2, and for the faults either ``sch_netem`` or nftables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import sqlite3
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from helpers import POTLUCK, ROOT, potluck, potluck_env

from eventlog import body
from eventlog.identity import Group, load_group
from node.app import LOG_FILE, Node
from node.cli import main as potluck_main

CALL_TIMEOUT = 60
PORT = 7717


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=CALL_TIMEOUT, check=check
    )


@contextlib.contextmanager
def probe_namespace() -> Iterator[str]:
    """A throwaway namespace with a veth pair ``v0``/``v1``, deleted afterwards."""
    probe = f"plprobe-{secrets.token_hex(3)}"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        raise OSError(f"needs network namespaces: 'ip netns add' failed: {made.stderr.strip()}")
    try:
        yield probe
    finally:
        run("ip", "netns", "del", probe, check=False)


def missing_capability() -> str | None:
    """What this machine lacks for namespaces, in words; None when nothing is missing."""
    if not hasattr(os, "geteuid"):
        return "needs root and iproute2 (ip netns): not a POSIX system"
    if os.geteuid() != 0:
        return f"needs root and iproute2 (ip netns): running as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns): no 'ip' command on PATH"
    try:
        with probe_namespace() as probe:
            veth = run(
                "ip",
                "-n",
                probe,
                "link",
                "add",
                "v0",
                "type",
                "veth",
                "peer",
                "name",
                "v1",
                check=False,
            )
            if veth.returncode != 0:
                return f"needs veth links in namespaces: {veth.stderr.strip()}"
            bridge = run("ip", "-n", probe, "link", "add", "br0", "type", "bridge", check=False)
            if bridge.returncode != 0:
                return f"needs bridge links in namespaces: {bridge.stderr.strip()}"
    except OSError as exc:
        return str(exc)
    return None


def digest(data_dir: Path) -> str:
    return potluck(data_dir, "digest").stdout.strip()


def peers(data_dir: Path) -> list[dict[str, object]]:
    rows = json.loads(potluck(data_dir, "peers", "--json").stdout)["peers"]
    assert isinstance(rows, list)
    return rows


def events(data_dir: Path) -> list[dict[str, object]]:
    rows = json.loads(potluck(data_dir, "log", "--json").stdout)["events"]
    assert isinstance(rows, list)
    return rows


def wait_for(
    check: Callable[[], bool], what: str, seconds: float, since: float | None = None
) -> float:
    """Poll ``check``; return seconds elapsed since ``since`` (default: now) when true."""
    began = time.monotonic() if since is None else since
    while not check():
        if time.monotonic() - began > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - began


@dataclass
class Host:
    """One namespace with one address, and the ``potluck serve`` running in it."""

    ns: str
    address: str
    data_dir: Path
    out_path: Path
    port: int = PORT
    process: subprocess.Popen[str] | None = None
    started: float = 0.0
    _out: IO[str] | None = field(default=None, repr=False)

    def serve(self, *extra: str) -> None:
        self._out = self.out_path.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                *POTLUCK,
                "--data-dir",
                str(self.data_dir),
                "serve",
                "--listen",
                f"0.0.0.0:{self.port}",
                *extra,
            ],
            cwd=ROOT,
            env=potluck_env(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    def terminate(self) -> None:
        """SIGTERM: a clean stop, which withdraws the advert."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, and wait for the end; SIGKILL if it hangs."""
        self.terminate()
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command inside this namespace."""
        return run("ip", "netns", "exec", self.ns, *args)


class Lab:
    """Namespaces ``<prefix>-a``, ``-b``, … on a bridge ``br0`` in ``<prefix>-sw``; host
    ``a`` is ``<subnet>.1`` on its ``eth0``, whose switch end is ``port-a``."""

    def __init__(
        self, tmp: Path, count: int = 3, *, subnet: str = "10.77.0", prefix: str = "potluck-t"
    ) -> None:
        assert 1 <= count <= len(string.ascii_lowercase)
        self.prefix = f"{prefix}{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.subnet = subnet
        self.namespaces: list[str] = []
        self.hosts: list[Host] = []
        self.tmp = tmp
        self.count = count

    def up(self) -> None:
        self._ns(self.switch)
        sw = ["ip", "-n", self.switch]
        run(*sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        run(*sw, "link", "set", "br0", "up")
        for i in range(self.count):
            letter = string.ascii_lowercase[i]
            ns = f"{self.prefix}-{letter}"
            self._ns(ns)
            address = f"{self.subnet}.{i + 1}"
            inside = ["ip", "-n", ns]
            run(*inside, "link", "set", "lo", "up")
            # eth0 in the node's namespace, its peer (named after the node) on the switch.
            run(
                *inside,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"port-{letter}",
                "netns",
                self.switch,
            )
            run(*sw, "link", "set", f"port-{letter}", "master", "br0")
            run(*sw, "link", "set", f"port-{letter}", "up")
            run(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
            run(*inside, "link", "set", "dev", "eth0", "multicast", "on")
            run(*inside, "link", "set", "eth0", "up")
            self.hosts.append(
                Host(ns, address, self.tmp / f"node-{letter}", self.tmp / f"serve-{letter}.txt")
            )

    def _ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)

    def down(self, show_output: bool = True) -> None:
        for host in self.hosts if show_output else ():  # shown by pytest when it failed
            print(f"--- potluck serve in {host.ns} ({host.address}):\n{host.output()}")
        for host in self.hosts:
            host.terminate()  # all at once: a session on a dead path takes 5 s to close
        for host in self.hosts:
            try:
                host.stop()
            except Exception:  # keep cleaning up
                if host.process is not None:
                    host.process.kill()
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


# -- network faults ---------------------------------------------------------------------

FAULT_SUBNET = "10.78.0"
RELAY_HOST = 254  # the switch's own address, <subnet>.254, where the relay listens
RELAY_PORT = 7800  # node i (from 0) is reached through the relay at RELAY_PORT + i
RELAY_CONNECT_SECONDS = 5.0
NFT_TABLE = "potluck_fault"


def netem_args(plan: FaultPlan) -> list[str]:
    """The ``tc ... netem`` arguments of a plan: the issue's loss, delay with jitter,
    reordering and duplication, on each node's egress."""
    return [
        "delay",
        f"{plan.delay_ms}ms",
        f"{plan.jitter_ms}ms",
        "loss",
        f"{plan.loss_percent}%",
        "reorder",
        "25%",
        "50%",
        "duplicate",
        "5%",
    ]


def fault_mode(plan: FaultPlan | None = None) -> tuple[str | None, str]:
    """``(mode, why)``: ``"netem"`` when ``sch_netem`` takes the plan's arguments,
    otherwise ``"relay"`` (nftables loss, delay from a userspace relay) when ``nft``
    works in a namespace, otherwise ``None`` with the reason in ``why``."""
    missing = missing_capability()
    if missing:
        return None, missing
    plan = plan or FaultPlan()
    with probe_namespace() as probe:
        run("ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        netem = (
            run(
                "ip",
                "netns",
                "exec",
                probe,
                "tc",
                "qdisc",
                "add",
                "dev",
                "v0",
                "root",
                "netem",
                *netem_args(plan),
                check=False,
            )
            if shutil.which("tc")
            else None
        )
        if netem is not None and netem.returncode == 0:
            return "netem", "sch_netem works"
        no_netem = netem.stderr.strip() if netem is not None else "no 'tc' command"
        if shutil.which("nft") is None:
            return None, (f"needs sch_netem ({no_netem}) or nftables: no 'nft' command on PATH")
        nft = run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe", check=False)
        if nft.returncode != 0:
            return None, f"needs sch_netem ({no_netem}) or nftables: {nft.stderr.strip()}"
    return "relay", f"no sch_netem ({no_netem}): nftables loss and a delaying relay"


@dataclass(frozen=True)
class FaultPlan:
    """What ``run_faults`` does; every random choice comes from ``seed``."""

    nodes: int = 5
    seconds: float = 24.0  # the fault window: writes and cuts happen inside it
    writes: int = 30  # per node, spread over the window
    loss_percent: int = 10
    delay_ms: int = 200
    jitter_ms: int = 50
    cut_seconds: tuple[float, float] = (2.0, 6.0)  # each cut lasts this long
    cut_gap: tuple[float, float] = (1.0, 4.0)  # between one cut's start and the next
    bound: float = 60.0  # converge within this after the faults stop
    seed: int = 1
    mode: str = "auto"  # "netem", "relay", or the first of them that works


@dataclass(frozen=True)
class Cut:
    node: str  # letter
    at: float  # seconds into the window
    seconds: float


@dataclass
class FaultReport:
    """What happened, measured; ``converged_s`` is None when the bound ran out."""

    mode: str
    plan: FaultPlan
    prefix: str = ""  # of the namespaces, all deleted by the time the report is returned
    written: int = 0
    failed_writes: list[str] = field(default_factory=list)
    expected_events: int = 0
    packets_sent: int = 0
    packets_dropped: int = 0
    delay: dict[str, float] = field(default_factory=dict)
    cuts: list[Cut] = field(default_factory=list)
    cut_total_s: float = 0.0
    window_s: float = 0.0
    missing_at_stop: list[int] = field(default_factory=list)  # per node, when faults end
    removed_s: float = 0.0  # from "faults off" until links were up and loss, delay gone
    last_write_s: float = 0.0  # into the window, when the last write was acknowledged
    converged_s: float | None = None
    confirmed_s: float | None = None
    counts: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    stragglers: list[str] = field(default_factory=list)  # nodes not caught up at the bound

    @property
    def loss_measured(self) -> float:
        return 100.0 * self.packets_dropped / max(1, self.packets_sent)


def cut_schedule(plan: FaultPlan, letters: Sequence[str]) -> list[Cut]:
    """Links cut one after another, some overlapping (several nodes off at once), none
    outlasting the window; the last, of the longest length, lasts until the window ends,
    so that the faults stop with a node behind and there is something left to converge."""
    rng = random.Random(f"cuts-{plan.seed}")
    cuts: list[Cut] = []
    last = plan.seconds - plan.cut_seconds[1]

    def free(node: str, at: float) -> bool:
        return not any(c.node == node and c.at + c.seconds > at for c in cuts)

    at = rng.uniform(*plan.cut_gap)
    while at < last:
        node = rng.choice(letters)
        if free(node, at):
            length = min(rng.uniform(*plan.cut_seconds), last - at)
            cuts.append(Cut(node, round(at, 2), round(length, 2)))
        at += rng.uniform(*plan.cut_gap)
    cuts.append(
        Cut(
            rng.choice([n for n in letters if free(n, last)] or letters),
            round(last, 2),
            round(plan.cut_seconds[1], 2),
        )
    )
    return cuts


class Cutter:
    """Runs a cut schedule on the switch ports from a thread (``ip link set down``, then
    ``up``); ``finish`` stops it early and leaves every port up."""

    def __init__(self, switch: str, cuts: Sequence[Cut]) -> None:
        self.switch = switch
        self.steps = sorted(
            [(c.at, "down", c) for c in cuts] + [(c.at + c.seconds, "up", c) for c in cuts],
            key=lambda step: (step[0], step[1] == "down"),
        )  # up first
        self.letters = sorted({c.node for c in cuts})
        self.done: list[Cut] = []  # cuts whose link went down
        self.began = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.began = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        for at, state, cut in self.steps:
            if self._stop.wait(max(0.0, self.began + at - time.monotonic())):
                return
            run("ip", "-n", self.switch, "link", "set", f"port-{cut.node}", state)
            if state == "down":
                self.done.append(cut)

    def finish(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(CALL_TIMEOUT)
        for letter in self.letters:
            run("ip", "-n", self.switch, "link", "set", f"port-{letter}", "up", check=False)


def _nft_loss(percent: int) -> str:
    """Every packet a node sends on eth0 is dropped with probability ``percent`` %, as
    ``netem loss`` on its egress would; the two counters give the measured rate."""
    return (
        f"table inet {NFT_TABLE} {{\n chain out {{\n"
        "  type filter hook output priority 0; policy accept;\n"
        '  oifname "eth0" counter\n'
        f'  oifname "eth0" numgen random mod 100 < {percent} counter drop\n }}\n}}\n'
    )


def _nft_counters(ns: str) -> tuple[int, int]:
    """(packets sent on eth0, packets dropped) from the loss table of ``ns``."""
    out = run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", NFT_TABLE)
    counts = [
        e["counter"]["packets"]
        for item in json.loads(out.stdout)["nftables"]
        if "rule" in item
        for e in item["rule"]["expr"]
        if "counter" in e
    ]
    return counts[0], counts[1]


def _netem_counters(ns: str) -> tuple[int, int]:
    """(packets, dropped) of the netem qdisc on eth0 of ``ns``."""
    out = run("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", "eth0").stdout
    found = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out)
    if not found:
        return 0, 0
    sent, dropped = int(found.group(1)), int(found.group(2))
    return sent + dropped, dropped


def seed_nodes(hosts: Sequence[Host]) -> int:
    """Node a starts the group and defines the item and location everyone stocks; the
    others join with the group file (what an invite carries) and get a's events, as
    after a first sync. Returns the number of events every node then holds."""

    async def create() -> int:
        first = await Node.init(hosts[0].data_dir, "Node a", Group.new("Netfault pantry"))
        await first.post(
            body.ItemDefined(
                slug="beans", name="Tins of beans", unit="tin", category="food", storage="ambient"
            )
        )
        await first.post(body.LocationDefined(slug="pantry", name="Hall pantry", kind="pantry"))
        batches = [batch async for batch in first.store.read_since({})]
        for host in hosts[1:]:
            other = await Node.init(
                host.data_dir, f"Node {host.ns[-1]}", load_group(hosts[0].data_dir)
            )
            for batch in batches:
                await other.store.receive(batch)
            await other.close()
        await first.close()
        return 3 + len(hosts) - 1

    return asyncio.run(create())


def log_state(data_dir: Path) -> tuple[int, tuple[tuple[bytes, int, bytes], ...]] | None:
    """(event count, heads) read from the log file of a running node; None while the file
    is busy. Cheap enough to poll, unlike a ``potluck`` process per node."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{data_dir / LOG_FILE}?mode=ro", uri=True, timeout=2)
        ) as db:
            count = db.execute("SELECT count(*) FROM events").fetchone()[0]
            heads = tuple(db.execute("SELECT author, seq, hash FROM heads ORDER BY author"))
    except sqlite3.Error:
        return None
    return int(count), heads


def run_faults(tmp: Path, plan: FaultPlan, say: Callable[[str], None] = print) -> FaultReport:
    """Five (``plan.nodes``) real ``potluck serve`` nodes, each in its namespace, every
    one dialing every other; loss and delay on every link from before they start, links
    cut and restored on a seeded schedule while a writer per node appends ``plan.writes``
    events through the CLI. Then the faults stop and the report says when every node
    held the same log (same heads and count, all writes), and the digests.

    With ``sch_netem`` the loss, delay with jitter, reordering and duplication are one
    netem qdisc on each node's eth0 and nodes dial each other directly. Without it, loss
    is an nftables ``numgen random`` drop on each node's eth0 output, and each node dials
    the others through a TCP relay in the switch namespace that holds every chunk for
    ``delay ± jitter`` in order. Packet reordering and duplication need netem: TCP hides
    both from the application, which sees only what the relay gives it, variable delay.
    Everything is removed, and every process ended, before it returns or raises.
    """
    mode, why = fault_mode(plan)
    if mode is None:
        raise RuntimeError(why)
    if plan.mode != "auto":
        if plan.mode == "netem" and mode != "netem":
            raise RuntimeError(f"netem asked for, but {why}")
        if plan.mode == "relay" and shutil.which("nft") is None:
            raise RuntimeError("the relay mode needs nftables: no 'nft' command on PATH")
        mode = plan.mode
    report = FaultReport(mode=mode, plan=plan)
    lab = Lab(tmp, plan.nodes, subnet=FAULT_SUBNET, prefix="potluck-f")
    report.prefix = lab.prefix
    processes: list[subprocess.Popen[str]] = []
    cutter: Cutter | None = None
    relay: subprocess.Popen[str] | None = None
    relay_out = tmp / "relay.txt"
    ok = False
    try:
        lab.up()
        hosts = lab.hosts
        letters = [h.ns[-1] for h in hosts]
        report.expected_events = seed_nodes(hosts)
        if mode == "netem":
            for host in hosts:
                host.run("tc", "qdisc", "add", "dev", "eth0", "root", "netem", *netem_args(plan))
            dial = [f"{h.address}:{h.port}" for h in hosts]
        else:
            for host in hosts:
                subprocess.run(
                    ["ip", "netns", "exec", host.ns, "nft", "-f", "-"],
                    input=_nft_loss(plan.loss_percent),
                    text=True,
                    check=True,
                    capture_output=True,
                    timeout=CALL_TIMEOUT,
                )
            relay_ip = f"{FAULT_SUBNET}.{RELAY_HOST}"
            run("ip", "-n", lab.switch, "addr", "add", f"{relay_ip}/24", "dev", "br0")
            routes = [f"{RELAY_PORT + i}={h.address}:{h.port}" for i, h in enumerate(hosts)]
            with relay_out.open("w") as log:  # the child keeps its own descriptor
                relay = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        lab.switch,
                        sys.executable,
                        __file__,
                        "relay",
                        "--listen",
                        relay_ip,
                        "--delay-ms",
                        str(plan.delay_ms),
                        "--jitter-ms",
                        str(plan.jitter_ms),
                        "--seed",
                        str(plan.seed),
                        *routes,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd=ROOT,
                )
            wait_for(lambda: "relay ready" in relay_out.read_text(), "the relay listens", 20)
            dial = [f"{relay_ip}:{RELAY_PORT + i}" for i in range(len(hosts))]
        for i, host in enumerate(hosts):
            host.serve(
                "--no-discovery",
                "--no-ui",
                *(a for j, d in enumerate(dial) if j != i for a in ("--peer", d)),
            )
        wait_for(lambda: all("listening on" in h.output() for h in hosts), "every node listens", 30)

        cutter = Cutter(lab.switch, cut_schedule(plan, letters))
        writers = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "write",
                    str(h.data_dir),
                    "--count",
                    str(plan.writes),
                    "--seconds",
                    str(plan.seconds * 0.9),
                    "--seed",
                    f"{plan.seed}-{h.ns[-1]}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=ROOT,
                env=potluck_env(),
            )
            for h in hosts
        ]
        processes.extend(writers)
        for writer in writers:  # Python started and potluck imported: the writes are on time
            assert writer.stdout is not None
            assert select.select([writer.stdout], [], [], CALL_TIMEOUT)[0], "writer silent"
            assert writer.stdout.readline() == "ready\n"
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
        cutter.start()
        say(
            f"faults on ({mode}): {plan.seconds:.0f} s window, {len(cutter.steps) // 2} "
            f"cuts, {plan.writes} writes per node"
        )
        time.sleep(max(0.0, cutter.began + plan.seconds - time.monotonic()))

        # The faults stop: links up, loss and delay removed; the clock starts before.
        for host in hosts:
            sent, dropped = (_netem_counters if mode == "netem" else _nft_counters)(host.ns)
            report.packets_sent += sent
            report.packets_dropped += dropped
        counts_at_stop = [s[0] if s else 0 for s in (log_state(h.data_dir) for h in hosts)]
        stopped = time.monotonic()
        cutter.finish()
        for host in hosts:
            if mode == "netem":
                host.run("tc", "qdisc", "del", "dev", "eth0", "root")
            else:
                host.run("nft", "delete", "table", "inet", NFT_TABLE)
        if relay is not None:
            relay.send_signal(signal.SIGUSR1)  # delay off; the relay stays in the path
        report.removed_s = time.monotonic() - stopped
        report.window_s = stopped - cutter.began
        report.cuts = list(cutter.done)
        report.cut_total_s = sum(c.seconds for c in report.cuts)
        for writer in writers:  # done by now, unless the machine is far too slow
            writer.wait(CALL_TIMEOUT)
            assert writer.stdout is not None
            result = json.loads(writer.stdout.read().strip().splitlines()[-1])
            report.written += result["ok"]
            report.failed_writes += result["errors"]
            report.last_write_s = max(report.last_write_s, result["last_s"])
        report.expected_events += report.written
        report.missing_at_stop = [report.expected_events - n for n in counts_at_stop]
        say(
            f"faults off after {report.window_s:.1f} s (removed in {report.removed_s:.2f} s);"
            f" {report.written} events written, {report.expected_events} expected on every "
            f"node, missing then: {report.missing_at_stop}"
        )
        if relay is not None:
            wait_for(lambda: relay_out.read_text().rstrip().endswith("}"), "the relay's stats", 10)
            report.delay = json.loads(relay_out.read_text().strip().splitlines()[-1])

        states: list[tuple[int, tuple[tuple[bytes, int, bytes], ...]] | None] = []

        def same() -> bool:
            states[:] = [log_state(h.data_dir) for h in hosts]
            first = states[0]
            return (
                first is not None
                and first[0] == report.expected_events
                and all(s == first for s in states)
            )

        try:
            report.converged_s = wait_for(
                same, "every node holds every event", plan.bound, since=stopped
            )
        except AssertionError:
            report.stragglers = [
                h.ns[-1]
                for h, s in zip(hosts, states, strict=True)
                if s is None or s[0] != report.expected_events
            ]
        with ThreadPoolExecutor(len(hosts)) as pool:
            report.digests = list(pool.map(lambda h: digest(h.data_dir), hosts))
        report.confirmed_s = time.monotonic() - stopped
        report.counts = [s[0] if s else -1 for s in (log_state(h.data_dir) for h in hosts)]
        ok = report.converged_s is not None and len(set(report.digests)) == 1
        return report
    finally:
        if cutter is not None:
            cutter.finish()
        for process in processes:  # writers, if something failed before they ended
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if not ok and relay_out.exists():
            print(f"--- relay:\n{relay_out.read_text()}")
        lab.down(show_output=not ok)  # the nodes stop before the relay under them
        if relay is not None and relay.poll() is None:
            relay.terminate()
            relay.wait(10)


# -- the relay: a TCP forwarder that delays every chunk, in order ----------------------


@dataclass
class RelayStats:
    chunks: int = 0
    total_ms: float = 0.0
    min_ms: float = float("inf")
    max_ms: float = 0.0
    connections: int = 0
    refused: int = 0  # dials the relay could not pass on (the target's link was cut)

    def note(self, held_ms: float) -> None:
        self.chunks += 1
        self.total_ms += held_ms
        self.min_ms = min(self.min_ms, held_ms)
        self.max_ms = max(self.max_ms, held_ms)

    def summary(self) -> dict[str, float]:
        return {
            "chunks": self.chunks,
            "connections": self.connections,
            "refused": self.refused,
            "mean_ms": round(self.total_ms / max(1, self.chunks), 1),
            "min_ms": round(self.min_ms if self.chunks else 0.0, 1),
            "max_ms": round(self.max_ms, 1),
        }


class Relay:
    """Accepts on one port per target and forwards bytes both ways; while delaying,
    each chunk read is written ``delay ± jitter`` (uniform) after it arrived, never
    before the chunk ahead of it (a TCP stream stays in order). SIGUSR1 stops delaying.
    The stats are of the delayed chunks: the time each spent in the relay."""

    def __init__(self, delay_ms: int, jitter_ms: int, seed: str) -> None:
        self.delay = delay_ms / 1000
        self.jitter = jitter_ms / 1000
        self.rng = random.Random(seed)
        self.stats = RelayStats()

    async def serve(self, listen: str, routes: dict[int, tuple[str, int]]) -> None:
        """Until SIGTERM, whose default action ends the process."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._undelay)
        for port, target in routes.items():
            await asyncio.start_server(
                functools.partial(self._handle, target), listen, port, reuse_address=True
            )
        print("relay ready", flush=True)
        await asyncio.Event().wait()

    def _undelay(self) -> None:
        """Stop delaying, and print the stats of the delayed chunks as one JSON line."""
        self.delay = self.jitter = 0.0
        print(json.dumps(self.stats.summary()), flush=True)

    async def _handle(
        self, target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), RELAY_CONNECT_SECONDS
            )
        except (OSError, TimeoutError):
            self.stats.refused += 1
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            end.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, float, bytes] | None] = asyncio.Queue(64)

        async def pump() -> None:
            try:
                while chunk := await source.read(65536):
                    now = loop.time()
                    hold = self.delay + self.rng.uniform(-self.jitter, self.jitter)
                    await queue.put((now, now + hold if self.delay else now, chunk))
            except OSError:
                pass
            finally:
                await queue.put(None)

        pumping = asyncio.ensure_future(pump())
        try:
            while (item := await queue.get()) is not None:
                arrived, due, chunk = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                sink.write(chunk)
                await sink.drain()
                if due > arrived:
                    self.stats.note((loop.time() - arrived) * 1000)
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:
            sink.close()
        finally:
            pumping.cancel()


# -- the writer: one node's CLI commands, spread over the window ------------------------


def _cli(data_dir: str, *args: str) -> tuple[int, str]:
    """Run one ``potluck`` command through its entry point in this process (Python starts
    once per node, not once per event); (exit code, stdout + stderr)."""
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            potluck_main(["--data-dir", data_dir, *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def _command(rng: random.Random, data_dir: str, me: str, i: int) -> list[str]:
    """One write: an offer, a need, a stock change or count, or a claim on an open offer
    of another node that this node has already received."""
    roll = rng.random()
    if roll < 0.15:
        code, out = _cli(data_dir, "board", "--json")
        offers = (
            [o["id"] for o in json.loads(out)["offers"] if o["author_name"] != f"Node {me}"]
            if code == 0
            else []
        )
        if offers:
            return ["claim", "make", rng.choice(offers), "--quantity", str(rng.randint(1, 3))]
    if roll < 0.45:
        return [
            "offer",
            "post",
            f"Tins from {me} #{i}",
            "--quantity",
            str(rng.randint(1, 6)),
            "--item",
            "beans",
            "--location",
            "pantry",
        ]
    if roll < 0.60:
        return [
            "need",
            "post",
            f"Blankets for {me} #{i}",
            "--urgency",
            rng.choice(["low", "normal", "urgent"]),
        ]
    if roll < 0.95:
        return ["stock", "adjust", "beans", "pantry", str(rng.choice([-1, 1]) * rng.randint(1, 9))]
    return ["stock", "count", "beans", "pantry", str(rng.randint(0, 40))]


def write_main(data_dir: str, count: int, seconds: float, seed: str) -> None:
    """Says "ready", waits for a line on stdin, writes; then prints one JSON line: how
    many writes were acknowledged, any errors, and when the last one was."""
    rng = random.Random(seed)
    me = seed.rsplit("-", 1)[-1]
    times = sorted(rng.uniform(0, seconds) for _ in range(count))
    print("ready", flush=True)
    sys.stdin.readline()
    began = time.monotonic()
    ok, errors = 0, []
    for i, at in enumerate(times):
        time.sleep(max(0.0, began + at - time.monotonic()))
        args = _command(rng, data_dir, me, i)
        code, out = _cli(data_dir, *args)
        if code == 0:
            ok += 1
        else:
            errors.append(f"{me}: potluck {' '.join(args)}: {out.strip()}")
    print(json.dumps({"ok": ok, "errors": errors, "last_s": round(time.monotonic() - began, 2)}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="the delaying TCP relay")
    relay.add_argument("--listen", required=True)
    relay.add_argument("--delay-ms", type=int, default=200)
    relay.add_argument("--jitter-ms", type=int, default=50)
    relay.add_argument("--seed", default="1")
    relay.add_argument("routes", nargs="+", help="PORT=HOST:PORT")
    write = commands.add_parser("write", help="one node's writes")
    write.add_argument("data_dir")
    write.add_argument("--count", type=int, required=True)
    write.add_argument("--seconds", type=float, required=True)
    write.add_argument("--seed", required=True)
    args = parser.parse_args(argv)
    if args.command == "relay":
        routes = {}
        for route in args.routes:
            port, target = route.split("=")
            host, target_port = target.rsplit(":", 1)
            routes[int(port)] = (host, int(target_port))
        asyncio.run(Relay(args.delay_ms, args.jitter_ms, args.seed).serve(args.listen, routes))
    else:
        write_main(args.data_dir, args.count, args.seconds, args.seed)


if __name__ == "__main__":
    main()
