"""End to end across three SSH hosts (network namespaces with their own sshd): blue-green and rolling releases
through the builtin router under load, with one host's sshd killed mid-rollout.

What must hold (docs/ssh.md): the apps on a host whose sshd died keep serving, so no client request fails; the
rollout does not count them dead, restart them or roll back because of it: it holds where it is (no traffic
increase, no start on that host) and says which host it waits for, and it finishes once the host answers again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate import service
from releasegate.engine.state import RolloutState
from releasegate.providers.platforms import make_platform
from releasegate.providers.platforms.ssh_hosts import SshPlatform
from releasegate.providers.routers.builtin import stop_router
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.spec import load_spec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from tests.support.haproxy import HAPROXY, Haproxy, free_port, runtime
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.rollouts import Load, RolloutEnv
from tests.support.ssh_hosts import Fleet, Host, fleet_of
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

APP = f"{sys.executable} -m releasegate.demoapp --host 0.0.0.0 --port {{port}}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of(tmp_path_factory.mktemp("fleet"), 3, alt_port=2) as made:
        yield made


class SshEnv(RolloutEnv):
    """RolloutEnv with the service on the fleet instead of local processes."""

    def __init__(self, tmp_path: Path, fleet: Fleet) -> None:
        super().__init__(tmp_path)
        self.fleet = fleet

    def ssh_spec(self, strategy: str, router: str | None = None) -> Path:
        """``router``: the spec's router mapping; default the builtin router on this env's port."""
        router = router or f'{{listen: "127.0.0.1:{self.port}", drain_timeout: 5s}}'
        path = self.tmp_path / "shop.yaml"
        path.write_text(f"""\
service: shop
platform:
  kind: ssh
{self.fleet.spec_lines(APP)}  stop_grace: 2s
router: {router}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 50}}
smoke:
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 1s}}
strategy: {strategy}
analysis:
  interval: 500ms
  post_promotion: 1s
  rules: [{{metric: error_rate, max: 0.05, for: 2s}}]
rollback: {{staircase: [10, 0], step_wait: 1s}}
""")
        self.made.append(path)
        return path

    def close(self) -> None:
        if self.made:
            asyncio.run(_stop_everything(self.state, self.made[-1]))


async def _stop_everything(state: Path, spec_path: Path) -> None:
    spec = load_spec(spec_path)
    platform = make_platform(spec.platform, state, spec_path.parent)
    for inst in await platform.instances(spec.service):
        await platform.stop(inst, 1.0)
    stop_router(state, spec.service, 5.0)


@pytest.fixture
def env(tmp_path: Path, fleet: Fleet) -> Iterator[SshEnv]:
    made = SshEnv(tmp_path, fleet)
    yield made
    for host in fleet.hosts:  # a test that failed with a host down must not leave it down for the next
        if not fleet.sshd_running(host):
            fleet.start_sshd(host)
    made.close()


async def deploy(env: SshEnv, spec: Path, version: str) -> RolloutState:
    return await asyncio.wait_for(service.deploy(env.ctx, spec, version), 90)


def rollout(env: SshEnv) -> RolloutState:
    store = env.ctx.store()
    try:
        rec = store.latest_rollout("shop")
        assert rec is not None
        return rec.state
    finally:
        store.close()


def events(env: SshEnv, version: str) -> list[str]:
    [run] = [h for h in service.history(env.ctx, "shop") if h["version"] == version]
    return [e["kind"] for e in run["events"]]


def on(env: SshEnv, host: Host, routes: dict[str, list[str]]) -> list[str]:
    return [v for v, backends in routes.items() for b in backends if b.startswith(f"{host.address}:")]


async def backends(env: SshEnv) -> dict[str, list[str]]:
    routes = await env.router().get_routes("shop")
    return {v.version: list(v.backends) for v in routes.versions if v.weight > 0}


async def test_blue_green_across_three_hosts_holds_while_a_host_is_unreachable(env, fleet):
    spec = env.ssh_spec("{bluegreen: {ramp: [{weight: 50}]}}")  # the ramp step waits for `promote`
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    down = fleet.hosts[1]
    async with Load(env.url) as load:
        await load.wait_for(20)
        task = asyncio.create_task(deploy(env, spec, "2.0.0"))
        await eventually(lambda: _weights(env, {"2.0.0": 50, "1.0.0": 50}), within=30, what="green at 50%")
        routed = await backends(env)
        assert all(sorted(on(env, h, routed)) == ["1.0.0", "2.0.0"] for h in fleet.hosts)  # green beside blue
        fleet.kill_sshd(down)
        await load.wait_for(20)
        await service.send_command(env.ctx, "shop", "promote")
        await eventually(lambda: f"host {down.entry} unreachable" in (rollout(env).waiting or ""), within=20,
                         what="the rollout to wait for the host")
        assert await env.routes() == {"2.0.0": 50, "1.0.0": 50}  # held: no increase while a host is unknown
        [status] = service.status(env.ctx, "shop")
        assert status["instances"] == {"1.0.0": 3, "2.0.0": 3}  # the host's instances as last seen, not gone
        assert [u.split(" unreachable")[0] for u in status["unreachable_hosts"]] == [f"host {down.entry}"]
        await load.wait_for(20)
        fleet.start_sshd(down)
        st = await task
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    assert await env.routes() == {"2.0.0": 100}
    kinds = events(env, "2.0.0")
    assert "restart" not in kinds and "rollback" not in kinds and "retry" in kinds


async def test_a_canary_across_three_hosts_adds_hosts_as_its_steps_grow(env, fleet):
    spec = env.ssh_spec("{canary: {steps: [{weight: 20, pause: 1s}, {weight: 50, pause: 1s}]}}")
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "2.0.0")
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    [run] = [h for h in service.history(env.ctx, "shop") if h["version"] == "2.0.0"]
    intents = [e["message"] for e in run["events"] if e["kind"] == "intent" and "2.0.0" in e["message"]]
    starts = [m for m in intents if m.startswith("start")]
    assert starts == [f"start {n} instance(s) of 2.0.0" for n in (1, 2, 3)]  # one host at 20 %, two at 50 %
    assert intents.index(starts[1]) < intents.index("route 2.0.0 50%, 1.0.0 50%") < intents.index(starts[2])
    routed = await backends(env)
    assert list(routed) == ["2.0.0"] and sorted(on(env, h, routed) for h in fleet.hosts) == [["2.0.0"]] * 3


async def test_a_canary_across_three_hosts_through_nginx_loses_no_request(env, fleet, tmp_path):
    """nginx in the root namespace reaches the hosts' instances over the network (their veth addresses)."""
    if shutil.which(NGINX) is None:
        pytest.skip(f"nginx is not installed ({NGINX})")
    nginx = PrivateNginx(tmp_path / "nginx")
    nginx.start()
    try:
        spec = env.ssh_spec("{canary: {steps: [{weight: 20, pause: 1s}, {weight: 50, pause: 1s}]}}",
                            nginx.router_yaml(", drain_timeout: 5s, drain_grace: 1s"))
        assert (await deploy(env, spec, "1.0.0")).status == "promoted"
        async with Load(f"http://127.0.0.1:{nginx.listen_port}/api/items", concurrency=4) as load:
            await load.wait_for(20)
            st = await deploy(env, spec, "2.0.0")
            await load.wait_for(20)
        assert st.status == "promoted", st.reason
        assert load.failures == []
        assert load.by_version.get("1.0.0", 0) > 0 and load.by_version.get("2.0.0", 0) > 0
        config = (nginx.conf_dir / "releasegate-shop.conf").read_text()
        assert all(f"server {h.address}:" in config for h in fleet.hosts)  # every host is a 2.0.0 upstream
    finally:
        nginx.stop()


