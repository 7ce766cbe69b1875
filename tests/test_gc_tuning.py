"""The cycle collector's threshold in a node process (eventlog/gc_tuning.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventlog import gc_tuning
from eventlog.identity import Group
from node.app import Node


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    """CPython's defaults for the test, and the process's own thresholds after it."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_tune_makes_the_youngest_generation_wait_longer(default_thresholds: None) -> None:
    gc_tuning.tune()
    assert gc.get_threshold() == (gc_tuning.GENERATION_0, 10, 10)


def test_tune_leaves_a_process_that_collects_less_often_alone(default_thresholds: None) -> None:
    gc.set_threshold(gc_tuning.GENERATION_0 * 2, 5, 7)
    gc_tuning.tune()
    assert gc.get_threshold() == (gc_tuning.GENERATION_0 * 2, 5, 7)
    gc.set_threshold(0, 10, 10)  # a threshold of 0 turns automatic collection off
    gc_tuning.tune()
    assert gc.get_threshold() == (0, 10, 10)


def test_the_collector_still_frees_cycles_after_tune(default_thresholds: None) -> None:
    gc_tuning.tune()
    runs: list[str] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            runs.append(phase)

    class Node:
        """A container in a reference cycle: only the collector can free it."""

        def __init__(self) -> None:
            self.me = self

    first = Node()
    gone = weakref.ref(first)
    del first
    gc.callbacks.append(record)
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        for _ in range(3 * gc_tuning.GENERATION_0):
            cycle: list[object] = []
            cycle.append(cycle)
        del cycle
    finally:
        gc.callbacks.remove(record)
        if not was_enabled:
            gc.disable()
    assert runs, "no collection ran in 3 x GENERATION_0 allocations"
    assert gone() is None, "a cycle survived 3 x GENERATION_0 allocations"


async def test_a_node_process_is_tuned_when_a_node_opens(
    tmp_path: Path, default_thresholds: None
) -> None:
    node = await Node.init(tmp_path / "node", "Ana", Group.new("Street pantry"))
    try:
        assert gc.get_threshold()[0] == gc_tuning.GENERATION_0
    finally:
        await node.close()
