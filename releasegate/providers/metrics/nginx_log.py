"""Per-version requests, 5xx answers and latency through nginx, from the JSON access log releasegate renders.

nginx OSS counts nothing per version, but it knows which version served each request (the bucket map picks the
upstream) and writes one line per finished request into the server block's own log::

    {"rg":1,"svc":"shop","v":"2.0.0","s":502,"t":0.004,"ts":1718000000.123}

(``s`` = ``$status``, so an unreachable backend's 502 is an error as in the built-in router; ``t`` =
``$request_time``, from the first byte of the request to the last byte of the answer, at nginx's millisecond
resolution; ``ts`` = ``$msec``, when the line was written.) ``LogTail`` reads what was appended since its last
read and counts it into the built-in router's 1-second slots (``releasegate.router.stats.VersionStats``), so
every window up to an hour is answered the way the built-in router answers it, from counters, not from stored
lines.

What the tail copes with, because an access log is a file other things happen to:

- it does not exist yet (nginx writes it once the owned file is loaded): no data, and ``explain`` says so;
- a partial last line (nginx is writing it): kept until its newline arrives;
- lines that are not ours (another format, another service sharing the file): skipped and counted;
- rotation (a new file at the path, e.g. ``NginxRouter.rotate_log`` or logrotate): the previous file is still
  read, through the descriptor already open, for as long as nginx keeps appending to it (old workers, or a
  reopen that has not happened yet), then dropped;
- truncation (``copytruncate``): the file got shorter than what was read, so reading starts again at 0;
- a backlog (nobody asked for an hour): at most ``backlog`` bytes from the end are read, the rest is skipped.

Reading runs in a thread: a busy nginx writes thousands of lines per second and an analysis interval may bring
tens of thousands at once; parsing costs about 1 to 5 µs per line, idle to loaded (docs/benchmarks.md), never
on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery
from releasegate.providers.metrics.reasons import ExplainedSource, cannot_measure, no_traffic
from releasegate.providers.metrics.totals import Snapshot
from releasegate.router.stats import SLOTS, VersionStats, VersionTotals, WindowStats, sparse_totals
from releasegate.spec.capabilities import ROUTERS

SUPPORTED = ROUTERS["nginx"]  # the capability table validate checks rules against
LINE = re.compile(rb'^\{"rg":1,"svc":"([^"\n]*)","v":"([^"\n]*)","s":(\d{3}),"t":([0-9.]+),"ts":([0-9.]+)\}$',
                  re.M)
"""One line of the format ``releasegate.providers.routers.nginx`` renders (``log_format rg_<service>``)."""
CHUNK = 1 << 20
IDLE_DROP = 30.0
"""A rotated-away file that has not grown for this long is done (nginx reopened; old workers have exited)."""
MAX_PARTIAL = 64 * 1024
"""A "line" without a newline longer than this is not one of ours: dropped rather than kept growing."""


@dataclass
class _Followed:
    """One file being read: its descriptor, identity, how far it was read, and the unfinished last line."""

    fd: int
    ident: tuple[int, int]
    offset: int
    partial: bytes = b""
    last: bytes = b""  # the last byte read: a file truncated and written again past offset no longer has it
    grew_at: float = 0.0
    skip_first: bool = False  # started mid-file: the first "line" is the tail of one


class LogTail:
    """Follows one access log and keeps per-version 1-second counters for ``service``."""

    def __init__(self, path: Path, service: str, *, clock: Callable[[], float] = time.time,
                 backlog: int = 32 * 1024 * 1024) -> None:
        self.path = path
        self.service = service.encode()
        self.clock = clock
        self.backlog = backlog
        self.versions: dict[str, VersionStats] = {}
        self.since: float | None = None  # from when the counters are complete
        self.lines = 0
        self.skipped = 0  # lines not ours, of another service, or older than the history kept
        self.error: str | None = None
        self._files: list[_Followed] = []  # the file at the path first, then rotated ones still being written
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for f in self._files:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
            self._files.clear()

    def pump(self) -> int:
        """Read and count everything appended since the last call; returns the number of lines counted."""
        with self._lock:
            before = self.lines
            now = self.clock()
            self._follow_path(now)
            for f in list(self._files):
                self._read(f, now)
            self._drop_idle(now)
            if self.since is None and self._files:
                self.since = now
            return self.lines - before

    def windows(self, seconds: float, now: float) -> dict[str, WindowStats]:
        """Every version's statistics over the last ``seconds`` as of ``now``, read under the lock (``pump`` may
        be counting in another thread)."""
        with self._lock:
            since = self.since if self.since is not None else now
            return {name: vs.window(seconds, now, since) for name, vs in self.versions.items()}

    def totals(self, now: float) -> dict[str, VersionTotals]:
        """Each version's counts since the tail started (``releasegate.providers.metrics.totals``)."""
        with self._lock:
            return {name: sparse_totals(*vs.totals(now)) for name, vs in self.versions.items()}

    def size(self) -> int | None:
        """Size of the file at the path, None when there is none."""
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def _follow_path(self, now: float) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.error = None if self._files else (f"nginx has not written its access log {self.path} yet (is the "
                                                   "file releasegate renders loaded, and may nginx write there?)")
            return
        except OSError as exc:
            self.error = f"cannot read the nginx access log {self.path}: {exc.strerror or exc}"
            return
        ident = (st.st_dev, st.st_ino)
        if self._files and self._files[0].ident == ident:
            self.error = None
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.error = f"cannot read the nginx access log {self.path}: {exc.strerror or exc}"
            return
        self.error = None
        st = os.fstat(fd)
        first = not self._files
        start = 0
        if first and st.st_size > self.backlog:
            start = st.st_size - self.backlog
        self._files.insert(0, _Followed(fd, (st.st_dev, st.st_ino), start, grew_at=now, skip_first=start > 0))

    def _read(self, f: _Followed, now: float) -> None:
        try:
            size = os.fstat(f.fd).st_size
        except OSError:
            return
        if size < f.offset or (f.last and size > f.offset and os.pread(f.fd, 1, f.offset - 1) != f.last):
            f.offset, f.partial, f.last, f.skip_first = 0, b"", b"", False  # truncated: everything in it is new
        if size - f.offset > self.backlog:
            f.offset, f.partial, f.skip_first = size - self.backlog, b"", True
            self.since = None  # the skipped part is a gap: the counters are complete only from here on
        while f.offset < size:
            data = os.pread(f.fd, min(CHUNK, size - f.offset), f.offset)
            if not data:
                break
            f.offset += len(data)
            f.last = data[-1:]
            f.grew_at = now
            self._lines(f, data, now)

    def _lines(self, f: _Followed, data: bytes, now: float) -> None:
        data = f.partial + data
        end = data.rfind(b"\n")
        if end < 0:
            f.partial = data if len(data) <= MAX_PARTIAL else b""
            return
        f.partial = data[end + 1:] if len(data) - end - 1 <= MAX_PARTIAL else b""
        start = 0
        if f.skip_first:
            start = data.find(b"\n") + 1
            f.skip_first = False
        self._count(data, start, end, now)

    def _count(self, data: bytes, start: int, end: int, now: float) -> None:
        horizon = now - (SLOTS - 2)
        service = self.service
        versions = self.versions
        counted = 0
        first_ts: float | None = None
        for m in LINE.finditer(data, start, end):
            svc, version, status, took, ts = m.groups()
            if svc != service:
                continue
            at = float(ts)
            if at < horizon:
                continue
            name = version.decode()
            vs = versions.get(name)
            if vs is None:
                vs = versions[name] = VersionStats()
            vs.record(at, float(took), int(status))
            counted += 1
            if first_ts is None:
                first_ts = at
        self.skipped += data.count(b"\n", start, end + 1) - counted
        self.lines += counted
        if first_ts is not None:  # lines older than the first look: the counters reach back to them
            self.since = min(first_ts, now if self.since is None else self.since)

    def _drop_idle(self, now: float) -> None:
        for f in self._files[1:]:
            if now - f.grew_at > IDLE_DROP:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
                self._files.remove(f)


