"""The router's pure parts: statistics, chunked framing, the bucket table, config and the routes file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from releasegate.providers.base import Routes, VersionRoute
from releasegate.router.config import RouterConfig, split_host_port
from releasegate.router.http1 import Chunked, ProtocolError, strip_headers
from releasegate.router.routes_file import RoutesFileError, load_routes, save_routes
from releasegate.router.routing import Backend, RoutingTable, cookie_bucket, header_bucket
from releasegate.router.stats import BOUNDS, Stats, VersionStats, percentile


def test_histogram_percentiles_are_within_a_bucket() -> None:
    vs = VersionStats()
    now = 1000.3
    for i in range(1, 1001):  # 1 ms .. 1000 ms, uniform
        vs.record(now, i / 1000, 500 if i % 10 == 0 else 200)
    w = vs.window(10, now, started=0.0)
    assert w["requests"] == 1000 and w["errors"] == 100 and w["error_rate"] == pytest.approx(0.1)
    for key, true in (("latency_p50", 0.5), ("latency_p95", 0.95), ("latency_p99", 0.99)):
        value = w[key]  # type: ignore[literal-required]  # the loop's keys are literals, mypy sees a str
        assert value is not None and abs(value - true) / true < 0.25, (key, value)  # one bucket wide


def test_window_covers_every_second_it_overlaps_and_expires_old_slots() -> None:
    vs = VersionStats()
    for sec in range(100, 110):
        for _ in range(10):
            vs.record(sec + 0.5, 0.001, 200)
    w = vs.window(5, 109.5, started=0.0)  # [104.5, 109.5] overlaps seconds 104..109, the last one half over
    assert w["requests"] == 60 and w["rps"] == pytest.approx(60 / 5.5)
    assert vs.window(5, 200.0, started=0.0)["requests"] == 0
    assert vs.window(5, 200.0, started=0.0)["latency_p95"] is None
    # A slot is reused an hour later and must not carry the old counts.
    vs.record(100.5 + 3602, 0.002, 503)
    w = vs.window(1, 100.6 + 3602, started=0.0)
    assert (w["requests"], w["errors"]) == (1, 1)
    # A router up for 2 s has not seen 10 s of traffic: the rate uses what it saw.
    seen = vs.window(10, 109.5, 0)["requests"]
    assert vs.window(10, 109.5, started=107.5)["rps"] == pytest.approx(seen / 2)


def test_a_short_window_early_in_a_second_still_sees_the_last_second() -> None:
    """A 1 s window asked 0.2 s into a second used to cover those 0.2 s only: at a few requests per second it was
    mostly empty, and latency rules evaluated every second saw "no data" between completions."""
    vs = VersionStats()
    vs.record(100.7, 2.5, 200)
    w = vs.window(1, 101.2, started=0.0)
    assert w["requests"] == 1 and w["latency_p95"] is not None and w["latency_p95"] > 2.0
    assert vs.window(1, 102.2, started=0.0)["requests"] == 0  # [101.2, 102.2] is after it


def test_requests_waiting_through_the_window_count_with_the_time_waited() -> None:
    vs = VersionStats()
    now = 200.4
    # Nothing completed; two requests have waited 2.4 s and 1.5 s, one only 0.3 s (less than the window).
    w = vs.window(1, now, started=0.0, waiting=[now - 2.4, now - 1.5, now - 0.3])
    assert w["requests"] == 0 and w["error_rate"] is None and w["rps"] == 0.0
    assert w["waiting"] == 2 and w["latency_lower_bound"] is True
    assert w["latency_p95"] == pytest.approx(2.4) and w["latency_p50"] == pytest.approx(1.5)  # exact, a true bound
    # With completed requests the waiting ones join the histogram: percentiles only, not the rates.
    for _ in range(3):
        vs.record(now - 0.1, 0.010, 200)
    mixed = vs.window(1, now, started=0.0, waiting=[now - 2.4, now - 1.5])
    assert mixed["requests"] == 3 and mixed["error_rate"] == 0.0 and mixed["latency_lower_bound"] is False
    assert mixed["latency_p95"] is not None and mixed["latency_p95"] > 2.0
    assert mixed["latency_p50"] is not None and mixed["latency_p50"] < 0.1
    # A fast version's waiting requests are younger than the window: nothing changes.
    fast = vs.window(1, now, started=0.0, waiting=[now - 0.05])
    assert fast["waiting"] == 0 and fast["latency_p95"] is not None and fast["latency_p95"] < 0.1


def test_a_version_with_only_waiting_requests_has_latency_but_no_rate() -> None:
    stats = Stats()
    start = stats.started
    snap = stats.snapshot(1, known=("v1",), waiting={"v1": [start - 5.0]})
    assert snap["v1"]["latency_p99"] is not None and snap["v1"]["latency_p99"] >= 5.0
    assert snap["v1"]["latency_lower_bound"] is True and snap["v1"]["error_rate"] is None


def test_empty_stats_report_no_data() -> None:
    stats = Stats()
    snap = stats.snapshot(60, known=("v1",))
    assert snap["v1"]["error_rate"] is None and snap["v1"]["rps"] == 0.0 and snap["v1"]["latency_p99"] is None
    assert percentile([0] * 10, 0, 0.5) is None
    assert BOUNDS[0] == pytest.approx(0.0001) and BOUNDS[-1] >= 60


@pytest.mark.parametrize("body", [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
    b"5\nhello\n0\n\n",
])
def test_chunked_end_found_at_every_split(body: bytes) -> None:
    data = body + b"NEXT"
    for cut in range(len(data)):
        ch = Chunked()
        end = ch.feed(data[:cut])
        if end >= 0:
            assert end == len(body)
            continue
        end2 = ch.feed(data[cut:])
        assert end2 == len(body) - cut


def test_chunked_rejects_garbage() -> None:
    with pytest.raises(ProtocolError):
        Chunked().feed(b"zz\r\n")
    with pytest.raises(ProtocolError):
        Chunked().feed(b"2\r\nabXX\r\n")


def test_strip_headers_keeps_order_and_merges() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: */*"
    out, dropped = strip_headers(head, frozenset({b"connection", b"x-forwarded-for"}))
    assert out == b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*"
    assert dropped[b"x-forwarded-for"] == b"1.1.1.1"


def table(*versions: tuple[str, int, tuple[str, ...]]) -> RoutingTable:
    routes = Routes(tuple(VersionRoute(v, w, bs) for v, w, bs in versions))
    return RoutingTable(routes, 1, {}, Stats())


def test_buckets_follow_routes_order_and_normalise() -> None:
    t = table(("canary", 5, ("a:1",)), ("stable", 95, ("b:1",)))
    assert t.by_bucket is not None and t.multi
    assert [v.name for v in t.by_bucket].count("canary") == 5 and t.by_bucket[4].name == "canary"
    assert t.by_bucket[5].name == "stable"
    t = table(("canary", 10, ("a:1",)), ("stable", 10, ("b:1",)))  # sum 20: half each
    assert t.by_bucket is not None and [v.name for v in t.by_bucket].count("canary") == 50
    t = table(("canary", 50, ()), ("stable", 10, ("b:1",)))  # no backends: its share goes to the others
    assert t.by_bucket is not None and {v.name for v in t.by_bucket} == {"stable"} and not t.multi
    assert table(("a", 0, ("a:1",))).by_bucket is None
    assert table().by_bucket is None


def test_least_inflight_then_round_robin() -> None:
    t = table(("v", 100, ("a:1", "b:1", "c:1")))
    v = t.versions[0]
    assert {v.pick().address for _ in range(3)} == {"a:1", "b:1", "c:1"}
    v.backends[0].inflight = v.backends[1].inflight = 5
    assert {v.pick().address for _ in range(6)} == {"c:1"}


def test_cookie_and_header_buckets() -> None:
    head = b"GET / HTTP/1.1\r\nCookie: a=1; rg_bucket=42; b=2\r\nHost: x"
    start = head.find(b"Cookie:") + 7
    assert cookie_bucket(head, start, b"rg_bucket=") == 42
    for bad in (b"rg_bucket=abc", b"rg_bucket=100", b"rg_bucket=", b"xrg_bucket=5", b"other=1"):
        h = b"GET / HTTP/1.1\r\nCookie: " + bad + b"\r\nHost: x"
        assert cookie_bucket(h, h.find(b"Cookie:") + 7, b"rg_bucket=") == -1, bad
    assert header_bucket(b"alice") == header_bucket(b"alice") and 0 <= header_bucket(b"bob") < 100


def test_config_validation() -> None:
    assert split_host_port("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_host_port("nope")
    with pytest.raises(ValueError, match="loopback"):
        RouterConfig("s", "127.0.0.1:0", Path("r"), Path("s"), admin="0.0.0.0:1")
    assert Backend("h:1").port == 1


def test_routes_file_roundtrip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    assert load_routes(path, "shop") is None
    routes = Routes((VersionRoute("v2", 10, ("127.0.0.1:1",)), VersionRoute("v1", 90, ("127.0.0.1:2",))))
    save_routes(path, "shop", routes, 7)
    saved = load_routes(path, "shop")
    assert saved is not None and saved.routes == routes and saved.generation == 7
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RoutesFileError, match="belongs to service"):
        load_routes(path, "other")
    path.write_text("{truncated")
    with pytest.raises(RoutesFileError, match=str(path)) as err:
        load_routes(path, "shop")
    assert "\n" not in str(err.value)
    path.write_text(json.dumps({"versions": [{"version": "v", "weight": 200}]}))
    with pytest.raises(RoutesFileError, match="weight"):
        load_routes(path, "shop")


def test_old_versions_are_pruned() -> None:
    stats = Stats()
    now = stats.started
    stats.for_version("old").record(now - 4000, 0.001, 200)  # its last request, over an hour ago
    stats.for_version("current").record(now - 4000, 0.001, 200)
    stats.for_version("recent").record(now - 60, 0.001, 200)
    stats.for_version("fresh")  # created now, e.g. by a route change
    stats.prune(keep=("current",), now=now)
    assert set(stats.versions) == {"current", "recent", "fresh"}
