"""The routing table: weights turned into a 100-entry bucket lookup, built once per route change.

Why buckets: a sticky user carries a bucket (0-99) rather than a version, and versions own consecutive bucket
ranges in routes order. When the canary (listed first) grows from 5 % to 25 %, its range grows from [0,5) to
[0,25): everybody who was on it stays on it, and only users moving *to* it change version. Picking a version
is then one list index per request.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from releasegate.providers.base import Routes
from releasegate.router.config import split_host_port
from releasegate.router.stats import Stats, VersionStats

if TYPE_CHECKING:
    from releasegate.router.backend import BackendConn

BUCKETS = 100


class Backend:
    """One ``host:port``: its in-flight count and its pool of idle keep-alive connections.

    Lives as long as it is in the routes or still has requests in flight, so a drain can be watched after the
    backend has left the routes.
    """

    __slots__ = ("address", "host", "idle", "inflight", "port", "removed")

    def __init__(self, address: str) -> None:
        self.address = address
        self.host, self.port = split_host_port(address)
        self.inflight = 0
        self.idle: list[BackendConn] = []
        self.removed = False


class VersionEntry:
    """A version as the hot path sees it: its backends and the statistics its requests are counted in."""

    __slots__ = ("backends", "name", "rr", "stats", "weight")

    def __init__(self, name: str, weight: int, backends: list[Backend], stats: VersionStats) -> None:
        self.name = name
        self.weight = weight
        self.backends = backends
        self.stats = stats
        self.rr = 0

    def pick(self) -> Backend:
        """Least in-flight, starting from a rotating position so equal loads still alternate."""
        bs = self.backends
        n = len(bs)
        if n == 1:
            return bs[0]
        r = self.rr = (self.rr + 1) % n
        best = bs[r]
        if best.inflight:
            for k in range(1, n):
                b = bs[(r + k) % n]
                if b.inflight < best.inflight:
                    best = b
        return best


class RoutingTable:
    """Immutable once built; a route change swaps the whole table: a request sees the old or the new one."""

    __slots__ = ("by_bucket", "generation", "multi", "routes", "versions")

    def __init__(self, routes: Routes, generation: int, backends: dict[str, Backend], stats: Stats) -> None:
        self.routes = routes
        self.generation = generation
        self.versions: list[VersionEntry] = []
        for vr in routes.versions:
            bs = [backends.get(a) or backends.setdefault(a, Backend(a)) for a in dict.fromkeys(vr.backends)]
            self.versions.append(VersionEntry(vr.version, vr.weight, bs, stats.for_version(vr.version)))
        # A version with weight but no backends cannot serve: its share goes to the others, normalised.
        live = [v for v in self.versions if v.weight > 0 and v.backends]
        total = sum(v.weight for v in live)
        self.multi = len(live) > 1
        self.by_bucket: list[VersionEntry] | None = None
        if total > 0:
            table: list[VersionEntry] = []
            for b in range(BUCKETS):
                pos = b * total // BUCKETS
                acc = 0
                for v in live:
                    acc += v.weight
                    if pos < acc:
                        table.append(v)
                        break
            self.by_bucket = table

    def addresses(self) -> set[str]:
        return {b.address for v in self.versions for b in v.backends}

    def version_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.versions)


def cookie_bucket(head: bytes, start: int, name_eq: bytes) -> int:
    """The bucket in the sticky cookie of the Cookie header whose value starts at ``start``; -1 if none."""
    end = head.find(b"\r\n", start)
    if end < 0:
        end = len(head)
    i = head.find(name_eq, start, end)
    while i >= 0:
        if i == start or head[i - 1] in b" ;\t":
            j = i + len(name_eq)
            k = head.find(b";", j, end)
            raw = head[j:k if k >= 0 else end].strip()
            if 0 < len(raw) <= 2 and raw.isdigit():
                return int(raw)
            return -1
        i = head.find(name_eq, i + 1, end)
    return -1


def header_bucket(value: bytes) -> int:
    """A stable bucket for a user id: the same id lands in the same bucket in every router process."""
    return zlib.crc32(value) % BUCKETS