class LogRotator(Protocol):
    async def rotate_log(self) -> bool: ...


class NginxLogMetrics(ExplainedSource):
    """``MetricSource`` over an nginx access log in releasegate's format: the same numbers, and the same
    None-versus-0 rules, as the built-in router's statistics (``RouterMetrics``)."""

    def __init__(self, path: Path, service: str, rotator: LogRotator | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.tail = LogTail(path, service, clock=clock)
        self.rotator = rotator
        self.clock = clock
        self.started = clock()

    async def _query(self, q: MetricQuery) -> tuple[float | None, str | None]:
        if q.metric not in SUPPORTED:
            return None, cannot_measure("nginx", q.metric)
        if q.window <= 0:
            return None, f"an empty window ({q.window:g}s)"
        await asyncio.to_thread(self.tail.pump)
        if self.rotator is not None:
            with contextlib.suppress(ProviderError):  # a failed rotation costs disk, not evidence
                if await self.rotator.rotate_log():
                    await asyncio.to_thread(self.tail.pump)
        if self.tail.error is not None:
            return None, self.tail.error
        now = self.clock()
        vs = self.tail.versions.get(q.version)
        stats = vs.window(q.window, now, self.tail.since if self.tail.since is not None else now) \
            if vs is not None else None
        if stats is None or not stats["requests"]:
            return (0.0, None) if q.metric == "rps" else (None, no_traffic(q.version, q.window))
        value = {"error_rate": stats["error_rate"], "rps": stats["rps"], "latency_p50": stats["latency_p50"],
                 "latency_p95": stats["latency_p95"], "latency_p99": stats["latency_p99"]}[q.metric]
        return (None, no_traffic(q.version, q.window)) if value is None else (float(value), None)

    async def totals(self) -> Snapshot:
        """Each version's counts since the tail started following the log (totals.py); the epoch is the tail's,
        so a new tail (a resumed controller) starts the counts again."""
        await asyncio.to_thread(self.tail.pump)
        if self.tail.error is not None:
            raise ProviderError(self.tail.error)
        return Snapshot(f"nginx-tail:{self.started}", self.tail.totals(self.clock()))

    async def counts(self, window: float, recent: float | None = None) -> dict[str, dict[str, float | None]]:
        """Requests and 5xx answers per version over the last ``window`` seconds, and with ``recent`` each
        version's p95 over the last ``recent`` seconds: ``RouterMetrics.counts``'s contract
        (``releasegate.reports.traffic.TrafficCounter``), from the access log's lines.

        What it covers: the lines the log still holds. The tail reads the file at the path from its start (at
        most its last ``backlog`` bytes) when it first looks, so a rollout's counts reach back to its start even
        though the tail is created with the rollout's providers; lines older than the hour kept are skipped, and
        lines in a file rotated away before the tail first looked (``access_log_max_mb``, logrotate) are not
        read. Requests are counted when nginx logs them, i.e. when they finished. Raises ``ProviderError`` when
        the log cannot be read (nothing is recorded then)."""
        return await asyncio.to_thread(self._counts, window, recent)

    def _counts(self, window: float, recent: float | None) -> dict[str, dict[str, float | None]]:
        """``counts`` in a thread: the pump parses what was appended, and the lock it shares with the windows
        may be held while another thread pumps."""
        self.tail.pump()
        if self.tail.error is not None:
            raise ProviderError(self.tail.error)
        now = self.clock()
        out: dict[str, dict[str, float | None]] = {
            name: {"requests": stats["requests"], "errors": stats["errors"]}
            for name, stats in self.tail.windows(window, now).items()}
        if recent is not None:
            latest = self.tail.windows(recent, now)
            for name, counted in out.items():
                stats = latest.get(name)
                p95 = stats["latency_p95"] if stats is not None and stats["requests"] else None
                counted["p95"] = float(p95) if p95 is not None else None
        return out
