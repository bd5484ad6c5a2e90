"""Polling with a deadline: the only way tests wait for something (never a blind sleep)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any


async def eventually(predicate: Callable[[], Any], within: float = 10.0, what: str = "condition",
                     every: float = 0.05) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that; fail after
    ``within`` seconds naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"timed out after {within} s waiting for {what}"
        await asyncio.sleep(every)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               every: float = 0.01) -> Any:
    """The synchronous twin of ``eventually``, for helpers that manage processes outside an event loop."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
