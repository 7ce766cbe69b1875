"""A bad network between five nodes: loss, delay with jitter, and links cut and restored
while every node writes; once the faults stop, all five hold one log.

Five real ``potluck serve`` processes, each in its own network namespace (10.78.0.N/24 on
an ``eth0`` veth, a bridge in a "switch" namespace; tests/netns.py), every one dialing
the other four, with ``--no-discovery``. For 24 seconds:

- 10 % of the packets each node sends are lost;
- every byte is delayed 200 ms ± 50 ms each way;
- links are cut (``ip link set port-X down`` on the switch) and restored on a seeded
  schedule: six cuts of up to 6 s, the last lasting until the faults stop, so that
  they stop with a node behind (asserted: otherwise nothing is left to converge);
- a writer per node runs 30 ``potluck`` commands against its data directory, through
  the CLI's entry point in one process per node (offers, needs, stock adjustments and
  counts of one shared item, claims on other nodes' offers).

Then the links come up, the loss and delay go, and within ``BOUND`` seconds every node
must hold every acknowledged write (same heads, same count), with one ``potluck digest``.
The time to converge is printed (``pytest -s``) and quoted in docs/reliability.md.

With ``sch_netem`` the faults are one netem qdisc per node (loss 10 %, delay 200 ms
50 ms, reorder 25 % 50 %, duplicate 5 %). Kernels without it, like CI's, use nftables
(``numgen random`` drops on each node's output) and a TCP relay in the switch namespace
through which nodes dial each other, holding every chunk 200 ± 50 ms, in order. Packet
reordering and duplication need netem; TCP hides both from the application, which sees
the same thing as through the relay: bytes in order, late by a varying amount.

Needs root, iproute2, and netem or nftables; skips naming what is missing. Namespaces
and processes are removed even when the test fails. The long form: bench/netfault.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from netns import FaultPlan, fault_mode, run_faults

# Seconds from "faults off" to one log everywhere; measured 0.6-1.6 s. Worst case: every
# session of a node dead and every dial loop to and from it asleep in backoff
# (sync/peers.py: 1 s doubling, x 0.5-1.5); the longest sleep a loop can start within a
# 24 s window is 32 s x 1.5 = 48 s (the sleeps before it add up to at least 15.5 s).
BOUND = 60.0
PLAN = FaultPlan(nodes=5, seconds=24.0, writes=30, bound=BOUND, seed=6)


def test_five_nodes_writing_through_loss_delay_and_cuts_converge(tmp_path: Path) -> None:
    mode, why = fault_mode(PLAN)
    if mode is None:
        pytest.skip(why)
    report = run_faults(tmp_path, PLAN)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert report.prefix not in left, f"namespaces left behind: {left}"

    delay = (
        f"{report.delay['mean_ms']} ms mean ({report.delay['min_ms']}–"
        f"{report.delay['max_ms']}) over {report.delay['chunks']} chunks"
        if report.delay
        else "netem"
    )
    converged = f"{report.converged_s:.2f} s" if report.converged_s is not None else "never"
    print(
        f"\n{report.mode}: {report.written} writes in {report.window_s:.1f} s of faults "
        f"(the last {report.last_write_s:.1f} s in); "
        f"loss {report.loss_measured:.1f} % of {report.packets_sent} packets; delay "
        f"{delay}; {len(report.cuts)} cuts, {report.cut_total_s:.1f} s of links down"
        f"\nevents missing per node when the faults stopped: {report.missing_at_stop}; "
        f"same log on all {PLAN.nodes} after {converged}; digests read back at "
        f"{report.confirmed_s:.1f} s"
    )
    # Every local write is acknowledged whatever the network does.
    assert report.failed_writes == []
    assert report.written == PLAN.nodes * PLAN.writes
    # The faults were there: loss near its rate, links cut, every chunk held.
    assert 5.0 < report.loss_measured < 15.0, report.packets_sent
    assert len(report.cuts) >= 5
    # The last cut lasts until the faults stop: there is something left to converge.
    assert sum(report.missing_at_stop) > 0
    if mode == "relay":
        held = report.delay
        assert held["chunks"] > 100
        assert held["min_ms"] >= PLAN.delay_ms - PLAN.jitter_ms - 1
        assert held["mean_ms"] >= PLAN.delay_ms - 10
    # And once they stopped, one log and one digest, within the bound.
    assert report.converged_s is not None, f"not within {BOUND} s: {report.stragglers}"
    assert report.counts == [report.expected_events] * PLAN.nodes
    assert len(set(report.digests)) == 1, report.digests
