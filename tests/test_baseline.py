"""A baseline beside the canary (``analysis: {baseline: true}``): the previous version's artifact under its own route
entry with the canary's weight, removed when the rollout ends, whatever the outcome.

End to end behind the built-in router (real app processes, real HTTP; once with containers on a private Podman), one
HAProxy case (its version groups), nginx's configuration, and the engine's split and the spec's refusal, which need
no process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate import service
from releasegate.engine.phase import split
from releasegate.engine.simulate import simulate
from releasegate.engine.state import RolloutState
from releasegate.providers.base import MetricQuery, Routes, VersionRoute
from releasegate.providers.metrics.haproxy import HaproxyStatsMetrics
from releasegate.providers.platforms import make_platform
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.providers.routers.nginx_config import parse, render
from releasegate.reports.build import build
from releasegate.spec import SpecError, load_spec, load_spec_text
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec
from releasegate.store.sqlite import Store
from tests.support.container_specs import builtin, docker_spec, engine_with_images, labelled
from tests.support.haproxy import HAPROXY, DemoApp, Haproxy
from tests.support.haproxy import free_port as haproxy_port
from tests.support.podman import PrivatePodman
from tests.support.rollouts import Load, RolloutEnv
from tests.support.wait import eventually

BASE = "1.0.0+baseline"


@pytest.fixture
def env(tmp_path: Path) -> Any:
    made = RolloutEnv(tmp_path)
    yield made
    made.close()


def baseline_spec(env: RolloutEnv, weight: int, *, control: bool = False) -> Path:
    """A canary with one step that waits for `promote` (a held step), with a baseline beside it."""
    path = env.spec(f"{{canary: {{steps: [{{weight: {weight}}}]}}}}", smoke_path="/health", control=control)
    path.write_text(path.read_text().replace("analysis:\n", "analysis:\n  baseline: true\n"))
    return path


def rollout(env: RolloutEnv) -> dict[str, Any]:
    return service.status(env.ctx, "shop")[0]["rollout"] or {}


async def versions_running(env: RolloutEnv, spec: Path) -> dict[str, list[str]]:
    """Each live instance's version name (as the platform records it) -> what the instances answer on /health."""
    platform = make_platform(load_spec(spec).platform, env.state, spec.parent)
    out: dict[str, list[str]] = {}
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        for inst in await platform.instances("shop"):
            said = (await client.get(f"http://{inst.address}/health")).json()["version"]
            out.setdefault(inst.version, []).append(said)
    return out


def events(env: RolloutEnv) -> list[dict[str, Any]]:
    return list(service.history(env.ctx, "shop")[0]["events"])


@pytest.mark.slow
async def test_the_baseline_runs_the_previous_version_at_the_canary_weight_and_goes_when_promoted(env) -> None:
    spec = baseline_spec(env, 20)
    await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0"), 60)  # a first deploy: no baseline
    assert await versions_running(env, spec) == {"1.0.0": ["1.0.0", "1.0.0"]}
    async with Load(env.url) as load:
        task = asyncio.create_task(service.deploy(env.ctx, spec, "2.0.0"))
        await eventually(lambda: rollout(env).get("waiting"), what="the held step", within=60)
        assert await env.routes() == {"2.0.0": 20, BASE: 20, "1.0.0": 60}
        assert rollout(env)["baseline"] == BASE  # status --json names it while it runs
        # Two baseline instances (the canary's count) run the previous version's artifact, beside its own two.
        assert await versions_running(env, spec) == {"1.0.0": ["1.0.0"] * 2, BASE: ["1.0.0"] * 2,
                                                     "2.0.0": ["2.0.0"] * 2}
        await load.wait_for(60)
        assert (await service.send_command(env.ctx, "shop", "promote")).applied
        st = await asyncio.wait_for(task, 60)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    assert await env.routes() == {"2.0.0": 100}
    assert BASE not in await versions_running(env, spec)
    said = events(env)
    kinds = [e["kind"] for e in said]
    assert kinds.index("baseline_started") < kinds.index("baseline_healthy") < kinds.index("step")
    assert "baseline_stopped" in kinds
    counted = [e["data"]["traffic"] for e in said if "traffic" in (e.get("data") or {})]
    assert any(t.get(BASE, {}).get("requests", 0) > 0 for t in counted)  # counted apart, for the judge
    store = Store(env.state)
    try:
        record = store.rollout(st.id)
        assert record is not None
        report = build(env.state, store, record)
    finally:
        store.close()
    assert {e.kind: e.stage for e in report.timeline}["baseline_started"] == "deployment"
    assert BASE in {t.version for t in report.traffic or []}  # the report's traffic table has its own row


