"""Prometheus end to end: the router's GET /metrics, a private Prometheus scraping it, PrometheusMetrics running
the seed's queries through /api/v1/query, and the generated alert rules checked by promtool."""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from releasegate.alerts import prometheus_duration, render_alert_rules
from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery
from releasegate.providers.metrics.prometheus import PrometheusMetrics, render_query, value_of
from releasegate.providers.metrics.prometheus_counts import PrometheusCounts, Reading
from releasegate.providers.metrics.totals import Snapshot, increments
from releasegate.router.exposition import LE_LABELS, render_metrics
from releasegate.router.stats import SLOTS, Stats, dense
from releasegate.spec.judge_counts import JudgeCounts
from releasegate.spec.models import Spec
from releasegate.spec.sources import Prometheus
from tests.support.prometheus import PROMTOOL, PrometheusProc, available, free_port, start_prometheus
from tests.support.router_helpers import KeepAliveBackend, RouterProc, start_router
from tests.support.wait import eventually, wait_until

needs_prometheus = pytest.mark.skipif(not available(), reason="prometheus/promtool not installed")

ERRORS = 'rate(http_requests_total{status=~"5..",version="{{version}}"}[1m])'  # the seed's query, templated
P95 = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{version="{{version}}"}[1m])))'
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
                    r'(-?[0-9.e+-]+|\+Inf|NaN)$')


def _q(version: str, query: str, baseline: str | None = None) -> MetricQuery:
    return MetricQuery("shop", version, "prometheus", 60.0, baseline_version=baseline, query=query)


# --- pure pieces --------------------------------------------------------------------------------------------


def test_totals_fold_completed_seconds_once_and_survive_the_ring_wrapping() -> None:
    stats = Stats()
    vs = stats.for_version("1.0.0")
    vs.record(100.2, 0.01, 200)
    vs.record(100.7, 0.02, 502)
    assert vs.totals(100.9)[:2] == (2, 1)  # the current second counts without being folded
    vs.record(100.95, 0.01, 200)
    vs.record(101.1, 3.0, 500)
    requests, errors, hist = vs.totals(101.5)
    assert (requests, errors, sum(hist)) == (4, 2, 4)
    assert vs.totals(101.6)[:2] == (4, 2)  # asking twice does not count twice
    # Nobody scrapes for longer than the ring: the slots are folded as they are reused, nothing is lost.
    for k in range(1, 3):
        vs.record(101.1 + k * SLOTS, 0.01, 200)
    assert vs.totals(101.5 + 2 * SLOTS)[:2] == (6, 2)
    assert vs.status_counts() == {"200": 4, "500": 1, "502": 1}  # per code: cumulative, never windowed
    assert vs.window(10, 101.5 + 2 * SLOTS, 0.0)["requests"] == 1  # the windows are unchanged
    # Traffic, then silence and no scrape for longer than the ring: the old slots still count.
    quiet = stats.for_version("2.0.0")
    quiet.record(200.5, 0.01, 503)
    assert quiet.totals(200.6)[:2] == (1, 1)
    quiet.record(201.5, 0.01, 404)
    assert quiet.totals(205.0 + SLOTS)[:2] == (2, 1)


def test_status_codes_are_exact_and_bounded() -> None:
    vs = Stats().for_version("1.0.0")
    for status in (200, 200, 204, 301, 404, 499, 500, 502, 504, 599, 0, 99, 600, 999):
        vs.record(10.5, 0.001, status)
    assert vs.status_counts() == {"200": 2, "204": 1, "301": 1, "404": 1, "499": 1, "500": 1, "502": 1, "504": 1,
                                  "599": 1, "other": 4}
    requests, errors, _ = vs.totals(10.6)
    assert requests == sum(vs.status_counts().values()) == 14
    assert errors == 6  # 500, 502, 504, 599 and the odd 600 and 999, as the error rate always counted them
    assert vs.window(10, 10.6, 0.0)["errors"] == 6


