"""The sequential judge behind a real nginx and a real HAProxy: the totals each router's source keeps (nginx's
access-log tail, HAProxy's ring reader; releasegate/providers/metrics/totals.py) are what the judge is fed.

Per router, under one load: 1.0.0, then a healthy canary of 2.0.0 beside its baseline ``1.0.0+baseline``, which
the judge passes (every upper bound under its margin, both sides counted), then a canary of 3.0.0 beside
``2.0.0+baseline``, where half of 3.0.0's answers fail (FAULTS, counted, not random). No threshold rule is set, so
the pass and the rollback are the judge's doing: the rollback's reason starts with ``judge:``, and both verdicts
count canary and baseline requests for both metrics (errors from the status codes, latency from the per-version
histograms), which only the router's totals can give them. tests/test_judge_rollouts.py covers the same judge
behind the built-in router.

Why alpha 0.05, a 300 % latency margin and 100 ms intervals: a latency pass needs some dozens of blocks (one
observation per analysis interval, whatever the traffic), and the demo app's latencies on a busy test machine are
spread wide (one request is more than 4 x slower than another of the same version in 20-30 % of pairs). So
configured, the healthy canary passes in 3-7 s per router; with 0.01, 50 % and 500 ms it took 26 s."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.engine.state import RolloutState
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from tests.support.haproxy import HAPROXY, Haproxy
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.rollouts import Load, cleanup, free_port, write_spec

pytestmark = pytest.mark.slow

JUDGE = ("  baseline: true\n  judge: {alpha: 0.05, max_extension: 60s, metrics: [{metric: error_rate, "
         "max_increase: 10%}, {metric: latency, max_increase: 300%}]}\n")


def _spec(tmp: Path, port: int, router_yaml: str) -> Path:
    path = write_spec(tmp, port, "{canary: {steps: [{weight: 30, pause: 1s}]}}", rules="[]",
                      faults="3.0.0:error_rate=0.5", post_promotion="0s", smoke_path="/health",
                      rollback="{mode: immediate}")
    builtin = f'router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}'
    text = path.read_text().replace(builtin, f"router: {router_yaml}")
    path.write_text(text.replace("analysis:\n", "analysis:\n" + JUDGE).replace("interval: 500ms", "interval: 100ms"))
    return path


@dataclass
class Judged:
    """The rollouts of the module docstring, each end state with the event that carries its verdict."""

    good: RolloutState
    passed: dict[str, Any]  # the healthy canary's analysis_passed event
    bad: RolloutState
    rollback: dict[str, Any]  # the faulty one's rollback event
    by_version: dict[str, int]  # what the load got


async def _judged(tmp: Path, port: int, router_yaml: str) -> Judged:
    state, path = tmp / "state", _spec(tmp, port, router_yaml)
    ctx = service.new_context(state)

    def event(rollout_id: str, kind: str) -> dict[str, Any]:
        said = next(h for h in service.history(ctx, "shop") if h["id"] == rollout_id)["events"]
        [found] = [e for e in said if e["kind"] == kind]
        return dict(found)

    try:
        first = await asyncio.wait_for(service.deploy(ctx, path, "1.0.0"), 60)
        assert first.status == "promoted", first.reason
        async with Load(f"http://127.0.0.1:{port}/api/items") as load:
            good = await asyncio.wait_for(service.deploy(ctx, path, "2.0.0"), 90)
            bad = await asyncio.wait_for(service.deploy(ctx, path, "3.0.0"), 90)
        return Judged(good, event(good.id, "analysis_passed"), bad, event(bad.id, "rollback"), load.by_version)
    finally:
        await cleanup(state, path)


@pytest.fixture
def nginx_router(tmp_path: Path) -> Iterator[tuple[int, str]]:
    if shutil.which(NGINX) is None:
        pytest.skip("nginx is not installed")
    nginx = PrivateNginx(tmp_path / "nginx")
    nginx.start()
    try:
        yield nginx.listen_port, nginx.router_yaml(", drain_timeout: 5s, drain_grace: 1s")
    finally:
        nginx.stop()


@pytest.fixture
def haproxy_router(tmp_path: Path) -> Iterator[tuple[int, str]]:
    if shutil.which(HAPROXY) is None:
        pytest.skip("haproxy is not installed")
    short = Path(tempfile.mkdtemp(prefix="rg-jp-"))  # a unix socket path must stay under 108 bytes
    port = free_port()
    spec = HaproxyRouterSpec(kind="haproxy", listen=f"127.0.0.1:{port}", config_file=str(tmp_path / "h.cfg"),
                             stats_socket=str(short / "admin.sock"), slots=4)
    router = HaproxyRouter(spec, "shop")
    router.ensure_config()  # as an operator would: render, then start haproxy on it
    proc = Haproxy(router.config_file, short / "admin.sock", tmp_path / "haproxy.pid").start()
    try:
        yield port, (f'{{kind: haproxy, listen: "127.0.0.1:{port}", config_file: "{tmp_path / "h.cfg"}", '
                     f'stats_socket: "{short / "admin.sock"}", slots: 4, drain_timeout: 5s}}')
    finally:
        proc.stop()
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("router", ["nginx", "haproxy"])
async def test_the_judge_passes_a_healthy_canary_and_rolls_back_a_faulty_one_from_the_routers_totals(
        router: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    port, router_yaml = request.getfixturevalue(f"{router}_router")
    got = await _judged(tmp_path, port, router_yaml)
    good, bad, by_version = got.good, got.bad, got.by_version
    assert good.status == "promoted", good.reason  # the healthy canary passed on the judge's evidence
    verdict = got.passed["data"]["judge"]
    assert verdict["outcome"] == "pass"
    for m in verdict["metrics"]:  # every upper bound under its margin, from both sides' counts
        assert m["hi"] < m["margin"] and m["canary_requests"] > 0 and m["baseline_requests"] > 0, (router, m)
    assert bad.status == "rolled_back", bad.reason
    assert bad.reason is not None and bad.reason.startswith("judge: 3.0.0 is worse than 2.0.0+baseline beyond the "
                                                            "margin on error_rate"), bad.reason
    verdict = got.rollback["data"]["judge"]
    assert verdict["outcome"] == "regression"
    metrics = {m["metric"]: m for m in verdict["metrics"]}
    errors = metrics["error_rate"]
    assert errors["evalue"] >= errors["threshold"] and errors["hi"] > errors["margin"] == 0.1  # the evidence
    for m in metrics.values():  # both sides counted, errors and latency histograms alike
        assert m["canary_requests"] > 0 and m["baseline_requests"] > 0, (router, m)
    assert by_version.get("3.0.0", 0) > 0  # it did take traffic (the baseline answers as 1.0.0: same artifact)
