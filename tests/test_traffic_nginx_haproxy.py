"""Per-version counts and the data plane's own view behind a real nginx and a real HAProxy.

Before, only the built-in router recorded what reached each version (``data.traffic``): a report of a rollout
behind nginx or HAProxy said "not recorded", and the dashboard's rollout page said "not read for router kind
nginx yet". One scenario per router (module fixtures, real demo-app instances, real load): 1.0.0, then a canary of
2.0.0 held at 50 % by a manual step, under load of which 3 in 10 requests to 2.0.0 fail (FAULTS, counted, not
random); the load is stopped while the rollout holds, so the counts the controller records must come to exactly
what the load received per version, errors included. The data plane is read while it holds (weights and
instances, directly and on the dashboard's rollout page), HAProxy's counters are checked without the ring, the
operator rolls the canary back, the report shows the counts, and with the proxy stopped the data plane gives its
one-line reason.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate import service
from releasegate.engine.clock import SystemClock
from releasegate.engine.state import RolloutState
from releasegate.providers.metrics.haproxy import HaproxyStatsMetrics
from releasegate.providers.registry import build_providers
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.reports.build import build
from releasegate.reports.model import Report
from releasegate.reports.render import render
from releasegate.server.auth import issue
from releasegate.server.dashboard.data_plane import data_plane
from releasegate.spec import load_spec_text
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from releasegate.store.sqlite import Store
from tests.support.haproxy import HAPROXY, Haproxy
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.rollouts import Load, cleanup, free_port, write_spec
from tests.support.server import app_in_this_loop
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which(NGINX) is None, reason="nginx is not installed"),
              pytest.mark.skipif(shutil.which(HAPROXY) is None, reason="haproxy is not installed")]

MANUAL = "{canary: {steps: [{weight: 50}]}}"  # no pause: holds until an operator acts
FAULTS = "2.0.0:error_rate=0.3"  # 3 in 10 of 2.0.0's requests answer 500, counted by the demo app
RULES = "[{metric: error_rate, max: 0.9, for: 1s}]"  # analysed every 500 ms, never breached by 30 %


@dataclass
class Seen:
    """What the test saw and what releasegate recorded, for the assertions."""

    sent: dict[str, int]  # requests per version as the load received them (X-Version)
    failed: dict[str, int]  # of which 5xx
    recorded: dict[str, Any]  # the controller's last data.traffic while the rollout held
    p95: dict[str, float | None]  # a p95 per version recorded while the load ran
    holding: tuple[str, list[dict[str, Any]]]  # data_plane while the rollout held at 50 %
    final: RolloutState
    report: Report
    markdown: str
    down: tuple[str, list[dict[str, Any]]]  # data_plane with the proxy stopped
    extra: dict[str, Any] = field(default_factory=dict)


def _latest_traffic(state: Path, rollout_id: str) -> dict[str, Any]:
    store = Store(state)
    try:
        events = store.events("shop", rollout_id=rollout_id, limit=100_000)
    finally:
        store.close()
    return next((e["data"] for e in reversed(events) if isinstance(e["data"].get("traffic"), dict)), {})


async def _rollout_page(state: Path, tmp: Path, rollout_id: str) -> str:
    """The dashboard's rollout page, from the server's app in this event loop, for a signed-in viewer."""
    async with app_in_this_loop(state, tmp) as app, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://releasegate", timeout=30) as c:
        signed = await c.post("/signin", data={"token": issue(state, "vera", "viewer"), "next": "/"},
                              headers={"Origin": "http://releasegate"})  # as a browser sends it
        assert signed.status_code == 303, signed.text
        answer = await c.get(f"/rollouts/{rollout_id}")
        assert answer.status_code == 200, answer.text
        return answer.text


async def _scenario(tmp: Path, port: int, router_yaml: str, stop_proxy: Callable[[], None],
                    during_hold: Callable[[], Awaitable[dict[str, tuple[int, int]]]] | None = None) -> Seen:
    """The rollout described in the module docstring, behind the router ``router_yaml`` configures."""
    state = tmp / "state"
    path = write_spec(tmp, port, MANUAL, faults=FAULTS, rules=RULES, smoke_path="/health",
                      rollback="{mode: immediate}")
    builtin = f'router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}'
    path.write_text(path.read_text().replace(builtin, f"router: {router_yaml}"))
    ctx = service.new_context(state)
    try:
        first = await asyncio.wait_for(service.deploy(ctx, path, "1.0.0"), 60)
        assert first.status == "promoted", first.reason
        task = asyncio.create_task(asyncio.wait_for(service.deploy(ctx, path, "2.0.0"), 60))
        await eventually(lambda: (service.status(ctx, "shop")[0]["rollout"] or {}).get("waiting"), 30,
                         "the canary to hold at its manual step")
        store = Store(state)
        try:
            rec = store.active_rollout("shop")
        finally:
            store.close()
        assert rec is not None
        p95: dict[str, float | None] = {}

        async def p95_recorded() -> bool:
            for version, counted in _latest_traffic(state, rec.state.id).get("traffic", {}).items():
                if counted.get("p95") is not None:
                    p95[version] = counted["p95"]
            return len(p95) == 2

        async with Load(f"http://127.0.0.1:{port}/api/items", concurrency=4) as load:
            await eventually(lambda: min(load.by_version.get(v, 0) for v in ("1.0.0", "2.0.0")) >= 30, 20,
                             "load on both versions")
            await eventually(p95_recorded, 10, "a p95 per version recorded under load")
        holding = await data_plane(state, rec)
        page = await _rollout_page(state, tmp, rec.state.id)
        extra = await during_hold() if during_hold is not None else {}
        sent = {v: load.by_version.get(v, 0) + extra.get(v, (0, 0))[0] for v in ("1.0.0", "2.0.0")}
        failed = {v: sum(f.endswith(f"from {v}") for f in load.failures) + extra.get(v, (0, 0))[1]
                  for v in ("1.0.0", "2.0.0")}

        def caught_up() -> dict[str, Any] | None:
            """The controller's latest record once it counts every request the load got (or more: a bug)."""
            data = _latest_traffic(state, rec.state.id)
            counted = data.get("traffic", {})
            total = sum(int(c.get("requests", 0)) for c in counted.values())
            return data if total >= sum(sent.values()) else None

        recorded = await eventually(caught_up, 15, f"the recorded counts to reach {sent}")
        assert (await service.send_command(ctx, "shop", "rollback")).applied
        final = await task
        store = Store(state)
        try:
            done = store.rollout(rec.state.id)
            assert done is not None
            report = build(state, store, done)
        finally:
            store.close()
        stop_proxy()

        async def gone() -> tuple[str, list[dict[str, Any]]] | None:
            """A proxy still exiting may reset the connection it accepted; once gone, it refuses them."""
            line, instances = await data_plane(state, rec)
            return (line, instances) if "failed during" not in line else None

        down = await eventually(gone, 10, "the stopped proxy to refuse connections")
        return Seen(sent, failed, recorded["traffic"], p95, holding, final, report, render(report, "md"),
                    down, extra={"window": recorded.get("traffic_window"), "page": page})
    finally:
        await cleanup(state, path)