def test_render_metrics_is_cumulative_and_escapes_labels() -> None:
    stats = Stats()
    vs = stats.for_version('we"ird')
    for latency in (0.001, 0.002, 0.5, 100.0):
        vs.record(50.5, latency, 503 if latency > 1 else 200)
    stats.for_version("2.0.0").record(50.5, 0.001, 404)
    text = render_metrics("shop", stats, {"127.0.0.1:1": 2}, now=50.6)
    lines = text.splitlines()
    assert all(line.startswith("# ") or SAMPLE.match(line) for line in lines), text
    requests = [line for line in lines if line.startswith("http_requests_total{")]
    assert requests == [
        'http_requests_total{service="shop",version="2.0.0",status="200"} 0',  # 200 and 500 are always there
        'http_requests_total{service="shop",version="2.0.0",status="404"} 1',
        'http_requests_total{service="shop",version="2.0.0",status="500"} 0',
        'http_requests_total{service="shop",version="we\\"ird",status="200"} 3',
        'http_requests_total{service="shop",version="we\\"ird",status="500"} 0',
        'http_requests_total{service="shop",version="we\\"ird",status="503"} 1',
    ], text
    buckets = [int(line.rsplit(" ", 1)[1]) for line in lines if "_bucket{" in line and "we" in line]
    assert len(buckets) == len(LE_LABELS) and buckets == sorted(buckets) and buckets[-1] == 4
    assert 'releasegate_router_inflight{service="shop",backend="127.0.0.1:1"} 2' in lines


def test_query_rendering_and_result_parsing() -> None:
    assert render_query('x{service="{{service}}",v="{{version}}"}', "shop", "2.0.0", None) == \
        'x{service="shop",v="2.0.0"}'
    assert render_query('x{v="{{baseline_version}}"}', "shop", "2.0.0", None) is None
    vector = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert value_of(vector) == (None, "the query returned no series (no data yet)")
    one = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.25"]}]}}
    assert value_of(one) == (0.25, None)
    series = {"metric": {}, "value": [1, "0.25"]}
    two = {"status": "success", "data": {"resultType": "vector", "result": [series, series]}}
    assert value_of(two)[0] is None and "2 series" in str(value_of(two)[1])
    assert value_of({"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}})[0] is None
    assert value_of({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}}) == (3.0, None)
    assert value_of({"status": "error", "error": "parse error"})[0] is None
    assert value_of({"status": "success", "data": {"resultType": "matrix", "result": []}})[0] is None


async def test_unreachable_prometheus_is_no_data_not_zero() -> None:
    source = PrometheusMetrics(Prometheus.model_validate({"url": f"http://127.0.0.1:{free_port()}", "timeout": "2s"}))
    assert await source.query(_q("2.0.0", ERRORS)) is None
    assert source.last_error is not None and "unreachable" in source.last_error
    assert await source.query(MetricQuery("shop", "2.0.0", "error_rate", 60.0)) is None  # not a prometheus rule
    await source.aclose()


def test_prometheus_durations() -> None:
    assert [prometheus_duration(s) for s in (300, 90, 0.25, 5400.5, 0)] == ["5m", "1m30s", "250ms", "1h30m500ms",
                                                                             "0s"]


@needs_prometheus
def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    spec = Spec.model_validate({
        "service": "shop", "platform": {"kind": "local", "command": "x {port}"},
        "metrics": {"prometheus": {"url": "http://127.0.0.1:9090"}},
        "analysis": {"rules": [
            {"metric": "error_rate", "max": 0.05, "for": "5m"},
            {"metric": "latency_p95", "max": "2.5s", "for": "5m"},
            {"metric": "latency_p99", "max": "4s", "for": "90s"},
            {"metric": "rps", "min": 1, "max": 1000, "for": "1m"},
            {"metric": "cpu", "max": 90, "for": "1m"},
            {"metric": "prometheus", "query": 'sum(rate(x_total{service="{{service}}"}[1m]))', "max": 3, "for": "1m"},
            {"metric": "prometheus", "query": 'sum(up{version="{{version}}"})', "min": 1, "for": "2m"},
        ]}})
    per_version = render_alert_rules(spec)
    assert "# Left out: cpu > 90% for 1m" in per_version and "needs {{version}}" in per_version
    assert "alert: HighErrorRate" in per_version and "alert: LowRps" in per_version
    one = render_alert_rules(spec, version="2.0.0")
    assert 'version="2.0.0"' in one and "LowPrometheusQuery" in one
    (tmp_path / "a.yml").write_text(per_version)
    (tmp_path / "b.yml").write_text(one)
    done = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "a.yml"), str(tmp_path / "b.yml")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout and "SUCCESS: 7 rules found" in done.stdout


# --- real processes: demo apps behind a router, scraped by a private Prometheus -------------------------------


