"""Smoke tests that are commands: the team's own suite (``pytest tests/smoke --base-url {url}``,
``npm run test:smoke:production -- --base-url={url}``) run against one new instance before any user traffic.

The command runs under ``/bin/sh`` in a process group of its own, as an asyncio subprocess so the controller keeps
serving operator commands meanwhile. On timeout the whole group is killed (a test runner's workers too), and
whatever the command left running in its group when it ended is killed as well: a smoke test must not leave
processes behind on a production host. Only the end of the output is kept, because that is where test runners
print their verdict, and a 5-minute suite can print megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from releasegate.providers.base import Instance
from releasegate.spec.checks import SMOKE_COMMAND_TIMEOUT, SmokeTest
from releasegate.spec.placeholders import substitute_text

TAIL_LINES = 20
TAIL_BYTES = 4096
REASON_LINES = 3
_TERM_GRACE = 2.0
_DRAIN = 2.0


def placeholders(instance: Instance) -> dict[str, object]:
    """What ``{url}``, ``{host}``, ``{port}``, ``{version}`` and ``{service}`` stand for, for one instance."""
    return {"url": f"http://{instance.address}", "host": instance.host, "port": instance.port,
            "version": instance.version, "service": instance.service}


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int | None  # None: killed after the timeout
    timed_out: bool
    seconds: float
    output: str  # the last TAIL_LINES lines, at most TAIL_BYTES

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def last_lines(self, n: int = REASON_LINES) -> str:
        kept = [line.strip() for line in self.output.splitlines() if line.strip()][-n:]
        return " | ".join(kept)


class _Tail:
    """The last lines of a stream, bounded in lines and bytes, whatever the stream's size."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        for line in complete:
            self.lines.append(line[-TAIL_BYTES:].decode("utf-8", "replace").rstrip("\r"))
        self.partial = self.partial[-TAIL_BYTES:]

    def text(self) -> str:
        lines = list(self.lines)
        if self.partial:
            lines.append(self.partial.decode("utf-8", "replace"))
        out = "\n".join(lines[-TAIL_LINES:])
        return out if len(out) <= TAIL_BYTES else "…" + out[-TAIL_BYTES:]


async def _pump(stream: asyncio.StreamReader, tail: _Tail) -> None:
    while chunk := await stream.read(65536):
        tail.feed(chunk)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal every process in the group; False when none is left. The group id cannot be reused while any
    member lives, so this never reaches an unrelated process."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, give it a moment, then SIGKILL whatever is left."""
    if _signal_group(proc.pid, signal.SIGTERM):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _TERM_GRACE)
    _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def run_command(test: SmokeTest, instance: Instance, spec_dir: Path) -> CommandResult:
    """Run one smoke command against ``instance``; never raises for what the command does."""
    assert test.command is not None
    values = placeholders(instance)
    command = substitute_text(test.command, values)
    cwd = spec_dir / substitute_text(test.cwd, values) if test.cwd else spec_dir
    env = {**os.environ, **{k: substitute_text(v, values) for k, v in test.env.items()},
           "RELEASEGATE_URL": str(values["url"]), "RELEASEGATE_HOST": instance.host,
           "RELEASEGATE_PORT": str(instance.port), "RELEASEGATE_VERSION": instance.version,
           "RELEASEGATE_SERVICE": instance.service}
    limit = test.timeout if test.timeout is not None else SMOKE_COMMAND_TIMEOUT
    started = time.monotonic()
    tail = _Tail()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return CommandResult(command, None, False, 0.0, f"could not start the command in {cwd}: {exc}")
    assert proc.stdout is not None
    reader = asyncio.create_task(_pump(proc.stdout, tail))
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            timed_out = True
            await _stop_group(proc)
    finally:
        if proc.returncode is None:  # cancelled (the controller is stopping): take the group down with us
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # what the command left running in its group
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), _DRAIN)  # a process outside the group may hold the pipe
        reader.cancel()
    code = None if timed_out else proc.returncode
    return CommandResult(command, code, timed_out, time.monotonic() - started, tail.text())