@pytest.fixture(scope="module")
def behind_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    tmp = tmp_path_factory.mktemp("nginx-traffic")
    nginx = PrivateNginx(tmp / "nginx")
    nginx.start()
    try:
        yield asyncio.run(_scenario(tmp, nginx.listen_port, nginx.router_yaml(", drain_timeout: 5s, drain_grace: 1s"),
                                    nginx.stop))
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def behind_haproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    tmp = tmp_path_factory.mktemp("haproxy-traffic")
    short = Path(tempfile.mkdtemp(prefix="rg-tr-"))  # a unix socket path must stay under 108 bytes
    port = free_port()
    router_yaml = (f'{{kind: haproxy, listen: "127.0.0.1:{port}", config_file: "{tmp / "h.cfg"}", '
                   f'stats_socket: "{short / "admin.sock"}", slots: 4, drain_timeout: 5s}}')
    spec = HaproxyRouterSpec(kind="haproxy", listen=f"127.0.0.1:{port}", config_file=str(tmp / "h.cfg"),
                             stats_socket=str(short / "admin.sock"), slots=4)
    router = HaproxyRouter(spec, "shop")
    router.ensure_config()  # as an operator would: render, then start haproxy on it under its supervisor
    proc = Haproxy(router.config_file, short / "admin.sock", tmp / "haproxy.pid").start()

    async def counters_without_the_ring() -> dict[str, tuple[int, int]]:
        """A source without the ring (an operator's configuration) counts from ``show stat``: a first reading,
        twenty more requests, and the change is those twenty, errors included."""
        counters = HaproxyStatsMetrics(router)
        before = await counters.counts(60.0, 1.0)
        got: dict[str, tuple[int, int]] = {}
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            for _ in range(20):
                answer = await client.get(f"http://127.0.0.1:{port}/api/items")
                client.cookies.clear()
                n, bad = got.get(answer.headers["x-version"], (0, 0))
                got[answer.headers["x-version"]] = (n + 1, bad + (answer.status_code >= 500))
        after = await counters.counts(60.0, 1.0)

        def change(v: str, key: str) -> int:
            return int(after[v][key] or 0) - int(before.get(v, {}).get(key) or 0)

        assert {v: (change(v, "requests"), change(v, "errors")) for v in after
                if change(v, "requests")} == got, (before, after, got)
        assert all(c["p95"] is None for c in after.values())  # no ring: no latency
        return got

    try:
        yield asyncio.run(_scenario(tmp, port, router_yaml, proc.stop, counters_without_the_ring))
    finally:
        proc.stop()
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(params=["nginx", "haproxy"])
def seen(request: pytest.FixtureRequest) -> Seen:
    value: Seen = request.getfixturevalue(f"behind_{request.param}")
    return value