@dataclass
class Stack:
    router: RouterProc
    prometheus: PrometheusProc
    sent: list[int]
    ledger: RouterProc  # a second router (service "ledger", version 0.1.0): only the requests a test sends


def _demo(port: int, version: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RELEASEGATE_VERSION": version, "RELEASEGATE_SERVICE": "shop",
           "FAULTS": "2.0.0:error_rate=0.5"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "releasegate.demoapp", "--port", str(port)], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not available():
        pytest.skip("prometheus/promtool not installed")
    tmp = tmp_path_factory.mktemp("prom")
    ports = {"1.0.0": free_port(), "2.0.0": free_port()}
    apps = [_demo(port, version, tmp / f"demo-{version}.log") for version, port in ports.items()]
    router = start_router(tmp, "--sticky", "none")
    backend = KeepAliveBackend("ledger").start()
    (tmp / "ledger").mkdir()
    ledger = start_router(tmp / "ledger", "--sticky", "none", service="ledger")
    prometheus: PrometheusProc | None = None
    stop = threading.Event()
    sent = [0]

    def traffic() -> None:
        with httpx.Client(base_url=router.url, timeout=5, trust_env=False) as client:
            while not stop.is_set():
                try:
                    client.get("/")
                    sent[0] += 1
                except httpx.HTTPError:
                    pass
                stop.wait(0.005)  # pacing, about 100 requests a second, not synchronisation

    thread = threading.Thread(target=traffic, daemon=True)
    try:
        for version, port in ports.items():
            wait_until(functools.partial(_answers, port), what=f"demo app {version}")
        assert router.put_routes([{"version": v, "weight": 50, "backends": [f"127.0.0.1:{p}"]}
                                  for v, p in ports.items()]).status_code == 200
        assert ledger.put_routes([{"version": "0.1.0", "weight": 100,
                                   "backends": [backend.address]}]).status_code == 200
        thread.start()
        prometheus = start_prometheus(tmp / "prometheus", [router.admin, ledger.admin])
        yield Stack(router, prometheus, sent, ledger)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        if prometheus is not None:
            prometheus.stop()
        router.stop()
        ledger.stop()
        backend.stop()
        for app in apps:
            app.terminate()
        for app in apps:
            try:
                app.wait(15)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait(5)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _requests_total(text: str, version: str) -> int:
    return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_requests_total{") and f'version="{version}"' in line)


@pytest.mark.slow
def test_router_metrics_endpoint_is_valid_exposition_and_counts_up(stack: Stack) -> None:
    def get() -> httpx.Response:
        return httpx.get(f"http://{stack.router.admin}/metrics", timeout=5, trust_env=False)

    first = get()
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = first.text.splitlines()
    assert all(line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line) for line in lines), first.text
    assert any(line.startswith("releasegate_router_inflight{") for line in lines)
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=first.text, capture_output=True, text=True,
                          timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    before = {v: _requests_total(first.text, v) for v in ("1.0.0", "2.0.0")}
    wait_until(lambda: all(_requests_total(get().text, v) > before[v] for v in before), timeout=15,
               what="both versions' request counters to increase")


@pytest.mark.slow
async def test_seed_queries_through_prometheus_tell_the_faulty_version_apart(stack: Stack) -> None:
    source = PrometheusMetrics(Prometheus.model_validate({"url": stack.prometheus.url, "timeout": "3s"}))
    try:
        async def bad_rate() -> float | None:
            value = await source.query(_q("2.0.0", ERRORS))
            return value if value is not None and value > 0.05 else None

        assert await eventually(bad_rate, within=30, what="a 5xx rate > 0.05 for 2.0.0", every=0.5) > 0.05

        async def good_rate() -> float | None:
            value = await source.query(_q("1.0.0", ERRORS))
            return None if value is None else value + 1  # +1: a true 0.0 is the answer we wait for

        assert await eventually(good_rate, within=15, what="a 5xx rate for 1.0.0", every=0.5) - 1 < 0.01
        p95 = await source.query(_q("2.0.0", P95))
        assert p95 is not None and math.isfinite(p95) and 0 < p95 < 5
        # No data is None, never 0: an unknown version, an ambiguous result, a bad query, a missing baseline.
        assert await source.query(_q("9.9.9", ERRORS)) is None
        assert "no series" in str(source.last_error)
        assert await source.query(_q("2.0.0", 'http_requests_total{version="{{version}}"}')) is None
        assert "series" in str(source.last_error)
        assert await source.query(_q("2.0.0", "rate(http_requests_total[")) is None
        assert await source.query(_q("2.0.0", 'up{version="{{baseline_version}}"}')) is None
        assert stack.sent[0] > 0
    finally:
        await source.aclose()


