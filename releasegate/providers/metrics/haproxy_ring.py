"""Per-version latency through HAProxy: a reader that follows the service's ring over the stats socket.

The configuration releasegate renders logs one line per request into a ring (``haproxy_config``); this reader
holds one runtime API session on ``set timeout cli 3600; show events <ring> -w`` and counts each line into the
built-in router's 1-second slots (``releasegate.router.stats.VersionStats``, read-only reuse, as the nginx log
tail does), so p50/p95/p99 over any window up to an hour are answered from counters, not stored lines.

Why a thread that follows the ring rather than a read at each query: a ring is a fixed-size buffer, and a busy
HAProxy overwrites it in seconds; a reader attached to it sees every line as it is written. Parsing costs a few
µs per line, so it happens off the event loop. The thread is started when the providers are built (before the
first traffic moves) and stopped with them (``close``).

What it copes with:

- HAProxy not answering (not started yet, restarted): the reason is kept for ``explain``; it connects again every
  ``RETRY`` seconds.
- no such ring (a configuration the operator owns, or one not reloaded since releasegate rendered it):
  ``error`` quotes the lines to add (``missing_ring``), and the reader keeps looking every ``RETRY`` seconds.
- a reload: the new process has a new, empty ring, while an open ``-w`` session would keep the old process alive.
  So every ``CHECK`` seconds a ``show info`` on a new connection compares the pid; a different one closes the
  session (letting the old process exit) and follows the new process's ring.
- the session closing (CLI timeout, a lost connection): on reconnecting, the ring is read again from its start,
  and lines up to the last one already counted (by timestamp, then process and request number) are skipped.
  Lines older than the reader itself are never counted: a slot may have served another version then.
- lines that are not ours (other frontends sharing the ring, HAProxy's own notices): skipped and counted; a
  ring with lines but none in our format means the frontend lacks the log-format, and ``error`` says so.
- slots: a line names a server slot; the router's state file says which version a slot serves. It is read
  again whenever it changes (an atomic replace), and a slot that left the routes (draining) keeps the version
  it last had, so its last requests still count for it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable

from releasegate.providers.routers.haproxy_config import ring_listed
from releasegate.router.stats import SLOTS, VersionStats, VersionTotals, WindowStats, sparse_totals

LINE = re.compile(rb"(?:^| )rg1 ([^ \n]+) ([^ \n]+) (-?\d+) (-?\d+) (\d+) (\d+) (\d+)$", re.M)
"""``LOG_FORMAT``'s fields at the end of a line (alone, or after an operator's own fields)."""
CHECK = 2.0
"""Seconds between the checks that HAProxy was not reloaded under the session."""
RETRY = 1.0
"""Seconds between attempts to connect (HAProxy down, no ring yet)."""
TIMEOUT = 5.0


class HaproxyAnswer(Exception):
    """HAProxy answered something other than the stream (e.g. no such ring); the text is for the operator."""


def command(path: str, cmd: str, timeout: float = TIMEOUT) -> str:
    """One runtime API command on its own connection, synchronously (the reader's thread)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(cmd.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def pid_of(path: str) -> int | None:
    for line in command(path, "show info").splitlines():
        if line.startswith("Pid:"):
            return int(line.split(":", 1)[1])
    return None


class RingReader:
    """Follows ``ring`` on the stats socket at ``path`` and keeps per-version 1-second counters of ``backend``'s
    requests; ``slots()`` maps server slots to versions, ``stamp()`` changes when that mapping may have."""

    def __init__(self, path: str, ring: str, backend: str, slots: Callable[[], dict[str, str]],
                 stamp: Callable[[], object], fix: Callable[[], str], lines_to_add: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.ring = ring
        self.backend = backend.encode()
        self.slots = slots
        self.stamp = stamp
        self.fix = fix  # why there is no ring, and what to do
        self.lines_to_add = lines_to_add
        self.clock = clock
        self.versions: dict[str, VersionStats] = {}
        self.since: float | None = None  # from when the counters are complete
        self.error: str | None = "the HAProxy ring reader has not connected yet"
        self.lines = 0  # counted
        self.matched = 0  # lines in releasegate's format for this backend, counted or not
        self.skipped = 0  # lines of other formats or backends
        self.unattributed = 0  # ours, but on no server (<NOSRV>) or a slot no version was known for
        self.sessions = 0
        self._map: dict[bytes, str] = {}
        self._stamp: object = None
        self._horizon = (0, 0, 0)  # (ms, pid, request) of the last line counted: a replay skips up to it
        self._replay = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._horizon = (int(self.clock() * 1000), 0, 0)
        self._thread = threading.Thread(target=self._run, name=f"haproxy-ring-{self.ring}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(TIMEOUT)

    def window(self, version: str, seconds: float, now: float) -> WindowStats | None:
        with self._lock:
            vs = self.versions.get(version)
            return vs.window(seconds, now, self.since if self.since is not None else now) if vs else None

    def totals(self, now: float) -> dict[str, VersionTotals]:
        """Each version's counts since the reader started (``releasegate.providers.metrics.totals``)."""
        with self._lock:
            return {name: sparse_totals(*vs.totals(now)) for name, vs in self.versions.items()}

    def windows(self, seconds: float, now: float) -> dict[str, WindowStats]:
        """Every version's statistics over the last ``seconds`` as of ``now`` (the versions seen since start)."""
        with self._lock:
            since = self.since if self.since is not None else now
            return {name: vs.window(seconds, now, since) for name, vs in self.versions.items()}

    # --- the thread --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except HaproxyAnswer as exc:
                self.error = str(exc)
            except OSError as exc:
                self.error = (f"HAProxy does not answer on {self.path} ({type(exc).__name__}): the latency of "
                              "its requests is unknown until it does")
            except Exception as exc:  # e.g. an unreadable router state file: say so, and try again; never die
                self.error = f"the HAProxy ring reader stopped ({type(exc).__name__}: {exc}); it starts again"
            self._stop.wait(RETRY)

    def _follow(self) -> None:
        pid = pid_of(self.path)
        if not ring_listed(command(self.path, "show events"), self.ring):
            raise HaproxyAnswer(self.fix())
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(self.path)
            self._sock = sock
            try:
                sock.sendall(f"set timeout cli 3600; show events {self.ring} -w\n".encode())
                self._stream(sock, pid)
            finally:
                self._sock = None

    def _stream(self, sock: socket.socket, pid: int | None) -> None:
        sock.settimeout(0.5)
        with self._lock:
            self._replay = True  # the ring from its start: skip what was counted before
            if self.since is None:
                self.since = self.clock()
        self.error = None
        self.sessions += 1
        partial = b""
        checked = time.monotonic()
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                data = None
            if data == b"":
                return  # closed: by HAProxy (timeout, reload) or by close()
            if data:
                partial = (partial + data).lstrip(b"\n") if not partial else partial + data
                if partial.startswith(b"No such event sink"):  # removed by a reload between the two commands
                    raise HaproxyAnswer(self.fix())
                end = partial.rfind(b"\n")
                if end >= 0:
                    self._count(partial, end)
                    partial = partial[end + 1:]
            if time.monotonic() - checked >= CHECK:
                checked = time.monotonic()
                if pid_of(self.path) != pid:
                    return  # reloaded: leave the old process, follow the new one's ring

    def _count(self, data: bytes, end: int) -> None:
        """Count the complete lines of ``data[:end]``."""
        stamp = self.stamp()
        if stamp != self._stamp:  # the routes changed: slots may serve other versions now
            self._stamp = stamp
            self._map.update({k.encode(): v for k, v in self.slots().items()})
        backend = self.backend
        oldest = int(self.clock() * 1000) - (SLOTS - 2) * 1000
        counted = matched = lost = 0
        with self._lock:
            replay, last = self._replay, self._horizon
            for m in LINE.finditer(data, 0, end):
                if m[1] != backend:
                    continue
                matched += 1
                ms, pid, req = int(m[5]), int(m[6]), int(m[7])
                if replay:
                    if ms < last[0] or (ms == last[0] and pid == last[1] and req <= last[2]):
                        continue  # counted before the session closed, or older than the reader
                    replay = False
                if ms < oldest:
                    continue
                version = self._map.get(m[2])
                status = int(m[3])
                if version is None or status < 0:  # <NOSRV>, a slot never routed, or no answer at all
                    lost += 1
                    continue
                vs = self.versions.get(version)
                if vs is None:
                    vs = self.versions[version] = VersionStats()
                vs.record(ms / 1000, max(0, int(m[4])) / 1000, status)
                last = (ms, pid, req)
                counted += 1
            self._replay, self._horizon = replay, last
            self.lines += counted
            self.unattributed += lost
            self.matched += matched
            self.skipped += data.count(b"\n", 0, end + 1) - matched
        if not self.matched and self.skipped:
            self.error = (f"HAProxy's ring {self.ring} gets lines, but none in releasegate's format for backend "
                          f"{self.backend.decode()}: {self.lines_to_add}")
        elif matched:
            self.error = None
