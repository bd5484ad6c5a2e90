"""Why a metric has no value: the words a wait or a pause shows to the operator.

A metric source answers ``query(q) -> float | None``; None alone cannot tell "nobody sent requests to 2.0.0" from
"Prometheus is down" or "HAProxy cannot measure p95", and an operator acts differently on each. A source that
knows says why through ``explain(q)``, asked right after the ``query(q)`` that returned None; sources without it
leave the reason unknown (the engine then says only that there is no data).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from releasegate.durations import format_duration
from releasegate.providers.base import AtLeast, MetricQuery


@runtime_checkable
class Explains(Protocol):
    def explain(self, q: MetricQuery) -> str | None:
        """Why the latest ``query(q)`` answered None; None when it did not, or when the reason is unknown."""
        ...


class Reasons:
    """The reason of each source's latest query, kept for one query only (``explain`` follows ``query``)."""

    def __init__(self) -> None:
        self._last: tuple[MetricQuery, str | None] | None = None

    def set(self, q: MetricQuery, why: str | None) -> None:
        self._last = (q, why)

    def get(self, q: MetricQuery) -> str | None:
        return self._last[1] if self._last is not None and self._last[0] == q else None


class ExplainedSource:
    """A metric source whose ``_query`` returns the value with why it has none (or is only a lower bound, which
    the engine may still take as no data); ``query`` keeps the reason for ``explain``."""

    def __init__(self) -> None:
        self.reasons = Reasons()

    def explain(self, q: MetricQuery) -> str | None:
        return self.reasons.get(q)

    async def query(self, q: MetricQuery) -> float | None:
        value, why = await self._query(q)
        self.reasons.set(q, why if value is None or isinstance(value, AtLeast) else None)
        return value

    async def _query(self, q: MetricQuery) -> tuple[float | None, str | None]:
        raise NotImplementedError


def explain(source: object, q: MetricQuery) -> str | None:
    """``source.explain(q)`` when the source has it."""
    return source.explain(q) if isinstance(source, Explains) else None


def no_traffic(version: str, window: float) -> str:
    return f"no traffic to {version} in the last {format_duration(window)}"


def cannot_measure(router_kind: str, metric: str) -> str:
    return f"router kind {router_kind} cannot measure {metric}"
