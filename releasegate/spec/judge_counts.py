"""``analysis.judge.counts``: the judge's request, error and latency counts from Prometheus counters instead of
the router's running totals (docs/judge.md, "Counts from Prometheus").

Why raw counters and not ``rate()`` or ``increase()``: the judge differences two readings taken one analysis
interval apart, so that every request lands in exactly one interval. ``rate()`` and ``increase()`` over a range
extrapolate to the range's edges (fractional, invented requests) and their ranges overlap from one look to the
next (the same requests counted twice): both break the counting the judge's guarantee rests on. The queries are
refused when they use them.

Why ``{{version}}`` is required: without it the canary and its reference read the same number, and the judge
would compare a version with itself and pass anything.
"""

from __future__ import annotations

import re

from pydantic import Field, ValidationInfo, field_validator

from releasegate.spec.common import SpecModel as _Model

_WINDOWED = re.compile(r"\b(rate|irate|increase|delta|idelta)\s*\(", re.IGNORECASE)
_EXAMPLE = {
    "requests": 'sum(http_requests_total{service="{{service}}",version="{{version}}"})',
    "errors": 'sum(http_requests_total{service="{{service}}",version="{{version}}",status=~"5.."})',
    "latency": 'sum by (le) (http_request_duration_seconds_bucket{service="{{service}}",version="{{version}}"})',
}


def _query(field: str, value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError(f"counts.{field} is empty: write PromQL such as {_EXAMPLE[field]}")
    windowed = _WINDOWED.search(text)
    if windowed:
        raise ValueError(f"counts.{field} uses {windowed.group(1)}(): the judge needs the raw cumulative counter "
                         f"(it differences two readings itself; a windowed function extrapolates and overlaps "
                         f"between looks), e.g. {_EXAMPLE[field]}")
    if "{{baseline_version}}" in text:
        raise ValueError(f"counts.{field} is read once per version with {{{{version}}}}; "
                         "{{baseline_version}} has no meaning here: remove it")
    if "{{version}}" not in text:
        raise ValueError(f"counts.{field} must select one version with {{{{version}}}} (else the canary and its "
                         f"reference read the same number), e.g. {_EXAMPLE[field]}")
    return text


class JudgeCounts(_Model):
    """Where the judge's counts come from when not from the router: PromQL for raw cumulative counters, read with
    one instant query per counter and version at every analysis interval of a canary step."""

    requests: str = Field(description="PromQL returning one number: the cumulative count of the version's "
                          "requests, e.g. `sum(http_requests_total{service=\"{{service}}\",version=\"{{version}}\"})`."
                          " A raw counter, not rate() or increase(): those extrapolate and overlap between the "
                          "judge's looks, and the judge differences two readings itself. {{service}} and "
                          "{{version}} are substituted ({{version}} is required: the canary, then its reference; "
                          "a baseline is `<previous>+baseline`, as the router labels it).")
    errors: str = Field(description="PromQL returning one number: the cumulative count of the version's failed "
                        "(5xx) requests, e.g. the same counter with `status=~\"5..\"`; a raw counter, like "
                        "requests.")
    latency: str | None = Field(None, description="Optional PromQL for a judged latency metric: the version's "
                                "cumulative histogram buckets, one series per `le`, e.g. `sum by (le) "
                                "(http_request_duration_seconds_bucket{service=\"{{service}}\",version="
                                "\"{{version}}\"})`. Buckets with other edges than the router's are moved into the "
                                "router's (x1.25 log-spaced) by their geometric middle. Without it, a judged "
                                "latency metric is refused.")

    @field_validator("requests", "errors")
    @classmethod
    def _counter(cls, value: str, info: ValidationInfo) -> str:
        return _query(str(info.field_name), value)

    @field_validator("latency")
    @classmethod
    def _buckets(cls, value: str | None) -> str | None:
        return None if value is None else _query("latency", value)


__all__ = ["JudgeCounts"]
