"""Metrics from a Prometheus server: rules with ``metric: prometheus`` run their PromQL through ``/api/v1/query``.

Why every failure is None and never 0 (docs/architecture.md, "Evidence, never assumptions"): an unreachable
Prometheus, a query error, a series that does not exist yet or a NaN (``0/0`` when a version served nothing) must
leave the rule inconclusive, so the rollout waits and never promotes on it; a 0 would read as a perfect version.

The query must come down to one number: a scalar, or an instant vector with exactly one series. Several series
(say ``rate(http_requests_total{version="2.0.0"}[1m])`` split by ``status`` and ``instance``) are ambiguous, so
they are no data too, with the reason in ``last_error``: aggregate with ``sum(...)`` to get one number.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx

from releasegate.providers.base import MetricQuery
from releasegate.spec import secrets
from releasegate.spec.migrations import mask_password
from releasegate.spec.sources import Prometheus

PLACEHOLDERS = ("{{service}}", "{{version}}", "{{baseline_version}}")


def _literal(value: str) -> str:
    """A value made safe inside a PromQL double-quoted string (versions and services are plain, but be sure)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render_query(template: str, service: str, version: str, baseline_version: str | None) -> str | None:
    """The PromQL with its placeholders filled in; None when it needs a baseline and there is none."""
    if "{{baseline_version}}" in template and baseline_version is None:
        return None
    return (template.replace("{{service}}", _literal(service)).replace("{{version}}", _literal(version))
            .replace("{{baseline_version}}", _literal(baseline_version or "")))


def value_of(data: Any) -> tuple[float | None, str | None]:
    """The one number in a ``/api/v1/query`` answer, or (None, why not)."""
    if not isinstance(data, dict) or data.get("status") != "success" or not isinstance(data.get("data"), dict):
        error = data.get("error") if isinstance(data, dict) else None
        return None, f"Prometheus answered with an error: {error or 'unexpected response'}"
    kind, result = data["data"].get("resultType"), data["data"].get("result")
    if kind == "scalar":
        sample = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None, "the query returned no series (no data yet)"
        if len(result) > 1:
            return None, (f"the query returned {len(result)} series; aggregate it (e.g. sum(...)) to one number")
        sample = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        return None, f"the query returned a {kind}, not a number (use an instant vector or a scalar)"
    try:
        value = float(sample[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None, "the query's sample is not a number"
    if not math.isfinite(value):  # NaN is 0/0, i.e. no traffic; Inf would poison the stored history
        return None, f"the query returned {value}"
    return value, None


class PrometheusMetrics:
    """``MetricSource`` for ``metric: prometheus`` rules against one Prometheus server (the spec's ``metrics:``).

    ``last_error`` keeps why the latest query had no data, for status output and history.
    """

    def __init__(self, spec: Prometheus) -> None:
        self.url = secrets.resolve(spec.url, "metrics.prometheus.url").rstrip("/")
        self.written = spec.url.rstrip("/")
        self.shown = mask_password(self.written)  # what messages print: the reference, never its value
        self.timeout = float(spec.timeout)
        self.last_error: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        # One pooled client per event loop, as BuiltinRouterClient does: a client bound to a closed loop is dead.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def query(self, q: MetricQuery) -> float | None:
        if q.metric != "prometheus" or not q.query:
            return None
        promql = render_query(q.query, q.service, q.version, q.baseline_version)
        if promql is None:
            self.last_error = "the query uses {{baseline_version}} but there is no baseline version"
            return None
        data, self.last_error = await self.fetch(promql)
        if self.last_error is not None:
            return None
        value, self.last_error = value_of(data)
        return value

    async def fetch(self, promql: str, at: float | None = None) -> tuple[Any, str | None]:
        """The JSON answer of one instant query (evaluated at ``at``, Unix seconds, else Prometheus' now), or
        (None, why there is none)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        try:
            resp = await self._http().get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as exc:
            detail = secrets.hide(str(exc) or "no detail", self.written)
            return None, f"Prometheus at {self.shown} is unreachable ({type(exc).__name__}: {detail})"
        try:
            return resp.json(), None
        except ValueError:
            return None, f"Prometheus at {self.shown} answered {resp.status_code} without JSON"
