"""What many test files share: the real ``potluck`` command in a subprocess, the one way
to make a deterministic device key, and the one way to wait for a condition.

Plain functions in a module (not fixtures) so test files, helper modules and the
scripts tests start in subprocesses (``crash_worker.py``, ``netns.py``) import them alike.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
POTLUCK = [sys.executable, "-c", "from node.cli import main; main()"]
TIMEOUT = 60.0  # seconds for one command; a hang fails the test instead of the suite
STEP = 0.02  # seconds between two polls of a condition


def potluck_env(**extra: str) -> dict[str, str]:
    """This process's environment for a ``potluck`` child: without POTLUCK_HOME (so only
    ``--data-dir`` or the test's own ``extra`` choose the node), with this checkout on
    PYTHONPATH, unbuffered so a server's status lines arrive as they are printed."""
    env = {k: v for k, v in os.environ.items() if k != "POTLUCK_HOME"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # progress lines (stderr, after 2 s) only where a test asks for them: on a loaded
    # machine a plain open could take 2 s and break a test that wants stderr empty
    env.setdefault("POTLUCK_PROGRESS_AFTER", "600")
    env.update(extra)
    return env


def potluck(
    data_dir: Path | None,
    *args: str,
    ok: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``potluck [--data-dir DATA_DIR] ARGS`` as a person would.

    With ``ok`` (the default) it must succeed quietly: exit 0, nothing on stderr. Pass
    ``ok=False`` to look at a failure's exit code and words yourself.
    """
    command = [*POTLUCK, *(["--data-dir", str(data_dir)] if data_dir else []), *args]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else potluck_env(),
        check=False,
    )
    if ok:
        assert proc.returncode == 0, f"potluck {' '.join(args)}: {proc.stderr}"
        assert proc.stderr == "", f"potluck {' '.join(args)} wrote to stderr: {proc.stderr}"
    return proc


def make_key(n: int) -> SigningKey:
    """A deterministic device key, distinct for each ``n`` in 0..65535."""
    return SigningKey(bytes([n % 256]) * 31 + bytes([n // 256]))


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    timeout: float = 10.0,
    step: float = STEP,
) -> float:
    """Poll ``condition`` (plain or async) until it is true; return the seconds it took.

    Fails naming ``what`` after ``timeout`` seconds, so a broken test says what never
    happened instead of hanging or asserting too early after a fixed sleep.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, max(timeout, step))
        if result:
            return loop.time() - began
        if loop.time() - began > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(step)
