"""A baseline beside the canary on an SSH fleet (``analysis: {baseline: true}`` on ``platform: {kind: ssh}``):
three hosts in network namespaces with their own sshd (tests/support/ssh_hosts.py), the builtin router, real load.

What a user sees (docs/ssh.md): at the held step the router sends the canary's weight to the baseline too, the
baseline's instance runs the previous version's artifact on a host without the canary, ``status`` counts it; a
controller killed there is resumed, rolls back and still removes the baseline, and nothing else: the previous
version's own instances (one on the baseline's host) keep running and no request fails.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from releasegate import service
from releasegate.engine import baseline, phase
from releasegate.engine.state import RolloutState, Share, Start
from releasegate.providers.base import Instance
from releasegate.providers.platforms.ssh_hosts import SshPlatform
from releasegate.providers.routers.builtin import stop_router
from releasegate.spec import load_spec, load_spec_text
from releasegate.spec.models import AnyPlatform
from releasegate.spec.models import SshPlatform as SshPlatformSpec
from tests.support.rollouts import Load, RolloutEnv
from tests.support.ssh_hosts import Fleet, fleet_of
from tests.support.wait import eventually

APP = f"{sys.executable} -m releasegate.demoapp --host 0.0.0.0 --port {{port}}"
BASE = "1.0.0+baseline"


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of(tmp_path_factory.mktemp("fleet"), 3) as made:
        yield made


@pytest.fixture
def env(tmp_path: Path, fleet: Fleet) -> Iterator[RolloutEnv]:
    made = RolloutEnv(tmp_path)
    yield made
    if made.made:
        asyncio.run(_stop_everything(made, made.made[-1]))


def fleet_spec(env: RolloutEnv, fleet: Fleet) -> Path:
    """A canary whose one step waits for `promote`, with a baseline, on the three hosts."""
    path = env.tmp_path / "shop.yaml"
    path.write_text(f"""\
service: shop
platform:
  kind: ssh
{fleet.spec_lines(APP)}  stop_grace: 2s
router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 50}}
strategy: {{canary: {{steps: [{{weight: 20}}]}}}}
analysis:
  baseline: true
  interval: 500ms
  rules: [{{metric: error_rate, max: 0.05, for: 2s}}]