async def test_a_baseline_that_fails_its_health_checks_is_lost_like_a_dead_one(env) -> None:
    """A baseline that answers but is sick would make any canary look better: after failure_threshold failed
    checks in a row its share goes back to the previous version and it is stopped; the rollout goes on."""
    spec = baseline_spec(env, 20, control=True)
    await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0"), 60)
    async with Load(env.url):  # the watch after promote needs traffic as evidence
        task = asyncio.create_task(service.deploy(env.ctx, spec, "2.0.0"))
        await eventually(lambda: rollout(env).get("waiting"), what="the held step", within=60)
        platform = make_platform(load_spec(spec).platform, env.state, spec.parent)
        sick = [i for i in await platform.instances("shop") if i.version == BASE]
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            for inst in sick[:1]:  # one of its two instances starts failing /health, still alive
                assert (await client.put(f"http://{inst.address}/_faults", content="health=fail")).status_code == 200
        lost = await eventually(lambda: next((e for e in events(env) if e["kind"] == "baseline_lost"), None),
                                what="the baseline lost", within=30)
        assert f"{sick[0].address} (failed 3 health checks in a row" in lost["message"], lost["message"]
        await eventually(lambda: _routes_are(env, {"2.0.0": 20, "1.0.0": 80}), what="its share back", within=30)
        await eventually(lambda: _gone(platform, BASE), what="the baseline stopped", within=30)
        assert rollout(env)["phase"] == "step" and not rollout(env).get("paused")  # no judge: the step goes on
        assert (await service.send_command(env.ctx, "shop", "promote")).applied
        assert (await asyncio.wait_for(task, 60)).status == "promoted"


async def _routes_are(env: RolloutEnv, expected: dict[str, int]) -> bool:
    return bool(await env.routes() == expected)


async def _gone(platform: Any, version: str) -> bool:
    return all(i.version != version for i in await platform.instances("shop"))