async def test_a_blue_green_across_three_hosts_through_haproxy_loses_no_request(env, fleet, tmp_path):
    """HAProxy (its runtime API sets the hosts' addresses into its server slots) in front of the fleet."""
    if shutil.which(HAPROXY) is None:
        pytest.skip(f"haproxy is not installed ({HAPROXY})")
    sock_dir = Path(tempfile.mkdtemp(prefix="rg-hap-", dir="/tmp"))  # a unix socket path must stay short
    router = (f'{{kind: haproxy, listen: "127.0.0.1:{free_port()}", config_file: "{tmp_path / "h.cfg"}", '
              f'stats_socket: "{sock_dir / "admin.sock"}", drain_timeout: 5s}}')
    spec = env.ssh_spec("{bluegreen: {}}", router)
    loaded = load_spec(spec)
    assert isinstance(loaded.router, HaproxyRouterSpec)
    HaproxyRouter(loaded.router, "shop").ensure_config()
    proc = Haproxy(tmp_path / "h.cfg", sock_dir / "admin.sock", tmp_path / "haproxy.pid").start()
    try:
        assert (await deploy(env, spec, "1.0.0")).status == "promoted"
        async with Load(f"http://{loaded.router.listen}/api/items", concurrency=4) as load:
            await load.wait_for(20)
            st = await deploy(env, spec, "2.0.0")
            await load.wait_for(20)
        assert st.status == "promoted", st.reason
        assert load.failures == []
        assert load.by_version.get("1.0.0", 0) > 0 and load.by_version.get("2.0.0", 0) > 0
        state = runtime(sock_dir / "admin.sock", "show servers state shop")
        assert all(h.address in state for h in fleet.hosts)
    finally:
        proc.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def test_rolling_goes_host_by_host_and_waits_for_an_unreachable_host(env, fleet):
    spec = env.ssh_spec("{rolling: {max_surge: 1, max_unavailable: 0, pause: 500ms}}")
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        task = asyncio.create_task(deploy(env, spec, "2.0.0"))
        # The first batch is one host: one new instance in, then one old one out (the host emptied first).
        first = await eventually(lambda: _batch_done(env), within=30, what="the first host replaced")
        empty = next(h for h in fleet.hosts if not on(env, h, first))
        fleet.kill_sshd(empty)  # the next batch starts there
        await eventually(lambda: f"host {empty.entry} unreachable" in (rollout(env).waiting or ""), within=20,
                         what="the rollout to wait for the host")
        assert await backends(env) == first  # nothing changed while it waits
        await load.wait_for(20)
        fleet.start_sshd(empty)
        st = await task
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    routed = await backends(env)
    assert list(routed) == ["2.0.0"] and all(on(env, h, routed) == ["2.0.0"] for h in fleet.hosts)
    kinds = events(env, "2.0.0")
    assert kinds.count("batch") == 3 and "restart" not in kinds and "rollback" not in kinds


