"""Per-version running totals (requests, 5xx errors, latency histogram) for judging a canary against a baseline.

Why totals, not windows: a sequential test (the canary-versus-baseline judge, docs/judge.md) needs each look's
data to be new, and a "last N seconds" window asked at slightly irregular ticks would count some requests twice
and miss others. Totals since each version's first request are differenced between two looks instead: every
request lands in exactly one increment. ``epoch`` names the counting process (a router's start, a log tail's or
ring reader's start): when it changes, or a total goes down, the counts started again and the new totals are the
increment.

Sources: the built-in router (``GET /totals`` on its admin API), nginx's access log (the tail's counters),
HAProxy's ring log (the reader's counters), and Prometheus counters when the spec says so (``analysis.judge.counts``:
releasegate/providers/metrics/prometheus_counts.py, which keeps its own totals, since a sum over instances drops
without restarting at 0 when one instance restarts). The histogram's buckets are the router's
(``releasegate.router.stats``: log-spaced x1.25 from 0.1 ms to 60 s), by index.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from releasegate.router.stats import VersionTotals


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    versions: dict[str, VersionTotals]


@runtime_checkable
class TotalsSource(Protocol):
    async def totals(self) -> Snapshot:
        """Every version's totals now; ``ProviderError`` when the source cannot answer."""
        ...


TotalsReader = Callable[[tuple[str, ...]], Awaitable[Snapshot]]
"""How the judge reads totals: given the versions it compares (the canary, its reference), a ``Snapshot`` holding
at least those. The routers' sources read every version at once and ignore the argument (``every_version``);
Prometheus counters (releasegate/providers/metrics/prometheus_counts.py) are queried per version."""


def every_version(source: TotalsSource) -> TotalsReader:
    """A router's totals as a ``TotalsReader``: one read gives every version it has counted."""
    async def read(versions: tuple[str, ...]) -> Snapshot:
        return await source.totals()
    return read


def increments(before: Snapshot | None, after: Snapshot) -> dict[str, VersionTotals]:
    """What each version served between two looks (``before`` None: everything so far)."""
    out: dict[str, VersionTotals] = {}
    for version, now in after.versions.items():
        then = before.versions.get(version) if before is not None and before.epoch == after.epoch else None
        if then is None or now["requests"] < then["requests"] or now["errors"] < then["errors"]:
            out[version] = {"requests": now["requests"], "errors": now["errors"], "hist": dict(now["hist"])}
            continue
        hist = {b: n - then["hist"].get(b, 0) for b, n in now["hist"].items() if n - then["hist"].get(b, 0) > 0}
        out[version] = {"requests": now["requests"] - then["requests"], "errors": now["errors"] - then["errors"],
                        "hist": hist}
    return out


__all__ = ["Snapshot", "TotalsReader", "TotalsSource", "every_version", "increments"]
