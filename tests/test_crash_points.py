"""SIGKILL at seeded random moments while appending, receiving a sync and updating
projections: nothing acknowledged is lost and the node reopens consistent.

The fast part of the crash-point harness in tests/crash_worker.py (8 kills per activity;
``python bench/crash.py`` runs 50 or more each). After every kill: integrity_check ok,
every chain verifies, heads agree with the log, projections equal a rebuild (in a
rolled-back transaction, and in a copy of the file), every acknowledged event present,
and the vector covers the log so the next sync sends nothing the node already has.

The three activities run at the same time, each on its own data directory: most of a
kill's time is waiting (a worker's start-up, the random delay, fsync), so this keeps the
test near 30 s instead of 50 on two cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import crash_worker

KILLS = 8
SEED = 20_261_127
SIZES = crash_worker.Sizes(receive_events=6000, project_events=700, late_events=400)
"""Enough that the worker is still storing when a kill lands: 900 events were all
stored before half the kills once the receive path got faster."""
ACTIVITIES = ("append", "receive", "project")


def test_kills_at_random_moments_lose_nothing_acknowledged_and_leave_a_consistent_node(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(len(ACTIVITIES)) as pool:
        futures = {
            activity: pool.submit(
                crash_worker.run_activity,
                activity,
                tmp_path,
                SEED,
                KILLS,
                sizes=SIZES,
                max_delay=0.4,
            )
            for activity in ACTIVITIES
        }
        outcomes = {activity: future.result() for activity, future in futures.items()}
    for activity, outcome in outcomes.items():
        assert outcome.failures == [], activity
        assert outcome.kills == outcome.recoveries_ok == KILLS, activity
        assert outcome.lost == 0 and outcome.resent == 0, activity
        assert outcome.acknowledged > KILLS, activity
        # most kills hit an operation half done, not the gaps between them
        assert outcome.in_flight >= KILLS // 2, (activity, outcome.landed)
