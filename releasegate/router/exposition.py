"""The router's statistics in the Prometheus text exposition format (0.0.4), served as ``GET /metrics``.

Why: teams that already run Prometheus want the seed's queries and alert rules to work against releasegate's
data plane unchanged, e.g. ``rate(http_requests_total{status=~"5..",version="2.0.0"}[1m])`` and
``histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{version="2.0.0"}[1m])))``.

What is exposed, honestly:

- ``http_requests_total{service,version,status}``: ``status`` is the exact code answered (``"200"``, ``"404"``,
  ``"502"``...), so the seed's ``status=~"5.."`` and ``status=~"2.."`` select what they say. Codes the router
  answers for a backend are its own: 502 (no response), 504 (timeout); 499 is a client that hung up first. A
  code outside 100-599 would be ``"other"`` (backends' status lines are parsed to 100-599, so in practice
  never). ``"200"`` and ``"500"`` are always present (0 until seen), so that a ratio like
  ``rate(...{status=~"5.."}) / rate(...)`` is 0 for a version without errors, not "no series" (no data).
- ``http_request_duration_seconds`` histogram: the router's log-spaced buckets (x1.25 from 0.1 ms to ~75 s) as
  cumulative ``le`` buckets; ``le`` is the bucket's upper bound printed to 6 significant digits. ``_sum`` is an
  estimate (each request counted at its bucket's geometric middle, within ~12 %): the router keeps no exact
  latency sum, and adding one would cost the hot path a float addition per request. ``_count`` is exact.
- ``releasegate_router_inflight{backend}``: requests in progress per backend address (a gauge).

Counters restart at 0 with the router process, which ``rate()`` handles as a counter reset.
"""

from __future__ import annotations

import math
import time

from releasegate.router.stats import _FACTOR, BOUNDS, NBUCKETS, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LE_LABELS: tuple[str, ...] = (*(f"{b:.6g}" for b in BOUNDS), "+Inf")
"""The ``le`` label of each router bucket, in order; the last (open) bucket is ``+Inf``."""

MIDPOINTS: tuple[float, ...] = (
    BOUNDS[0] / 2,
    *(math.sqrt(BOUNDS[b - 1] * BOUNDS[b]) for b in range(1, len(BOUNDS))),
    BOUNDS[-1] * _FACTOR,
)
"""The latency each bucket's requests count as in the ``_sum`` estimate."""

assert len(LE_LABELS) == NBUCKETS == len(MIDPOINTS)

ALWAYS: dict[str, int] = {"200": 0, "500": 0}
"""Status series every version has from its first request on, so a 5xx ratio is 0 rather than no data."""


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(service: str, stats: Stats, inflight: dict[str, int], now: float | None = None) -> str:
    """The whole exposition for one router; ``now`` is ``time.perf_counter()`` (the stats' clock)."""
    now = time.perf_counter() if now is None else now
    svc = escape(service)
    requests_lines: list[str] = []
    hist_lines: list[str] = []
    for version in sorted(stats.versions):
        total, _errors, hist = stats.versions[version].totals(now)
        labels = f'service="{svc}",version="{escape(version)}"'
        codes = {**ALWAYS, **stats.versions[version].status_counts()}
        requests_lines.extend(f'http_requests_total{{{labels},status="{code}"}} {n}'
                              for code, n in sorted(codes.items()))
        running = 0
        for le, n in zip(LE_LABELS, hist, strict=True):
            running += n
            hist_lines.append(f'http_request_duration_seconds_bucket{{{labels},le="{le}"}} {running}')
        estimate = sum(n * mid for n, mid in zip(hist, MIDPOINTS, strict=True))
        hist_lines.append(f"http_request_duration_seconds_sum{{{labels}}} {estimate!r}")
        hist_lines.append(f"http_request_duration_seconds_count{{{labels}}} {total}")
    out = [
        "# HELP http_requests_total Requests proxied by the router, by version and status code.",
        "# TYPE http_requests_total counter",
        *requests_lines,
        "# HELP http_request_duration_seconds Request latency at the router, head received to last byte sent.",
        "# TYPE http_request_duration_seconds histogram",
        *hist_lines,
        "# HELP releasegate_router_inflight Requests in progress per backend.",
        "# TYPE releasegate_router_inflight gauge",
        *(f'releasegate_router_inflight{{service="{svc}",backend="{escape(b)}"}} {n}'
          for b, n in sorted(inflight.items())),
    ]
    return "\n".join(out) + "\n"
