"""The nginx access-log tail on files the test writes itself: every awkward thing that happens to a log file.

The lines are in the format the nginx router renders (checked against a real nginx in test_nginx_metrics.py);
the clock is injected, so windows and horizons are exact.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_right
from pathlib import Path

import pytest

from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery
from releasegate.providers.metrics.nginx_log import LogTail, NginxLogMetrics
from releasegate.providers.metrics.totals import increments
from releasegate.reports.traffic import TrafficCounter
from releasegate.router.stats import BOUNDS

NOW = 1_800_000_000.0


def line(version: str, status: int = 200, took: float = 0.004, at: float = NOW - 1, service: str = "shop") -> str:
    return (json.dumps({"rg": 1, "svc": service, "v": version, "s": status, "t": took, "ts": at},
                       separators=(",", ":")) + "\n")


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def q(version: str, metric: str, window: float = 10.0) -> MetricQuery:
    return MetricQuery("shop", version, metric, window)


async def test_counts_requests_errors_and_latency_per_version(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    clock = [NOW - 10]
    metrics = NginxLogMetrics(log, "shop", clock=lambda: clock[0])
    assert await metrics.query(q("2.0.0", "error_rate")) is None  # opened at the end: nothing yet
    append(log, "".join(line("2.0.0", 500, 0.2) for _ in range(30)) + "".join(line("1.0.0") for _ in range(70)))
    clock[0] = NOW + 0.5
    assert await metrics.query(q("2.0.0", "error_rate")) == 1.0
    assert await metrics.query(q("1.0.0", "error_rate")) == 0.0
    p95 = await metrics.query(q("2.0.0", "latency_p95"))
    assert p95 is not None and 0.15 < p95 < 0.25
    assert await metrics.query(q("1.0.0", "rps")) == 70 / 10.5  # every second the window overlaps: 10 + the half
    assert await metrics.query(q("3.0.0", "rps")) == 0.0  # "no requests" is a true rate
    assert await metrics.query(q("3.0.0", "latency_p99")) is None
    assert metrics.explain(q("3.0.0", "latency_p99")) == "no traffic to 3.0.0 in the last 10s"
    assert metrics.explain(q("2.0.0", "error_rate")) is None  # it had a value


async def test_only_the_window_counts(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    metrics = NginxLogMetrics(log, "shop", clock=lambda: NOW)
    await metrics.query(q("2.0.0", "rps"))
    append(log, line("2.0.0", 500, at=NOW - 100) + line("2.0.0", 200, at=NOW - 2))
    assert await metrics.query(q("2.0.0", "error_rate", 10.0)) == 0.0
    assert await metrics.query(q("2.0.0", "error_rate", 300.0)) == 0.5
    assert await metrics.query(q("2.0.0", "error_rate", 1.0)) is None
    assert metrics.explain(q("2.0.0", "error_rate", 1.0)) == "no traffic to 2.0.0 in the last 1s"


async def test_a_log_that_does_not_exist_yet_is_no_data_with_its_reason(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    metrics = NginxLogMetrics(log, "shop", clock=lambda: NOW)
    assert await metrics.query(q("2.0.0", "rps")) is None  # not even 0: nobody can say there was no traffic
    assert f"nginx has not written its access log {log} yet" in (metrics.explain(q("2.0.0", "rps")) or "")
    log.write_text(line("2.0.0", 502))  # an unreachable backend: nginx's 502 is the version's error
    assert await metrics.query(q("2.0.0", "error_rate")) == 1.0


def test_partial_lines_wait_for_their_newline(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    tail = LogTail(log, "shop", clock=lambda: NOW)
    tail.pump()
    whole = line("2.0.0")
    append(log, whole[:20])
    assert tail.pump() == 0
    append(log, whole[20:] + line("2.0.0")[:-1])
    assert tail.pump() == 1
    append(log, "\n")
    assert tail.pump() == 1


def test_lines_that_are_not_ours_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    tail = LogTail(log, "shop", clock=lambda: NOW)
    tail.pump()
    append(log, '127.0.0.1 - - [01/Jan/2027:00:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl"\n'
           + line("2.0.0", service="other") + "{not json\n" + line("2.0.0") + "\n"
           + line("2.0.0", at=NOW - 7200))  # older than the hour kept
    assert tail.pump() == 1
    assert tail.skipped == 5


def test_rotation_keeps_reading_the_old_file_while_nginx_still_writes_there(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    clock = [NOW]
    tail = LogTail(log, "shop", clock=lambda: clock[0])
    tail.pump()
    append(log, line("1.0.0"))
    old = open(log, "a", encoding="utf-8")  # noqa: SIM115 - stands for nginx's descriptor of the old file
    try:
        os.replace(log, tmp_path / "access.log.1")
        log.write_text(line("2.0.0"))  # nginx reopened: new lines go to the new file...
        old.write(line("1.0.0"))  # ...but an old worker still finishes a request into the old one
        old.flush()
        assert tail.pump() == 3
        old.write(line("1.0.0"))
        old.flush()
        assert tail.pump() == 1
    finally:
        old.close()
    clock[0] += 60  # the old file stopped growing: it is let go
    tail.pump()
    assert len(tail._files) == 1
    assert tail.versions["1.0.0"].window(3600, clock[0], NOW - 10)["requests"] == 3


def test_truncation_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    tail = LogTail(log, "shop", clock=lambda: NOW)
    tail.pump()
    append(log, line("2.0.0") * 5)
    assert tail.pump() == 5
    with open(log, "w", encoding="utf-8") as f:  # logrotate's copytruncate
        f.write(line("2.0.0", 500))
    assert tail.pump() == 1
    # Truncated and written past the old position between two reads: the byte before it changed.
    with open(log, "w", encoding="utf-8") as f:
        f.write(line("1.0.0", took=0.25) * 3)
    assert tail.pump() == 3


def test_a_first_look_reads_at_most_the_backlog_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    one = line("2.0.0")
    log.write_text(one * 1000)
    tail = LogTail(log, "shop", clock=lambda: NOW, backlog=len(one) * 10 + 5)
    assert tail.pump() == 10  # the partial first line of the backlog is not counted


def test_the_cost_of_a_thousand_lines(tmp_path: Path) -> None:
    """Not a timing assertion: prints the figure docs/integrations.md quotes, and checks the counts."""
    log = tmp_path / "access.log"
    log.write_text("")
    tail = LogTail(log, "shop", clock=lambda: NOW)
    tail.pump()
    append(log, "".join(line("2.0.0" if i % 4 else "1.0.0", 500 if i % 50 == 0 else 200, (i % 300) / 1000,
                             NOW - 60 + i / 1000) for i in range(50_000)))
    started = time.perf_counter()
    assert tail.pump() == 50_000
    cost = (time.perf_counter() - started) / 50
    print(f"\nnginx log tail: {cost * 1000:.2f} ms per 1,000 lines")
    assert tail.versions["2.0.0"].window(120, NOW, NOW - 120)["requests"] == 37_500


async def test_counts_for_reports_follow_the_built_in_routers_rules(tmp_path: Path) -> None:
    """``counts`` (what the controller records for reports and the dashboard's per-version charts): requests and
    errors are counts (0, not None, for a version without requests in the window), p95 only over ``recent`` and
    None without a request there; a log that cannot be read is an error, so nothing is recorded."""
    log = tmp_path / "access.log"
    metrics = NginxLogMetrics(log, "shop", clock=lambda: NOW)
    assert isinstance(metrics, TrafficCounter)
    with pytest.raises(ProviderError, match="has not written its access log"):
        await metrics.counts(60.0, 1.0)
    append(log, line("1.0.0", at=NOW - 300) + line("1.0.0", at=NOW - 30) + line("1.0.0", 502, at=NOW - 20)
           + line("2.0.0", took=0.2, at=NOW - 0.5) + line("2.0.0", 500, took=0.2, at=NOW - 0.4)
           + line("2.0.0", at=NOW - 0.3, service="billing"))
    assert await metrics.counts(60.0) == {"1.0.0": {"requests": 2, "errors": 1}, "2.0.0": {"requests": 2, "errors": 1}}
    counts = await metrics.counts(60.0, 1.0)
    assert counts["1.0.0"] == {"requests": 2, "errors": 1, "p95": None}  # none in the last second
    p95 = counts["2.0.0"]["p95"]
    assert p95 is not None and 0.15 < p95 < 0.25
    assert (await metrics.counts(10.0))["1.0.0"] == {"requests": 0, "errors": 0}


async def test_totals_are_every_line_since_the_tail_started_and_each_look_gets_only_the_new_ones(
        tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    clock = [NOW]
    metrics = NginxLogMetrics(log, "shop", clock=lambda: clock[0])
    with pytest.raises(ProviderError, match="has not written its access log"):
        await metrics.totals()
    append(log, line("2.0.0", 500, 0.2, at=NOW - 0.5) + line("2.0.0", at=NOW - 0.4) + line("1.0.0", at=NOW - 0.3))
    first = await metrics.totals()
    assert first.versions["2.0.0"]["requests"] == 2 and first.versions["2.0.0"]["errors"] == 1
    append(log, line("2.0.0", 502, at=NOW + 0.2))
    clock[0] = NOW + 1
    second = await metrics.totals()
    assert second.epoch == first.epoch
    bucket = str(bisect_right(BOUNDS, 0.004))  # the line's 4 ms, in the router's buckets
    assert increments(first, second) == {"2.0.0": {"requests": 1, "errors": 1, "hist": {bucket: 1}},
                                         "1.0.0": {"requests": 0, "errors": 0, "hist": {}}}
