"""Import helper for the benchmark scripts.

``python bench/NAME.py`` puts bench/ first on sys.path, where ``bench/sync.py`` would
shadow the ``sync`` package. ``use_repo()`` takes bench/ off the path and puts the
repository root on it; ``load(name)`` imports a sibling benchmark module by file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent


def use_repo() -> None:
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))


def load(name: str) -> ModuleType:
    """The module bench/NAME.py, imported under the name ``bench_NAME``."""
    key = f"bench_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