@pytest.mark.slow
def test_exact_status_codes_through_prometheus(stack: Stack) -> None:
    """Known requests through the ledger router: PromQL on status=~"5..", status="200" and status=~"2.." gives
    exactly what was sent, and the router's own exposition agrees."""
    sent = {"/": 6, "/status/503": 3, "/status/502": 1, "/status/404": 2, "/status/204": 1}
    with httpx.Client(base_url=stack.ledger.url, timeout=5, trust_env=False) as client:
        for path, n in sent.items():
            for _ in range(n):
                client.get(path)
    text = httpx.get(f"http://{stack.ledger.admin}/metrics", timeout=5, trust_env=False).text
    prefix = 'http_requests_total{service="ledger",version="0.1.0",status='
    assert sorted(line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)) == [
        '"200"} 6', '"204"} 1', '"404"} 2', '"500"} 0', '"502"} 1', '"503"} 3']
    ledger = 'service="ledger",version="0.1.0"'
    expected = {
        f'sum(http_requests_total{{{ledger},status=~"5.."}})': 4.0,
        f'http_requests_total{{{ledger},status="200"}}': 6.0,
        f'sum(http_requests_total{{{ledger},status=~"2.."}})': 7.0,
        f'http_requests_total{{{ledger},status="404"}}': 2.0,
        f'sum(http_requests_total{{{ledger}}})': 13.0,
    }

    def answers() -> dict[str, float | None]:
        got: dict[str, float | None] = {}
        for query in expected:
            result = stack.prometheus.query(query)["data"]["result"]
            got[query] = float(result[0]["value"][1]) if len(result) == 1 else None
        return got

    wait_until(lambda: answers() == expected, timeout=20, what="Prometheus to scrape the ledger's counters")
    assert answers() == expected


@pytest.mark.slow
async def test_judge_counts_through_prometheus_are_the_routers_own_totals(stack: Stack) -> None:
    """``analysis.judge.counts`` from a real Prometheus scraping the ledger router (after the test above: it counts
    the ledger's requests exactly): once scraped, the readings equal the router's own GET /totals, latency bucket
    for bucket (the router's le edges map one to one), and two looks give exactly the requests sent between them."""
    ledger = 'service="{{service}}",version="{{version}}"'
    counts = JudgeCounts(requests=f"sum(http_requests_total{{{ledger}}})",
                         errors=f'sum(http_requests_total{{{ledger},status=~"5.."}})',
                         latency=f"sum by (le) (http_request_duration_seconds_bucket{{{ledger}}})")
    source = PrometheusMetrics(Prometheus.model_validate({"url": stack.prometheus.url, "timeout": "3s"}))
    reader = PrometheusCounts("ledger", counts, source)

    async def look() -> Snapshot | None:
        """A look once Prometheus has scraped everything the router counted (None before)."""
        own = stack.ledger.admin_get("/totals")["versions"]["0.1.0"]
        try:
            snap = await reader.totals(("0.1.0",))
        except ProviderError:
            return None
        raw = reader.raw["0.1.0"]
        return snap if raw == Reading(own["requests"], own["errors"], tuple(dense(own["hist"]))) else None

    try:
        async with httpx.AsyncClient(base_url=stack.ledger.url, timeout=5, trust_env=False) as client:
            await client.get("/")  # the version has its series
            first = await eventually(look, within=20, what="Prometheus to scrape the ledger", every=0.2)
            for path in ("/", "/", "/status/503", "/status/502", "/status/404"):
                await client.get(path)
            second = await eventually(look, within=20, what="Prometheus to scrape 5 more requests", every=0.2)
    finally:
        await source.aclose()
    served = increments(first, second)["0.1.0"]
    assert (served["requests"], served["errors"], sum(served["hist"].values())) == (5, 2, 5)
    assert reader.last_error is None


def test_module_imports_are_cheap_for_the_router() -> None:
    """The router process imports exposition; it must not drag in httpx, pydantic or yaml."""
    code = ("import sys, releasegate.router.admin; "
            "print(','.join(m for m in ('httpx', 'pydantic', 'yaml') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