@pytest.mark.slow
async def test_a_resumed_controller_rolls_back_and_still_removes_the_baseline(env) -> None:
    spec = baseline_spec(env, 60)  # above 50 %: the baseline gets what is left of the previous version's share
    await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0"), 60)
    cmd = [sys.executable, "-m", "releasegate", "--state-dir", str(env.state), "deploy", str(spec),
           "--version", "2.0.0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await eventually(lambda: rollout(env).get("waiting"), what="the held step", within=60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert await env.routes() == {"2.0.0": 60, BASE: 40}
    task = asyncio.create_task(service.resume(env.ctx, "shop"))
    await eventually(lambda: rollout(env).get("controller_alive"), what="the resumed controller")
    assert (await service.send_command(env.ctx, "shop", "rollback")).applied
    st = await asyncio.wait_for(task, 60)
    assert st.status == "rolled_back", st.reason
    assert await env.routes() == {"1.0.0": 100}
    assert await versions_running(env, spec) == {"1.0.0": ["1.0.0", "1.0.0"]}
    assert "baseline_stopped" in [e["kind"] for e in events(env)]


def test_the_split_gives_the_baseline_the_canary_weight_during_the_steps_only() -> None:
    st = RolloutState(id="r", service="shop", version="2.0.0", previous="1.0.0", strategy="canary", phase="step",
                      phase_started=0.0, created_at=0.0, baseline=BASE, baseline_up=True)

    def weights(state: RolloutState, weight: int) -> dict[str, int]:
        return {s.version: s.weight for s in split(state, weight).shares}

    assert weights(st, 5) == {"2.0.0": 5, BASE: 5, "1.0.0": 90}
    assert weights(st, 50) == {"2.0.0": 50, BASE: 50}
    assert weights(st, 75) == {"2.0.0": 75, BASE: 25}
    assert weights(st, 100) == {"2.0.0": 100}
    # A rollback's first stair moves the baseline's share back to the previous version with the canary's.
    assert weights(st.model_copy(update={"phase": "rollback"}), 10) == {"2.0.0": 10, "1.0.0": 90}
    assert weights(st.model_copy(update={"baseline_up": False}), 20) == {"2.0.0": 20, "1.0.0": 80}


def breaching(_t: float, metric: str, weight: int) -> float | None:
    """The canary's error rate is 20 % once it has traffic: a breach, errors that persist on every stair."""
    return 0.2 if metric == "error_rate" and weight > 0 else 0.0


@pytest.mark.parametrize(("how", "outcome"), [
    ({"auto_promote": True}, "promoted"),
    ({"metric": breaching}, "rolled_back"),
    ({"failing": frozenset({f"health:{BASE}"})}, "aborted"),
    ({"commands": {30.0: "abort"}}, "aborted"),
])
def test_every_outcome_stops_the_baseline_even_resumed_at_every_action(how: dict[str, Any], outcome: str) -> None:
    """The engine against a simulated world, its state saved and reloaded before every action (a controller
    killed and resumed anywhere): the baseline never runs at the end and never has traffic outside the steps."""
    spec = load_spec_text("\n".join([
        "service: shop", PLATFORM, "strategy: {canary: {steps: [{weight: 20, pause: 1m}, {weight: 60}]}}",
        "analysis: {baseline: true, interval: 10s, rules: [{metric: error_rate, max: 5%, for: 20s}]}",
        "rollback: {staircase: [10, 0], step_wait: 30s}"]) + "\n", "s.yaml")
    trace = simulate(spec, "2.0.0", "1.0.0", roundtrip=True, **how)
    assert trace.state.status == outcome, trace.state.reason
    assert trace.running.get(BASE) == 0 and trace.running["2.0.0"] == (1 if outcome == "promoted" else 0)
    kinds = [d.kind for _, d in trace.decisions]
    assert kinds.count("baseline_stopped") == 1
    for _, weights in trace.weights:
        canary = weights.get("2.0.0", 0)
        assert weights.get(BASE, 0) in (0, min(canary, 100 - canary))
    if "failing" in how:
        assert trace.weights == []  # no user traffic moved
        assert "the baseline 1.0.0+baseline (the previous version 1.0.0) did not pass its health check" in (
            trace.state.reason or "")
    if outcome == "rolled_back" and "metric" in how:
        assert [w for _, w in trace.weights] == [{"2.0.0": 20, BASE: 20, "1.0.0": 60}, {"2.0.0": 10, "1.0.0": 90},
                                                 {"1.0.0": 100}]


PLATFORM = 'platform: {command: "python3 -m http.server {port}"}'


SSH = 'platform: {kind: ssh, hosts: [web1.example.com], command: "app --port {port}"}'


@pytest.mark.parametrize(("platform", "extra", "says"), [
    (PLATFORM, "strategy: {bluegreen: {}}", "s.yaml:4:22: baseline: true needs strategy: canary"),
    (SSH, "strategy: {rolling: {}}", "s.yaml:4:22: baseline: true needs strategy: canary"),
    (PLATFORM, "", None),
    (SSH, "", None),  # a fleet runs one too (tests/test_platform_ssh_baseline.py)
])
def test_the_spec_refuses_a_baseline_without_a_canary(platform: str, extra: str, says: str | None) -> None:
    text = "\n".join(["service: shop", platform, extra, "analysis: {baseline: true}"]) + "\n"
    if says is None:
        assert load_spec_text(text, "s.yaml").analysis.baseline is True
        return
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "s.yaml")
    [line] = str(info.value).splitlines()
    assert says in line, line


