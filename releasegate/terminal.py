"""Output that may go away: a closed pipe (``deploy ... | head -2``) or a closed terminal never stops a command.

A rollout's controller prints its progress from inside its loop, so an exception from a print would end the
controller and leave a canary at its weight with nobody analysing it. ``main`` therefore wraps stdout and stderr:
the first write that fails (EPIPE once the reader is gone, EIO from a hung-up terminal, or any other error of the
output) points that file descriptor at /dev/null and the command goes on without printing. Read-only commands
finish quietly and exit 0 (the reader chose to stop reading); a deploy drives its rollout to the end and exits
with the rollout's code. Events and the audit log are written to the store as always, so ``status`` and
``history`` follow what was no longer printed.

A foreground deploy also survives its terminal closing (SIGHUP): ``keep_driving`` makes SIGHUP drop the output
that went to that terminal (output redirected to a file keeps flowing) instead of ending the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any, TextIO


class GuardedStream:
    """A text stream whose write and flush never raise: once the output fails it is dropped for good."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = name
        self.lost: str | None = None  # why the output was dropped
        self.on_lost: Any = None  # called once with the reason (e.g. to say so on stderr)

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self.drop(exc.strerror or type(exc).__name__)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self.drop(exc.strerror or type(exc).__name__)

    def drop(self, why: str) -> None:
        """Send everything still buffered, and all that follows, to /dev/null (the buffered text is flushed there
        at exit instead of raising again)."""
        if self.lost is not None:
            return
        self.lost = why
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        if self.on_lost is not None:
            self.on_lost(f"{self._name} is gone ({why})")

    def isatty(self) -> bool:
        return self.lost is None and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_std_streams() -> tuple[GuardedStream, GuardedStream]:
    """Wrap sys.stdout and sys.stderr (once); rich and click write through whatever sys.stdout is."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, GuardedStream):
            setattr(sys, name, GuardedStream(current, name))
    out, err = sys.stdout, sys.stderr
    assert isinstance(out, GuardedStream) and isinstance(err, GuardedStream)
    return out, err


def announce_lost_output(message: str) -> None:
    """While a rollout is driven: say once on stderr (if it still works) that stdout went away and why the
    command keeps running."""
    out = sys.stdout
    if not isinstance(out, GuardedStream):
        return

    def said(why: str) -> None:
        err = sys.stderr
        err.write(f"releasegate: {why}; {message}\n")
        err.flush()

    out.on_lost = said


def _hangup(signum: int, frame: FrameType | None) -> None:
    """The terminal closed: drop the output that went to it; output redirected elsewhere keeps flowing."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, GuardedStream):
            try:
                tty = os.isatty(stream.fileno())
            except (OSError, ValueError):
                tty = False
            if tty:
                stream.on_lost = None  # nobody is left to read a note
                stream.drop("its terminal closed (SIGHUP)")


def keep_driving() -> None:
    """A command that drives a rollout outlives its terminal: SIGHUP no longer ends it (Ctrl-C and SIGTERM do)."""
    with contextlib.suppress(ValueError, OSError, AttributeError):  # not the main thread, or no SIGHUP here
        signal.signal(signal.SIGHUP, _hangup)