async def test_a_rollback_while_a_host_is_unreachable_moves_traffic_back_at_once_and_finishes_when_it_answers(
        env, fleet):
    spec = env.ssh_spec("{canary: {steps: [{weight: 20}]}}")  # the step waits for `promote`
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    down = fleet.hosts[0]
    async with Load(env.url) as load:
        await load.wait_for(20)
        task = asyncio.create_task(deploy(env, spec, "2.0.0"))
        await eventually(lambda: _weights(env, {"2.0.0": 20, "1.0.0": 80}), within=30, what="the canary at 20%")
        fleet.kill_sshd(down)
        await service.send_command(env.ctx, "shop", "rollback")
        await eventually(lambda: _weights(env, {"1.0.0": 100}), within=20, what="traffic back on 1.0.0")
        await eventually(lambda: f"host {down.entry} unreachable" in (rollout(env).waiting or ""), within=20,
                         what="the rollback to wait for the host before stopping 2.0.0 there")
        await load.wait_for(20)
        fleet.start_sshd(down)
        st = await task
        await load.wait_for(20)
    assert st.status == "rolled_back" and "rolled back by operator" in (st.reason or "")
    assert load.failures == []
    platform = make_platform(load_spec(spec).platform, env.state, spec.parent)
    assert isinstance(platform, SshPlatform)
    assert sorted(i.version for i in await platform.instances("shop")) == ["1.0.0"] * 3  # 2.0.0 stopped everywhere
    await platform.close()


async def test_a_controller_killed_mid_rolling_is_resumed_by_a_new_one_that_reads_the_hosts(env, fleet):
    spec = env.ssh_spec("{rolling: {max_surge: 1, max_unavailable: 0, pause: 500ms}}")
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    argv = [sys.executable, "-m", "releasegate", "--state-dir", str(env.state)]
    async with Load(env.url) as load:
        await load.wait_for(20)
        controller = subprocess.Popen([*argv, "deploy", str(spec), "--version", "2.0.0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await eventually(lambda: _batch_done(env), within=30, what="the first host replaced")
        finally:
            controller.send_signal(signal.SIGKILL)  # nothing of it survives but the hosts' records and the store
            await asyncio.to_thread(controller.wait)
        said = await cli(env, "resume", "shop")
        await load.wait_for(20)
    assert said.returncode == 0, said.stdout + said.stderr
    assert rollout(env).status == "promoted"
    assert load.failures == []
    platform = make_platform(load_spec(spec).platform, env.state, spec.parent)
    assert isinstance(platform, SshPlatform)
    live = await platform.instances("shop")  # one 2.0.0 per host, nothing of 1.0.0 left anywhere
    assert sorted((i.host, i.version) for i in live) == sorted((h.address, "2.0.0") for h in fleet.hosts)
    await platform.close()


async def test_the_cli_status_names_an_unreachable_host_and_down_stops_every_host(env, fleet):
    spec = env.ssh_spec("{bluegreen: {}}")
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    down = fleet.hosts[2]
    fleet.kill_sshd(down)
    said = await cli(env, "status", "shop")
    assert said.returncode == 0, said.stderr
    text = " ".join(said.stdout.split())
    assert "running 1.0.0 (3 instances)" in text and f"host {down.entry} unreachable" in text
    fleet.start_sshd(down)
    said = await cli(env, "down", "shop")
    assert said.returncode == 0, said.stderr
    assert all(fleet.app_pids(h) == [] for h in fleet.hosts)
    assert "down" in (await cli(env, "status", "shop")).stdout


async def cli(env: SshEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process (no event loop of ours: ``status`` reads the hosts synchronously)."""
    argv = [sys.executable, "-m", "releasegate", "--state-dir", str(env.state), *args]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60,
                                   env={**os.environ, "COLUMNS": "200"})


async def _weights(env: SshEnv, want: dict[str, int]) -> bool:
    try:
        return await env.routes() == want
    except AssertionError:  # the router is not up yet
        return False


async def _batch_done(env: SshEnv) -> dict[str, list[str]] | None:
    try:
        routed = await backends(env)
    except AssertionError:
        return None
    return routed if len(routed.get("2.0.0", [])) == 1 and len(routed.get("1.0.0", [])) == 2 else None