def test_nginx_writes_and_reads_back_the_baseline_entry(tmp_path: Path) -> None:
    spec = NginxRouterSpec(kind="nginx", listen="127.0.0.1:8080", config_file=str(tmp_path / "shop.conf"))
    routes = Routes((VersionRoute("2.0.0", 20, ("127.0.0.1:9001",)), VersionRoute(BASE, 20, ("127.0.0.1:9002",)),
                     VersionRoute("1.0.0", 60, ("127.0.0.1:9003",))))
    assert parse(render("shop", routes, spec), "shop")[0] == routes


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(HAPROXY) is None, reason="haproxy is not installed")
async def test_haproxy_routes_and_counts_three_entries_then_frees_the_baseline_slot(tmp_path: Path) -> None:
    spec = HaproxyRouterSpec(kind="haproxy", listen=f"127.0.0.1:{haproxy_port()}",
                             config_file=str(tmp_path / "h.cfg"), stats_socket=str(tmp_path / "admin.sock"), slots=2)
    router = HaproxyRouter(spec, "shop")
    router.ensure_config()
    apps = [DemoApp(v).start() for v in ("2.0.0", "1.0.0", "1.0.0")]
    proc = Haproxy(Path(spec.config_file), Path(spec.stats_socket), tmp_path / "haproxy.pid").start()
    try:
        canary, base, previous = apps
        three = Routes((VersionRoute("2.0.0", 20, (canary.backend,)), VersionRoute(BASE, 20, (base.backend,)),
                        VersionRoute("1.0.0", 60, (previous.backend,))))
        await router.set_routes("shop", three)
        assert await router.get_routes("shop") == three  # the three fit HAProxy's version groups
        now = [0.0]
        metrics = HaproxyStatsMetrics(router, clock=lambda: now[0])
        await metrics.query(MetricQuery("shop", BASE, "rps", 10.0))  # the first reading
        async with httpx.AsyncClient(base_url=f"http://{spec.listen}", timeout=10, trust_env=False) as client:
            for _ in range(100):
                assert (await client.get("/")).status_code == 200
                client.cookies.clear()
        now[0] = 10.0
        assert (await metrics.query(MetricQuery("shop", BASE, "rps", 10.0)) or 0) > 0  # counted under its own name
        for routes in (Routes((VersionRoute("2.0.0", 100, (canary.backend,)),)),  # promoted: the baseline goes
                       Routes((VersionRoute("1.0.0", 100, (previous.backend,)),)), three):  # and its slots come back
            await router.set_routes("shop", routes)
            assert await router.get_routes("shop") == routes
    finally:
        proc.stop()
        for app in apps:
            app.stop()


@pytest.fixture
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    with engine_with_images(tmp_path_factory.mktemp("podman"), ("1.0.0", "2.0.0")) as pm:
        yield pm


@pytest.fixture
def cenv(tmp_path: Path, podman: PrivatePodman) -> Iterator[RolloutEnv]:
    made = RolloutEnv(tmp_path)
    yield made
    made.close()
    podman.remove_containers()


@pytest.mark.slow
async def test_a_baseline_container_runs_the_previous_image_under_its_own_label(cenv: RolloutEnv,
                                                                                podman: PrivatePodman) -> None:
    spec = docker_spec(cenv.tmp_path, podman, builtin(cenv), "{canary: {steps: [{weight: 20}]}}")
    spec.write_text(spec.read_text().replace("analysis:\n", "analysis:\n  baseline: true\n"))
    cenv.made.append(spec)
    await asyncio.wait_for(service.deploy(cenv.ctx, spec, "1.0.0"), 90)
    task = asyncio.create_task(service.deploy(cenv.ctx, spec, "2.0.0"))
    await eventually(lambda: rollout(cenv).get("waiting"), what="the held step", within=60)
    assert await cenv.routes() == {"2.0.0": 20, BASE: 20, "1.0.0": 60}
    assert sorted(labelled(podman, cenv.state).values()) == ["1.0.0", "1.0.0", BASE, BASE, "2.0.0", "2.0.0"]
    assert (await versions_running(cenv, spec))[BASE] == ["1.0.0", "1.0.0"]  # the previous image and version
    assert (await service.send_command(cenv.ctx, "shop", "rollback")).applied
    st = await asyncio.wait_for(task, 90)
    assert st.status == "rolled_back", st.reason
    assert sorted(labelled(podman, cenv.state).values()) == ["1.0.0", "1.0.0"]
