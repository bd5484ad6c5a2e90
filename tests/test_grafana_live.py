"""The dashboard's queries against real data: real rollouts behind the built-in router, `releasegate metrics`, and a
private Prometheus scraping both, then every panel's PromQL asked of that Prometheus as Grafana would ask it.

What a user would notice: the panels are not empty, the versions are the rollout's, the faulty version's error rate
stands out, the weight says who has the traffic, and the rollback shows up as an automatic trigger.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate import service
from releasegate.grafana import render_dashboard
from releasegate.spec import load_spec
from tests.support.prometheus import PrometheusProc, available, start_prometheus
from tests.support.rollouts import Load, cleanup, free_port, write_spec
from tests.support.wait import terminate, wait_until

CANARY = "{canary: {steps: [{weight: 50, pause: 1s}]}}"
GRAFANA = {"$service": "shop", "$version": "2.0.0", "$baseline": "1.0.0", "$__rate_interval": "5m",
           "$__range": "10m"}
"""What Grafana substitutes: the variables as a user would pick them after the story, wide enough windows."""


@dataclass
class Live:
    prometheus: PrometheusProc
    board: dict[str, Any]

    def ask(self, promql: str) -> dict[str, float]:
        """The instant result of ``promql`` with Grafana's variables filled, keyed by the series' labels."""
        for name, value in GRAFANA.items():
            promql = promql.replace(name, value)
        answer = self.prometheus.query(promql)
        assert answer["status"] == "success", (promql, answer)
        return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
                for r in answer["data"]["result"]}

    def panel(self, title: str, kind: str | None = None) -> list[str]:
        """The queries of the panel titled ``title`` (a custom rule's title is on a stat and a time series)."""
        found = [t["expr"] for p in self.board["panels"] if p["title"] == title and kind in (None, p["type"])
                 for t in p["targets"]]
        assert found, title
        return found


def _spec(tmp: Path, port: int, admin: int) -> Path:
    spec = write_spec(tmp, port, CANARY, faults="2.0.0:error_rate=0.5", smoke_path="/health")
    text = spec.read_text().replace("drain_timeout: 5s}", f'drain_timeout: 5s, admin: "127.0.0.1:{admin}"}}')
    spec.write_text(text)
    return spec


def _dashboard(tmp: Path, spec: Path) -> dict[str, Any]:
    """The dashboard of the same spec with a custom rule added (the rollouts do not evaluate it)."""
    custom = tmp / "dashboard-spec.yaml"
    text = spec.read_text().replace("rules: [{metric: error_rate, max: 0.05, for: 2s}]", (
        "rules:\n    - {metric: error_rate, max: 0.05, for: 2s}\n    - metric: prometheus\n"
        "      query: 'sum(rate(http_requests_total{service=\"{{service}}\",version=\"{{version}}\"}[1m]))'\n"
        "      min: 1\n      for: 1m"))
    custom.write_text(text + "metrics: {prometheus: {url: 'http://127.0.0.1:9'}}\n")
    data: dict[str, Any] = json.loads(render_dashboard(load_spec(custom)))
    return data


async def _story(state: Path, spec: Path, port: int) -> None:
    """1.0.0, then a faulty 2.0.0 under load, rolled back automatically."""
    ctx = service.new_context(state)
    await asyncio.wait_for(service.deploy(ctx, spec, "1.0.0"), 60)
    async with Load(f"http://127.0.0.1:{port}/api/items") as load:
        await load.wait_for(20)
        assert (await asyncio.wait_for(service.deploy(ctx, spec, "2.0.0"), 60)).status == "rolled_back"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not available():
        pytest.skip("prometheus not installed (scripts/test installs it)")
    tmp = tmp_path_factory.mktemp("grafana-live")
    state, port, admin, exporter_port = tmp / "state", free_port(), free_port(), free_port()
    spec = _spec(tmp, port, admin)
    exporter = subprocess.Popen([sys.executable, "-m", "releasegate", "metrics", "--listen",
                                 f"127.0.0.1:{exporter_port}", "--state-dir", str(state)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prometheus: PrometheusProc | None = None
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{exporter_port}/metrics"), timeout=20,
                   what="releasegate metrics to answer")
        prometheus = start_prometheus(tmp / "prometheus", [f"127.0.0.1:{admin}", f"127.0.0.1:{exporter_port}"])
        result = Live(prometheus, _dashboard(tmp, spec))
        wait_until(lambda: result.ask("releasegate_store_up"), timeout=20, what="Prometheus to scrape the exporter")
        try:
            asyncio.run(_story(state, spec, port))
            wait_until(lambda: result.ask('releasegate_rollouts_total{service="shop",outcome="rolled_back"} == 1'),
                       timeout=20, what="Prometheus to scrape the rolled-back state")
            yield result
        finally:
            asyncio.run(cleanup(state, spec))
    finally:
        if prometheus is not None:
            prometheus.stop()
        terminate(exporter)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_router_panels_show_each_version_and_the_faulty_one_stands_out(live: Live) -> None:
    errors = live.ask(live.panel("Error rate (5xx / all) per version")[0])
    assert set(errors) == {"version=1.0.0", "version=2.0.0"}
    assert errors["version=2.0.0"] > 0.05 > errors["version=1.0.0"]  # above the rule's red line, and not
    p95 = live.ask(live.panel("Latency p95 per version")[0])
    assert 0 < p95["version=1.0.0"] < 5 and 0 < p95["version=2.0.0"] < 5
    rps = live.ask(live.panel("Requests per second per version")[0])
    assert rps["version=1.0.0"] > 0 and rps["version=2.0.0"] > 0


@pytest.mark.slow
def test_controller_panels_show_the_weight_phase_and_the_automatic_rollback(live: Live) -> None:
    weights = {k.split("version=")[1]: v for k, v in live.ask(live.panel("Canary weight per version")[0]).items()}
    assert weights == {"1.0.0": 100, "2.0.0": 0}
    assert live.ask(live.panel("Canary weight of $version")[0]) and \
        list(live.ask(live.panel("Canary weight of $version")[0]).values()) == [0]
    triggers = live.ask(live.panel("Rollback triggers")[0])
    assert triggers["trigger=automatic"] > 0 and triggers["trigger=manual"] == 0
    (rollbacks,) = live.ask(live.panel("Rollback triggers in range")[0]).values()
    assert rollbacks > 0.5  # one, as increase() extrapolates it
    assert set(live.ask(live.panel("Rollout phase")[0])) == {"phase=finish"}
    decisions = live.ask(live.panel("Decisions")[0])
    assert {"decision=rollback", "decision=rolled_back"} <= set(decisions)
    annotation = live.board["annotations"]["list"][0]["target"]["expr"]
    assert set(live.ask(annotation)) == {"trigger=automatic"}


@pytest.mark.slow
def test_the_custom_panel_and_the_version_variables_read_real_series(live: Live) -> None:
    title = next(p["title"] for p in live.board["panels"] if p["title"].startswith("http_requests_total (rules[1]"))
    new, baseline = (live.ask(expr) for expr in live.panel(title, "timeseries"))
    ((_, new_rate),), ((_, baseline_rate),) = new.items(), baseline.items()
    assert new_rate > 0 and baseline_rate > 0  # 2.0.0 and 1.0.0 both took traffic
    variables = {v["name"]: v for v in live.board["templating"]["list"]}
    for name, expected in (("version", {"2.0.0"}), ("baseline", {"1.0.0"})):  # the latest rollout's two versions
        query, regex = variables[name]["query"], variables[name]["regex"]
        assert query.startswith("query_result(") and regex == '/version="([^"]+)"/'
        series = httpx.get(f"{live.prometheus.url}/api/v1/query", timeout=5, trust_env=False, params={
            "query": query.removeprefix("query_result(").removesuffix(")").replace("$service", "shop")
            .replace("$version", "2.0.0")}).json()["data"]["result"]
        assert {s["metric"]["version"] for s in series} == expected, (name, series)
