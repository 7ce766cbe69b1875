"""Network faults, the long run: nodes writing through 10 % loss, 200 ± 50 ms delay and
links cut and restored on a seeded schedule, then the time to one log after the faults.

The scenario is tests/netns.py ``run_faults`` (its docstring says how each fault is
made, with netem or, on kernels without ``sch_netem``, nftables and a delaying relay);
tests/test_network_faults.py runs it for 24 s with cuts of 2–6 s. Here the window is
longer and cuts last up to ``--cut-max`` seconds, beyond websockets' keepalive (a ping
every 20 s, 20 s to answer), so sessions die and are dialed again, with backoff.

Usage (as root)::

    python bench/netfault.py [--nodes 5] [--seconds 120] [--seed 1] [--writes 60]
                             [--cut-max 45] [--bound 180] [--mode auto|netem|relay]
                             [--keep DIR]

Prints one ``NAME: VALUE UNIT`` line per figure: events written, loss configured and
measured, delay configured and measured (relay), cuts and the time links were down,
events missing when the faults stopped, the time from then until every node held every
event, and whether the digests are equal. Exit status 1 when they did not converge.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()
sys.path.insert(0, str(_path.BENCH.parent / "tests"))

from netns import FaultPlan, fault_mode, run_faults  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=120.0, help="the fault window")
    parser.add_argument("--seed", type=int, default=1, help="seed of cuts, writes, jitter")
    parser.add_argument(
        "--writes",
        type=int,
        default=None,
        help="potluck commands per node (default: one per 2 s of window)",
    )
    parser.add_argument("--loss", type=int, default=10, help="percent of packets lost")
    parser.add_argument("--delay", type=int, default=200, help="ms, each way")
    parser.add_argument("--jitter", type=int, default=50, help="± ms around --delay")
    parser.add_argument("--cut-min", type=float, default=2.0, help="shortest cut, s")
    parser.add_argument("--cut-max", type=float, default=45.0, help="longest cut, s")
    parser.add_argument(
        "--bound", type=float, default=180.0, help="give up this many seconds after the faults stop"
    )
    parser.add_argument("--mode", choices=("auto", "netem", "relay"), default="auto")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep data dirs and serve logs here (default: a temporary dir)",
    )
    args = parser.parse_args(argv)
    plan = FaultPlan(
        nodes=args.nodes,
        seconds=args.seconds,
        writes=args.writes or max(1, int(args.seconds // 2)),
        loss_percent=args.loss,
        delay_ms=args.delay,
        jitter_ms=args.jitter,
        cut_seconds=(args.cut_min, args.cut_max),
        cut_gap=(args.seconds / 40, args.seconds / 10),
        bound=args.bound,
        seed=args.seed,
        mode=args.mode,
    )
    mode, why = fault_mode(plan)
    if mode is None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="potluck-netfault-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run_faults(work, plan, say=lambda line: print(line, file=sys.stderr))

    equal = report.converged_s is not None and len(set(report.digests)) == 1
    print(f"mode: {report.mode} ({why})")
    print(f"nodes: {plan.nodes}")
    print(f"seed: {plan.seed}")
    print(f"fault window: {report.window_s:.1f} s")
    print(f"events written: {report.written} events")
    print(f"write failures: {len(report.failed_writes)}")
    print(f"loss configured: {plan.loss_percent} %")
    print(
        f"loss measured: {report.loss_measured:.1f} % ({report.packets_dropped:,} of "
        f"{report.packets_sent:,} packets)"
    )
    print(f"delay configured: {plan.delay_ms} ± {plan.jitter_ms} ms")
    if report.delay:
        print(
            f"delay measured: {report.delay['mean_ms']} ms mean, "
            f"{report.delay['min_ms']}–{report.delay['max_ms']} ms "
            f"({report.delay['chunks']:,} chunks)"
        )
        print(
            f"relayed connections: {report.delay['connections']} "
            f"({report.delay['refused']} could not reach a cut node)"
        )
    longest = max((c.seconds for c in report.cuts), default=0.0)
    print(f"cuts: {len(report.cuts)}")
    print(f"links down: {report.cut_total_s:.1f} s (sum; longest cut {longest:.1f} s)")
    print(
        f"events missing when the faults stopped: {sum(report.missing_at_stop)} events "
        f"(most on one node: {max(report.missing_at_stop, default=0)})"
    )
    converged = (
        f"{report.converged_s:.2f} s"
        if report.converged_s is not None
        else f"not within {plan.bound:.0f} s (behind: {report.stragglers})"
    )
    print(f"faults removed in: {report.removed_s:.2f} s (links up, loss and delay off)")
    print(f"convergence time: {converged} (from the start of the removal)")
    print(
        f"events per node: {' '.join(map(str, report.counts))} (expected {report.expected_events})"
    )
    print(f"digest equal: {'yes' if equal else 'no'}")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    for failure in report.failed_writes:
        print(f"FAILED write: {failure}", file=sys.stderr)
    return 0 if equal and not report.failed_writes else 1


if __name__ == "__main__":
    sys.exit(main())
