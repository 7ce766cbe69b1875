"""The store (eventlog/store.py) on a real SQLite file passes the SyncLog suite."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conformance_sync_log import LogFactory, SyncLogConformance

from eventlog.identity import Group
from eventlog.store import Store
from sync.log import SyncLog


class TestStore(SyncLogConformance):
    @pytest.fixture
    def log_factory(self, tmp_path: Path) -> LogFactory:
        numbers = itertools.count(1)

        @asynccontextmanager
        async def open_store(group: Group) -> AsyncIterator[SyncLog]:
            store = await Store.open(tmp_path / f"log-{next(numbers)}.db", group)
            try:
                yield store
            finally:
                await store.close()

        return open_store
