"""Crash points, the long run: SIGKILL a node at seeded random moments while it appends,
while it receives a sync, and while it updates projections, and check it after each kill.

The worker and the checks are tests/crash_worker.py (its docstring lists them); the test
suite runs 8 kills per activity (tests/test_crash_points.py), this script 50 or more.
Each activity works on its own data directory, kill after kill; a receive worker that has
stored the whole history it was given (6,000 events of four members) starts over on a
fresh directory. Kills land:
15% at a random moment up to 0.4 s after the worker started (often while the node opens:
WAL recovery, projection setup), the rest after its first acknowledgement plus a random
delay of up to ``--max-delay`` seconds.

Usage::

    python bench/crash.py [--seed 1] [--kills 50] [--activity append --activity ...]
                          [--max-delay 0.6] [--keep DIR]

Prints one ``NAME: VALUE UNIT`` line per figure and activity: kills, where they landed,
recoveries ok (every check passed), operations acknowledged, acknowledged events lost
(must be 0), events re-sent by the next sync that the log already had (must be 0), the
time the node took to open after a kill, and the time the checks took. Exit status 1 if
any check failed; the failures are printed to stderr. The same seed gives the same
kill schedule and the same work (the moments differ by the machine's speed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path

_path.use_repo()
sys.path.insert(0, str(_path.BENCH.parent / "tests"))

import crash_worker  # noqa: E402

ACTIVITIES = ("append", "receive", "project")
SIZES = crash_worker.Sizes(receive_events=6000)
"""A receive worker rarely runs out of events to store (idle kills prove little)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill schedule")
    parser.add_argument("--kills", type=int, default=50, help="kills per activity")
    parser.add_argument(
        "--activity",
        action="append",
        choices=ACTIVITIES,
        help="only this activity (repeatable; default: all three)",
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=0.6,
        help="most seconds after the first acknowledgement before a kill",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="work in this directory and keep it (default: a temporary one)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="potluck-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    failed = False
    started = time.perf_counter()
    try:
        for activity in args.activity or ACTIVITIES:
            outcome = crash_worker.run_activity(
                activity,
                root,
                args.seed,
                args.kills,
                sizes=SIZES,
                max_delay=args.max_delay,
                progress=not args.quiet,
            )
            for line in outcome.figures():
                print(line, flush=True)
            for failure in outcome.failures:
                failed = True
                print(f"FAILED {activity}: {failure}", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"seed: {args.seed}")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
