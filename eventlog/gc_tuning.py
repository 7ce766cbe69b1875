"""How often Python's cycle collector runs in a node process.

Why: the collector's youngest generation is examined every 700 allocations of
container objects (CPython's default), and receiving or appending an event allocates
dozens (its envelope, body, fold state, rows). A batch of thousands keeps most of them
alive until it commits, so each of those collections walked the same young survivors
again: 17 % of a cold sync's receiving thread, with nothing to free, because the write
path makes no reference cycles (reference counting frees what it drops). Examined every
GENERATION_0 allocations instead, the collector still runs, still finds the cycles of
the libraries around us (asyncio, websockets), and the garbage it can let wait is at
most GENERATION_0 objects: a few megabytes.

Process-wide on purpose: ``Node`` is the composition root of a node process (the
``potluck`` command, ``potluck serve``, the benchmarks), and the test suite runs with
the setting the node runs with.
"""

from __future__ import annotations

import gc

GENERATION_0 = 50_000
"""Container allocations between collections of the youngest generation (CPython: 700)."""


def tune() -> None:
    """Collect the youngest generation every GENERATION_0 allocations; the older
    generations keep their ratios. A process that already collects less often (or has
    the collector off) is left as it is."""
    young, middle, old = gc.get_threshold()
    if 0 < young < GENERATION_0:
        gc.set_threshold(GENERATION_0, middle, old)
