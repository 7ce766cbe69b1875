"""Causality between events, from what each author had seen when writing (their deps),
as the log records it; the folds ask through ``projections.fold.Causality``."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from eventlog.log_reads import known_of


class LogCausality:
    """``Causality`` from the store's ``seen`` table: deps give each author's knowledge.

    Answers are remembered as spans: what ``author`` knew of ``other`` holds from one
    ``seen`` row up to the next, and a batch asks about one author's consecutive events
    many times (every delta against the same count), so most questions need no query.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._spans: dict[tuple[object, object], tuple[int, int, int]] = {}

    def happened_before(self, earlier: Sequence[object], later: Sequence[object]) -> bool:
        _, e_author, e_seq = earlier
        _, l_author, l_seq = later
        assert isinstance(e_seq, int) and isinstance(l_seq, int)
        if e_author == l_author:
            return e_seq < l_seq
        return self._known(l_author, e_author, l_seq) >= e_seq

    def _known(self, author: object, other: object, seq: int) -> int:
        """The highest seq of ``other`` that ``author`` had seen when writing ``seq``."""
        span = self._spans.get((author, other))
        if span is not None and span[0] <= seq < span[1]:
            return span[2]
        span = known_of(self._db, author, other, seq)
        self._spans[(author, other)] = span
        return span[2]
