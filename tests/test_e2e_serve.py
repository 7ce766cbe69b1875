"""End to end with the real command: three `potluck serve` processes on 127.0.0.1.

The story of the sync issue: Ana, Bo and Cy run nodes; Cy is offline while Ana and Bo
trade; Ana's offer of 10 cans gets claimed 6 on each side while Ana and Bo are apart;
when everyone reconnects, all three boards show the over-claim and the same digest.
Then Di joins with `potluck invite` / `potluck init --join` and catches up.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import POTLUCK, potluck, potluck_env, until

DEADLINE = 30.0
POLL = 0.3  # seconds between polls: each one runs potluck processes


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


class Server:
    """A `potluck serve` subprocess; knows its port from its 'listening on' line."""

    def __init__(self, data_dir: Path, *peers: str) -> None:
        args = [
            *POTLUCK,
            "--data-dir",
            str(data_dir),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-ui",
        ]
        for peer in peers:
            args += ["--peer", peer]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=potluck_env()
        )
        self.lines: list[str] = []
        self.address = self._wait_for(r"listening on (\S+)")

    def _wait_for(self, pattern: str) -> str:
        assert self.proc.stdout is not None
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            match = re.search(pattern, line)
            if match:
                return match.group(1)
        raise AssertionError(f"no '{pattern}' from serve: {self.lines}")

    def stop(self) -> None:
        """Ctrl-C, as a person would; serve must stop cleanly by itself."""
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"serve did not stop on Ctrl-C: {self.lines}") from None
        self.lines += out.splitlines()
        assert self.proc.returncode == 0, self.lines
        assert "stopped" in self.lines[-1]


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    running: list[Server] = []
    yield running
    for server in running:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def board(data_dir: Path) -> dict[str, list[dict[str, object]]]:
    data: dict[str, list[dict[str, object]]] = json.loads(
        potluck(data_dir, "board", "--json").stdout
    )
    return data


def digest(data_dir: Path) -> str:
    return last_line(potluck(data_dir, "digest").stdout)


async def test_three_nodes_apart_over_claim_then_agree_and_a_fourth_joins(
    tmp_path: Path, servers: list[Server]
) -> None:
    ana, bo, cy, di = (tmp_path / n for n in ("ana", "bo", "cy", "di"))
    potluck(ana, "init", "--name", "Ana", "--new-group", "Eastside Mutual Aid")
    code = last_line(potluck(ana, "invite", "--address", "127.0.0.1:9").stdout)
    potluck(bo, "init", "--name", "Bo", "--join", code)
    potluck(cy, "init", "--name", "Cy", "--join", code)

    # Ana and Bo online together; Cy offline.
    servers.append(a := Server(ana))
    servers.append(b := Server(bo, a.address))
    offer = last_line(potluck(ana, "offer", "post", "Canned beans", "--quantity", "10").stdout)
    await until(
        lambda: any(o["id"] == offer for o in board(bo)["offers"]),
        what="Ana's offer to reach Bo live",
        timeout=DEADLINE,
        step=POLL,
    )

    # The Wi-Fi goes: Bo's node stops. Each promises 6 of the 10 cans.
    b.stop()
    potluck(ana, "claim", "make", offer[:8], "--quantity", "6")
    potluck(bo, "claim", "make", offer[:8], "--quantity", "6")
    assert board(ana)["offers"][0]["claimed"] == 6
    assert board(bo)["offers"][0]["claimed"] == 6

    # Everyone reconnects: Bo and Cy dial Ana.
    servers.append(Server(bo, a.address))
    servers.append(Server(cy, a.address))
    nodes = (ana, bo, cy)

    def agreed() -> bool:
        return len({digest(n) for n in nodes}) == 1 and board(cy)["offers"] != []

    await until(agreed, what="all three nodes to reach one digest", timeout=DEADLINE, step=POLL)
    for node in nodes:
        [entry] = board(node)["offers"]
        assert entry["claimed"] == 12 and entry["remaining"] == -2
        assert "over-claimed" in entry["flags"]  # type: ignore[operator]
        claims = entry["claims"]
        assert isinstance(claims, list) and len(claims) == 2
        assert sum("needs-decision" in c["flags"] for c in claims) == 2

    # Di joins with a fresh invite pointing at Ana's running node, and catches up.
    code = last_line(potluck(ana, "invite", "--address", a.address).stdout)
    potluck(di, "init", "--name", "Di", "--join", code)
    report = json.loads(potluck(di, "sync", a.address, "--json").stdout)
    assert report["received"] >= 5
    await until(
        lambda: len({digest(n) for n in (*nodes, di)}) == 1,
        what="Di to reach the same digest",
        timeout=DEADLINE,
        step=POLL,
    )
    peers = json.loads(potluck(di, "peers", "--json").stdout)["peers"]
    assert [p["found"] for p in peers] == ["invite"]