""")
    env.made.append(path)
    return path


def platform_of(env: RolloutEnv, spec: Path) -> SshPlatform:
    return platform_of_spec(load_spec(spec).platform, env.state)


async def live(env: RolloutEnv, spec: Path) -> list[Instance]:
    platform = platform_of(env, spec)
    try:
        return await platform.instances("shop")
    finally:
        await platform.close()


async def _stop_everything(env: RolloutEnv, spec: Path) -> None:
    platform = platform_of(env, spec)
    try:
        for inst in await platform.instances("shop"):
            await platform.stop(inst, 1.0)
    finally:
        await platform.close()
    stop_router(env.state, "shop", 5.0)


def waiting(env: RolloutEnv) -> str:
    return str((service.status(env.ctx, "shop")[0]["rollout"] or {}).get("waiting") or "")


@pytest.mark.slow
async def test_a_baseline_on_a_fleet_runs_the_previous_artifact_apart_and_a_resumed_rollback_removes_it(
        env: RolloutEnv, fleet: Fleet) -> None:
    spec = fleet_spec(env, fleet)
    first = await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0"), 90)  # a first deploy: no baseline
    assert first.status == "promoted", first.reason
    previous = sorted(i.id for i in await live(env, spec))
    argv = [sys.executable, "-m", "releasegate", "--state-dir", str(env.state)]
    async with Load(env.url) as load:
        await load.wait_for(20)
        controller = subprocess.Popen([*argv, "deploy", str(spec), "--version", "2.0.0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await eventually(lambda: "promote" in waiting(env), within=60, what="the held step")
        finally:
            controller.send_signal(signal.SIGKILL)  # only the hosts' records and the store survive it
            await asyncio.to_thread(controller.wait)
        assert await env.routes() == {"2.0.0": 20, BASE: 20, "1.0.0": 60}
        running = await live(env, spec)
        canary = [i for i in running if i.version == "2.0.0"]
        [base] = [i for i in running if i.version == BASE]  # the canary's count: one host at 20 %
        assert base.host not in {i.host for i in canary}  # not beside the canary (docs/ssh.md says why)
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            said = (await client.get(f"http://{base.address}/health")).json()
        assert said["version"] == "1.0.0"  # the previous version's artifact, under its own name
        assert service.status(env.ctx, "shop")[0]["instances"] == {"1.0.0": 3, "2.0.0": 1, BASE: 1}
        await load.wait_for(20)
        task = asyncio.create_task(service.resume(env.ctx, "shop"))
        await eventually(lambda: (service.status(env.ctx, "shop")[0]["rollout"] or {}).get("controller_alive"),
                         within=30, what="the resumed controller")
        assert (await service.send_command(env.ctx, "shop", "rollback")).applied
        st = await asyncio.wait_for(task, 60)
        await load.wait_for(20)
    assert st.status == "rolled_back", st.reason
    assert load.failures == []
    assert await env.routes() == {"1.0.0": 100}
    after = await live(env, spec)
    assert {i.version for i in after} == {"1.0.0"}  # no baseline (and no canary) left on any host
    assert sorted(i.id for i in after) == previous  # the previous version's own instances were never stopped
    [run] = [h for h in service.history(env.ctx, "shop") if h["version"] == "2.0.0"]
    assert "baseline_stopped" in [e["kind"] for e in run["events"]]


def test_the_engine_starts_the_canary_count_of_its_largest_step_and_routes_as_many_as_the_canary() -> None:
    spec = load_spec_text("\n".join([
        "service: shop", "platform: {kind: ssh, hosts: [h1, h2, h3, h4, h5], command: 'app --port {port}'}",
        "strategy: {canary: {steps: [{weight: 20}, {weight: 60}]}}", "analysis: {baseline: true}"]) + "\n", "s.yaml")
    st = RolloutState(id="r", service="shop", version="2.0.0", previous="1.0.0", strategy="canary",
                      phase="baseline", phase_started=0.0, created_at=0.0, baseline=BASE, baseline_up=True)
    assert baseline.next_action(st, spec) == Start(BASE, 3)  # 60 % of five hosts, all before the first traffic
    at_20 = phase.split(st.model_copy(update={"phase": "step"}), 20, 1).shares
    assert at_20 == (Share("2.0.0", 20, 1), Share(BASE, 20, 1), Share("1.0.0", 60))


def test_a_baseline_goes_on_hosts_without_the_canary_even_where_they_run_more(tmp_path: Path) -> None:
    """h1 lost its 1.0.0 instance and runs the canary: no busier than the others and first, yet not chosen."""
    spec = load_spec_text("service: shop\nplatform: {kind: ssh, hosts: [h1, h2, h3], command: 'app --port {port}'}\n",
                          "s.yaml")
    platform = platform_of_spec(spec.platform, tmp_path)

    def on(entry: str, version: str) -> Instance:
        return Instance("shop", version, f"{entry}-{version}", entry, 1, ref=f"{entry}/1")

    running = [on("h1", "2.0.0"), on("h2", "1.0.0"), on("h3", "1.0.0")]
    assert platform._place(running, BASE, 1) == {"h2": 1}
    assert platform._place(running, BASE, 3) == {"h2": 1, "h3": 1, "h1": 1}  # only then beside it
    assert platform._place(running, "1.0.0", 1) == {"h1": 1}  # other versions: the fewest, as before


def platform_of_spec(spec: AnyPlatform, state: Path) -> SshPlatform:
    assert isinstance(spec, SshPlatformSpec)
    return SshPlatform(spec, state, state)
