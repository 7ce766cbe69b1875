"""The runner: keeps every projection's tables equal to a fold of the log.

A package along its seams, behind the names ``projections.runner`` has always offered:

- engine.py: the fold engine, ``Runner`` (batches, re-folds, rebuild, the checkpoint
  and the backlog a process folding behind the log takes);
- layout.py: the runner's own tables, their versions and migrations (setup, ready,
  stale), the checkpoint and fork mark in ``proj_meta``;
- state.py: fold states, rows, entity numbers and the index, as stored in SQLite;
- source.py: the events folds are given, parsed, and the log read back through
  eventlog/log_reads.py;
- causality.py: ``LogCausality``, from what each author had seen.
"""

from __future__ import annotations

from projections.runner.causality import LogCausality
from projections.runner.engine import (
    LIVE_CACHE_LIMIT,
    REBUILD_CHUNK,
    STATE_CACHE_LIMIT,
    Runner,
)
from projections.runner.layout import (
    CHECKPOINT_KEY,
    ENTITY_COLUMN,
    FORKS_KEY,
    INDEX_BUCKET,
    LAYOUT,
    LAYOUT_KEY,
    all_projections,
    folded_through,
    forks_mark,
    name_key,
)
from projections.runner.source import (
    RECENT_EVENTS,
    Backlog,
    _unpack_event,
    stored_event,
    to_event,
)
from projections.runner.state import NUMBER_OF, number_of

__all__ = [
    "CHECKPOINT_KEY",
    "ENTITY_COLUMN",
    "FORKS_KEY",
    "INDEX_BUCKET",
    "LAYOUT",
    "LAYOUT_KEY",
    "LIVE_CACHE_LIMIT",
    "NUMBER_OF",
    "REBUILD_CHUNK",
    "RECENT_EVENTS",
    "STATE_CACHE_LIMIT",
    "Backlog",
    "LogCausality",
    "Runner",
    "_unpack_event",  # tests/test_runner_cache.py reads stored events as folds do
    "all_projections",
    "folded_through",
    "forks_mark",
    "name_key",
    "number_of",
    "stored_event",
    "to_event",
]