def test_the_recorded_counts_are_what_the_load_received_per_version(seen: Seen) -> None:
    assert seen.sent["2.0.0"] >= 30 and seen.failed["2.0.0"] > 0 and seen.failed["1.0.0"] == 0
    assert set(seen.recorded) == {"1.0.0", "2.0.0"}
    for version in ("1.0.0", "2.0.0"):
        assert seen.recorded[version]["requests"] == seen.sent[version], (seen.recorded, seen.sent)
        assert seen.recorded[version]["errors"] == seen.failed[version], (seen.recorded, seen.failed)
    assert all(p is not None and 0 < p < 2.0 for p in seen.p95.values()), seen.p95  # seconds
    assert 0 < seen.extra["window"] <= 3600


def test_the_report_shows_the_counts_per_version(seen: Seen) -> None:
    assert seen.final.status == "rolled_back", seen.final.reason
    counts = {t.version: (t.requests, t.errors) for t in seen.report.traffic or []}
    assert counts == {v: (seen.sent[v], seen.failed[v]) for v in ("1.0.0", "2.0.0")}, counts
    assert "not recorded" not in seen.report.traffic_note
    section = seen.markdown.split("## 3. Traffic per version", 1)[1].split("\n## ", 1)[0]
    assert str(seen.sent["2.0.0"]) in section and "not recorded" not in section, section
    impact = seen.report.postmortem.impact if seen.report.postmortem else None
    assert impact is not None and impact.requests == seen.sent["2.0.0"] and impact.errors == seen.failed["2.0.0"]


def test_the_data_plane_reports_its_weights_and_instances_while_the_rollout_holds(seen: Seen) -> None:
    line, instances = seen.holding
    assert line == "1.0.0 50%, 2.0.0 50%"
    assert sorted((i["version"], i["weight"], i["health"]) for i in instances) == [
        ("1.0.0", 50, "ok"), ("1.0.0", 50, "ok"), ("2.0.0", 50, "ok"), ("2.0.0", 50, "ok")]
    assert all(i["address"].startswith("127.0.0.1:") for i in instances)
    page = seen.extra["page"]  # what the dashboard's rollout page shows of it
    assert '<dd id="reported">1.0.0 50%, 2.0.0 50%</dd>' in page and "not read for router kind" not in page
    assert all(f"<td>{i['address']}</td><td>50%</td><td>ok</td>" in page for i in instances)


def test_a_stopped_proxy_is_a_one_line_reason_in_place_of_the_weights(seen: Seen) -> None:
    line, instances = seen.down
    assert instances == [] and "\n" not in line
    assert line.startswith(("nginx did not answer: nginx does not serve the routes file",
                            "HAProxy did not answer: HAProxy does not answer on")), line


@pytest.mark.parametrize(("router", "counted"), [
    ("nginx", True), ("nginx_without_log", False), ("haproxy", True)])
async def test_the_registry_hands_each_counting_source_to_the_controller(tmp_path: Path, router: str,
                                                                           counted: bool) -> None:
    """What makes a report's counts "not recorded": only nginx with ``access_log: off`` cannot count. Building
    the providers starts nothing (nginx and HAProxy are not running here)."""
    nginx = PrivateNginx(tmp_path / "nginx")
    yaml = {"nginx": nginx.router_yaml(), "nginx_without_log": nginx.router_yaml(', access_log: "off"'),
            "haproxy": (f'{{kind: haproxy, listen: "127.0.0.1:{free_port()}", config_file: "{tmp_path / "h.cfg"}", '
                        f'stats_socket: "{tmp_path / "admin.sock"}"}}')}[router]
    spec = load_spec_text(f"service: shop\nplatform: {{command: 'true {{port}}'}}\nrouter: {yaml}\n"
                          "analysis: {rules: []}\n", "shop.yaml")
    providers = await build_providers(spec, tmp_path, tmp_path / "state", SystemClock())
    try:
        assert (providers.traffic is not None) is counted
    finally:
        if providers.close is not None:  # HAProxy's ring reader is a thread
            await providers.close()
