"""The judge's counts from Prometheus counters (``analysis.judge.counts``, docs/judge.md): the latency buckets
moved into the router's layout, a counter that went down, what validate says, and which totals the providers
hand the judge. The real Prometheus parts are in tests/test_prometheus.py and tests/test_judge_rollouts.py."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from releasegate.engine.clock import SystemClock
from releasegate.errors import ProviderError
from releasegate.providers.metrics.prometheus import PrometheusMetrics
from releasegate.providers.metrics.prometheus_counts import (
    PrometheusCounts,
    Reading,
    advance,
    buckets_of,
    router_bucket,
    to_router,
)
from releasegate.providers.metrics.totals import Snapshot, increments
from releasegate.providers.registry import build_providers
from releasegate.router.exposition import LE_LABELS
from releasegate.router.stats import BOUNDS, NBUCKETS
from releasegate.spec import SpecError, load_spec_text
from releasegate.spec.judge_counts import JudgeCounts
from releasegate.spec.sources import Prometheus
from tests.support.prometheus import free_port

REQUESTS = 'sum(http_requests_total{service="{{service}}",version="{{version}}"})'
ERRORS = 'sum(http_requests_total{service="{{service}}",version="{{version}}",status=~"5.."})'
LATENCY = 'sum by (le) (http_request_duration_seconds_bucket{service="{{service}}",version="{{version}}"})'


def _cumulative(edges: list[float], counts: list[int]) -> list[tuple[float, float]]:
    running, out = 0, []
    for le, n in zip(edges, counts, strict=True):
        running += n
        out.append((le, float(running)))
    return out


def test_the_routers_own_edges_map_one_to_one() -> None:
    """A Prometheus scraping the built-in router's GET /metrics: le printed to 6 digits, read back as floats,
    every bucket lands where the router counted it."""
    rng = random.Random(7)
    counts = [rng.choice((0, 0, 1, 5, 40)) for _ in range(NBUCKETS)]
    edges = [float(le) for le in LE_LABELS]
    assert edges[-1] == math.inf
    hist, why = to_router(_cumulative(edges, counts))
    assert why is None and hist == tuple(counts)


def test_other_edges_go_to_the_router_bucket_of_their_geometric_middle() -> None:
    """Prometheus' default buckets: each count lands in one router bucket (integer counts, none lost); coarse
    buckets lose resolution, the same way for both versions."""
    edges = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.inf]
    counts = [3, 1, 0, 7, 2, 0, 0, 1, 0, 0, 4, 2]
    hist, why = to_router(_cumulative(edges, counts))
    assert why is None and hist is not None and len(hist) == NBUCKETS and sum(hist) == sum(counts)
    assert hist[router_bucket(0.005, 0.01)] == 1
    middle = BOUNDS[router_bucket(0.005, 0.01)]
    assert BOUNDS[router_bucket(0.005, 0.01) - 1] <= math.sqrt(0.005 * 0.01) < middle
    assert router_bucket(0.0, 0.005) == router_bucket(0.0025, 0.0025 * 1.0001)  # the first: at hi / 2
    above = router_bucket(10, math.inf)  # above the last edge: half a router bucket above it
    assert hist[above] == 2 and 10 < BOUNDS[above] <= 10 * 1.25 * 1.25
    assert router_bucket(BOUNDS[-1] * (1 - 1e-6), math.inf) == NBUCKETS - 1  # the router's open bucket
    assert router_bucket(0.0, 1e-9) == 0 and router_bucket(1e3, math.inf) == NBUCKETS - 1
    hist2, why2 = to_router([(0.1, 5.0), (0.2, 4.0)])
    assert hist2 is None and "not cumulative" in str(why2)


def test_a_sum_by_le_answer_is_parsed_or_refused_with_a_reason() -> None:
    def answer(*series: dict[str, object]) -> dict[str, object]:
        return {"status": "success", "data": {"resultType": "vector", "result": list(series)}}

    good = answer({"metric": {"le": "+Inf"}, "value": [1, "9"]}, {"metric": {"le": "0.5"}, "value": [1, "4"]})
    assert buckets_of(good) == ([(0.5, 4.0), (math.inf, 9.0)], None)
    assert "no series" in str(buckets_of(answer())[1])
    assert "one series per le" in str(buckets_of(answer({"metric": {}, "value": [1, "3"]}))[1])
    twice = answer({"metric": {"le": "1"}, "value": [1, "3"]}, {"metric": {"le": "1.0"}, "value": [1, "3"]})
    assert "several series per le" in str(buckets_of(twice)[1])
    assert "error" in str(buckets_of({"status": "error", "error": "bad"})[1])
    assert "returned nan" in str(buckets_of(answer({"metric": {"le": "1"}, "value": [1, "NaN"]}))[1])


def test_a_counter_that_went_down_leaves_the_interval_out_and_counting_restarts_from_there() -> None:
    sums, why = advance({}, {}, {"c": Reading(100, 5), "b": Reading(200, 1)})
    assert why is None and sums == {"c": Reading(0, 0), "b": Reading(0, 0)}  # a first reading only sets the start
    before = {"c": Reading(100, 5), "b": Reading(200, 1)}
    sums, why = advance(sums, before, {"c": Reading(130, 8), "b": Reading(240, 1)})
    assert why is None and sums == {"c": Reading(30, 3), "b": Reading(40, 0)}
    # One of the canary's instances restarted: its sum over instances drops without going to 0. Nothing is
    # counted for any version in that interval (not the baseline's 50 either: the two sides stay paired).
    restarted = {"c": Reading(60, 2), "b": Reading(290, 2)}
    sums, why = advance(sums, {"c": Reading(130, 8), "b": Reading(240, 1)}, restarted)
    assert sums == {"c": Reading(30, 3), "b": Reading(40, 0)} and "c went down" in str(why)
    sums, why = advance(sums, restarted, {"c": Reading(70, 3), "b": Reading(300, 2)})  # from the new readings
    assert why is None and sums == {"c": Reading(40, 4), "b": Reading(50, 0)}
    # Errors that grew more than requests: the queries do not count the same requests; no data either.
    same, why = advance(sums, {"c": Reading(70, 3), "b": Reading(300, 2)},
                        {"c": Reading(71, 6), "b": Reading(310, 2)})
    assert same == sums and "errors grew more than its requests" in str(why)
    # A latency bucket that went down is a reset too; the histograms otherwise add up bucket by bucket.
    h = (0,) * (NBUCKETS - 2)
    sums, why = advance({}, {}, {"c": Reading(1, 0, (1, 0, *h))})
    sums, why = advance(sums, {"c": Reading(1, 0, (1, 0, *h))}, {"c": Reading(4, 0, (2, 2, *h))})
    assert why is None and sums["c"] == Reading(3, 0, (1, 2, *h))
    _, why = advance(sums, {"c": Reading(4, 0, (2, 2, *h))}, {"c": Reading(5, 0, (1, 4, *h))})
    assert "went down" in str(why)
    # What the judge's feed sees: increments of totals that only grow, so the router's rule for a drop (the
    # counting process restarted: the new totals are the increment) never meets a Prometheus sum.
    first = Snapshot("prometheus:1", {"c": {"requests": 30, "errors": 3, "hist": {}}})
    second = Snapshot("prometheus:1", {"c": {"requests": 30, "errors": 3, "hist": {}}})
    assert increments(first, second) == {"c": {"requests": 0, "errors": 0, "hist": {}}}


async def test_an_unreachable_prometheus_is_no_data_with_its_reason() -> None:
    source = PrometheusMetrics(Prometheus.model_validate({"url": f"http://127.0.0.1:{free_port()}",
                                                          "timeout": "2s"}))
    counts = PrometheusCounts("shop", JudgeCounts(requests=REQUESTS, errors=ERRORS), source)
    with pytest.raises(ProviderError):
        await counts.totals(("2.0.0", "1.0.0+baseline"))
    assert counts.last_error is not None and counts.last_error.startswith("counts.requests for 2.0.0: Prometheus")
    assert "unreachable" in counts.last_error
    await source.aclose()


HEAD = 'service: shop\nplatform: {command: "python3 e.py {port}"}\n'
PROM = "metrics: {prometheus: {url: 'http://127.0.0.1:9090'}}\n"
NGINX_OFF = 'router: {kind: nginx, listen: "127.0.0.1:8080", config_file: /tmp/shop.conf, access_log: "off"}\n'


def _judge(counts: str, metrics: str = "") -> str:
    return f"analysis:\n  rules: []\n  judge:\n{metrics}    counts: {counts}\n"


def test_validate_says_what_counts_need_in_one_located_line() -> None:
    both = f"{{requests: '{REQUESTS}', errors: '{ERRORS}'}}"
    for text, expected in [
        (HEAD + _judge(both, "    metrics: [{metric: error_rate, max_increase: 1%}]\n"),
         "shop.yaml:7:5: the judge's counts from Prometheus need a source: add metrics: {prometheus:"),
        (HEAD + _judge(both) + PROM,
         "shop.yaml:6:5: the default judge metric latency needs counts.latency (the version's histogram buckets"),
        (HEAD + _judge(both, "    metrics: [{metric: error_rate, max_increase: 1%}, {metric: latency, "
                             "max_increase: 10%}]\n") + PROM,
         "shop.yaml:6:64: judge metric latency needs counts.latency"),
        (HEAD + _judge(f"{{requests: '{REQUESTS}'}}", "    metrics: [{metric: error_rate, max_increase: 1%}]\n")
         + PROM, "shop.yaml:7:5: missing required key 'errors' in analysis.judge.counts"),
        (HEAD + _judge("{requests: 'sum(rate(http_requests_total{version=\"{{version}}\"}[1m]))', "
                       f"errors: '{ERRORS}'}}", "    metrics: [{metric: error_rate, max_increase: 1%}]\n") + PROM,
         "shop.yaml:7:24: counts.requests uses rate(): the judge needs the raw cumulative counter"),
        (HEAD + _judge(f"{{requests: 'sum(http_requests_total)', errors: '{ERRORS}'}}",
                       "    metrics: [{metric: error_rate, max_increase: 1%}]\n") + PROM,
         "shop.yaml:7:24: counts.requests must select one version with {{version}}"),
    ]:
        with pytest.raises(SpecError) as info:
            load_spec_text(text, "shop.yaml")
        lines = str(info.value).splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_counts_let_the_judge_work_behind_an_nginx_that_logs_nothing(tmp_path: Path) -> None:
    """validate refuses a judged error_rate or latency behind nginx with access_log: off (nothing counts there);
    with counts from Prometheus it is accepted, and the providers hand the judge Prometheus' totals."""
    counts = f"{{requests: '{REQUESTS}', errors: '{ERRORS}', latency: '{LATENCY}'}}"
    spec = load_spec_text(HEAD + NGINX_OFF.replace("/tmp/shop.conf", str(tmp_path / "shop.conf"))
                          + _judge(counts) + PROM, "shop.yaml")
    assert spec.analysis.judge is not None and spec.analysis.judge.counts is not None
    assert [m.metric for m in spec.analysis.judge.metrics] == ["error_rate", "latency"]
    with pytest.raises(SpecError, match="cannot be counted by router kind nginx with access_log: off"):
        load_spec_text(HEAD + NGINX_OFF + "analysis: {rules: [], judge: {}}\n", "shop.yaml")

    import asyncio

    async def made() -> object:
        providers = await build_providers(spec, tmp_path, tmp_path / "state", SystemClock())
        try:
            return getattr(providers.totals, "__self__", None)
        finally:
            if providers.close is not None:
                await providers.close()

    assert isinstance(asyncio.run(made()), PrometheusCounts)
    path = tmp_path / "shop.yaml"
    path.write_text(HEAD + NGINX_OFF.replace("/tmp/shop.conf", str(tmp_path / "shop.conf")) + _judge(counts) + PROM)
    done = subprocess.run([sys.executable, "-m", "releasegate", "validate", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "judge (error_rate, latency, alpha 0.01, counts from Prometheus)" in done.stdout
