"""The sequential judge behind a real nginx and a real HAProxy: the totals each router's source keeps (nginx's
access-log tail, HAProxy's ring reader; releasegate/providers/metrics/totals.py) are what the judge is fed.

Per router, one rollout under load: 1.0.0, then a canary of 3.0.0 beside its baseline ``1.0.0+baseline``, where
half of 3.0.0's answers fail (FAULTS, counted, not random). No threshold rule is set, so the rollback is the
judge's doing: its reason starts with ``judge:``, and its verdict counts canary and baseline requests for both
metrics (errors from the status codes, latency from the per-version histograms), which only the router's totals
can give it. tests/test_judge_rollouts.py covers the same judge behind the built-in router.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from tests.support.haproxy import HAPROXY, Haproxy
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.rollouts import Load, cleanup, free_port, write_spec

pytestmark = pytest.mark.slow

JUDGE = ("  baseline: true\n  judge: {alpha: 0.01, max_extension: 60s, metrics: [{metric: error_rate, "
         "max_increase: 10%}, {metric: latency, max_increase: 50%}]}\n")


def _spec(tmp: Path, port: int, router_yaml: str) -> Path:
    path = write_spec(tmp, port, "{canary: {steps: [{weight: 30, pause: 1s}]}}", rules="[]",
                      faults="3.0.0:error_rate=0.5", post_promotion="0s", smoke_path="/health",
                      rollback="{mode: immediate}")
    builtin = f'router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}'
    text = path.read_text().replace(builtin, f"router: {router_yaml}")
    path.write_text(text.replace("analysis:\n", "analysis:\n" + JUDGE))
    return path


async def _judged(tmp: Path, port: int, router_yaml: str) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """The rollout of the module docstring: the faulty rollout's end state, its rollback event, what the load got."""
    state, path = tmp / "state", _spec(tmp, port, router_yaml)
    ctx = service.new_context(state)
    try:
        first = await asyncio.wait_for(service.deploy(ctx, path, "1.0.0"), 60)
        assert first.status == "promoted", first.reason
        async with Load(f"http://127.0.0.1:{port}/api/items") as load:
            bad = await asyncio.wait_for(service.deploy(ctx, path, "3.0.0"), 90)
        said = next(h for h in service.history(ctx, "shop") if h["id"] == bad.id)["events"]
        [rollback] = [e for e in said if e["kind"] == "rollback"]
        return bad, rollback, load.by_version
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
async def test_the_judge_rolls_back_a_faulty_canary_from_the_routers_totals(
        router: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    port, router_yaml = request.getfixturevalue(f"{router}_router")
    bad, rollback, by_version = await _judged(tmp_path, port, router_yaml)
    assert bad.status == "rolled_back", bad.reason
    assert bad.reason is not None and bad.reason.startswith("judge: 3.0.0 is worse than 1.0.0+baseline beyond the "
                                                            "margin on error_rate"), bad.reason
    verdict = rollback["data"]["judge"]
    assert verdict["outcome"] == "regression"
    metrics = {m["metric"]: m for m in verdict["metrics"]}
    errors = metrics["error_rate"]
    assert errors["evalue"] >= errors["threshold"] and errors["hi"] > errors["margin"] == 0.1  # the evidence
    for m in metrics.values():  # both sides counted, errors and latency histograms alike
        assert m["canary_requests"] > 0 and m["baseline_requests"] > 0, (router, m)
    assert by_version.get("3.0.0", 0) > 0  # it did take traffic (the baseline answers as 1.0.0: same artifact)
