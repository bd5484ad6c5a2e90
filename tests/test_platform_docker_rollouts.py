"""End to end with containers: the same engine, routers and analysis drive ``platform: {kind: docker}``.

A private Podman (tests/support/podman.py) serves the Docker Engine API; the demo app runs in containers of a
locally built image, published on 127.0.0.1 (bridge network). Blue-green and canary rollouts go through the
built-in router and through nginx under continuous client traffic with no failed request; ``status``, ``down``
and ``gc`` act on this state dir's containers only.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from rich.console import Console

from releasegate import service
from releasegate.engine.state import Decision, RolloutState
from releasegate.progress import ProgressPrinter
from releasegate.providers.platforms import container_engine as engine
from releasegate.providers.routers.builtin import stop_router
from releasegate.teardown import take_down
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.podman import DEMOAPP, HOST_VOLUMES, PYTHON, PrivatePodman, private_podman
from tests.support.registry import LocalRegistry
from tests.support.rollouts import Load, RolloutEnv, free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

IMAGE = "localhost/rg-demo"
BLUEGREEN = "{bluegreen: {keep_previous: 1h}}"
CANARY = "{canary: {steps: [{weight: 20, pause: 1s}, {weight: 50, pause: 1s}]}}"


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with private_podman(tmp_path_factory.mktemp("podman"), [f"127.0.0.1:{free_port()}"]) as pm:
        base = pm.base_image(f"{IMAGE}:1.0.0")
        for version in ("2.0.0", "3.0.0"):
            pm.podman("tag", base, f"{IMAGE}:{version}")
        yield pm


@pytest.fixture(scope="module")
def registry(podman: PrivatePodman) -> Iterator[str]:
    """A registry with shop:1.0.0 (the base image), on the port the engine trusts over plain HTTP."""
    layout = podman.root / "layout"
    podman.podman("push", f"{IMAGE}:1.0.0", f"oci:{layout}:1.0.0")
    with LocalRegistry(layout, int(podman.insecure_registries[0].rsplit(":", 1)[1])) as reg:
        yield reg.address


def docker_spec(directory: Path, podman: PrivatePodman, router: str, strategy: str, *, faults: str = "",
                keep: str = "") -> Path:
    """The demo shop as containers: two per version, the demo app (mounted from this checkout) on port 8000."""
    volumes = ", ".join(f'"{v}"' for v in [*HOST_VOLUMES, f"{DEMOAPP}:/app/demoapp.py:ro"])
    args = ", ".join(f'"{a}"' for a in [PYTHON, "/app/demoapp.py", "--host", "0.0.0.0", "--port", "8000"])
    text = f"""\
service: shop
platform:
  kind: docker
  image: "{IMAGE}:{{version}}"
  port: 8000
  instances: 2
  engine: "{podman.url}"
  pull: never
  volumes: [{volumes}]
  args: [{args}]
  env: {{FAULTS: "{faults}"}}
  stop_grace: 3s
{router}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 50}}
smoke:
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 1s}}
strategy: {strategy.replace("1h", keep) if keep else strategy}
analysis:
  interval: 500ms
  post_promotion: 1s
  rules: [{{metric: error_rate, max: 0.05, for: 1s}}]
rollback: {{staircase: [10, 0], step_wait: 1s}}
"""
    path = directory / "shop.yaml"
    path.write_text(text)
    return path


class Env(RolloutEnv):
    """A state dir and router port (tests/support/rollouts.py); ``close`` stops the containers and the router."""


@pytest.fixture
def env(tmp_path: Path, podman: PrivatePodman) -> Iterator[Env]:
    made = Env(tmp_path)
    yield made
    made.close()
    podman.remove_containers()


@pytest.fixture(params=["builtin", "nginx"])
def router(request: pytest.FixtureRequest, env: Env, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(router line of the spec, the URL clients use)."""
    if request.param == "builtin":
        yield f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}', env.url
        return
    if shutil.which(NGINX) is None:
        pytest.skip(f"nginx is not installed ({NGINX})")
    nginx = PrivateNginx(tmp_path / "nginx")
    nginx.start()
    try:
        yield ("router: " + nginx.router_yaml(", drain_timeout: 5s, drain_grace: 1s"),
               f"http://127.0.0.1:{nginx.listen_port}/api/items")
    finally:
        nginx.stop()


async def deploy(env: RolloutEnv, spec: Path, version: str) -> RolloutState:
    return await asyncio.wait_for(service.deploy(env.ctx, spec, version), 90)


def labelled(podman: PrivatePodman, state: Path) -> dict[str, str]:
    """Running containers of this state dir: name -> version."""
    client = docker.DockerClient(base_url=podman.url)
    found = client.containers.list(filters={"label": f"{engine.STATE_DIR}={state.resolve()}"})
    return {str(c.name): c.labels[engine.VERSION] for c in found}


@pytest.mark.parametrize("strategy", [BLUEGREEN, CANARY], ids=["bluegreen", "canary"])
async def test_container_rollout_under_load_loses_no_request(env: Env, podman: PrivatePodman,
                                                             router: tuple[str, str], strategy: str) -> None:
    spec = docker_spec(env.tmp_path, podman, router[0], strategy)
    env.made.append(spec)
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(router[1], concurrency=4) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "2.0.0")
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    assert load.by_version.get("1.0.0", 0) > 0 and load.by_version.get("2.0.0", 0) > 0
    assert sorted(labelled(podman, env.state).values()) == ["1.0.0", "1.0.0", "2.0.0", "2.0.0"]  # 1.0.0 kept 1h
    [status] = service.status(env.ctx, "shop")
    assert status["current"] == "2.0.0" and status["instances"] == {"1.0.0": 2, "2.0.0": 2}


async def test_a_failing_version_rolls_back_and_its_containers_go(env: Env, podman: PrivatePodman) -> None:
    spec = docker_spec(env.tmp_path, podman, f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}',
                       CANARY, faults="3.0.0:error_rate=0.5")
    env.made.append(spec)
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "3.0.0")
    assert st.status == "rolled_back" and "error_rate > 5%" in (st.reason or "")
    assert all(f.endswith("from 3.0.0") for f in load.failures), load.failures
    assert sorted(labelled(podman, env.state).values()) == ["1.0.0", "1.0.0"]


async def test_a_container_killed_before_traffic_is_restarted_like_a_dead_process(env: Env,
                                                                                 podman: PrivatePodman) -> None:
    """A 2.0.0 container killed (SIGKILL, through the engine) during the health check is noticed with its exit code
    and log tail, replaced once, and the rollout goes on."""
    spec = docker_spec(env.tmp_path, podman, f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}',
                       BLUEGREEN)
    env.made.append(spec)
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    said: list[Decision] = []

    def hear(st: RolloutState, decisions: list[Decision]) -> None:
        said.extend(decisions)
        if any(d.kind == "killed" for d in said):
            return
        for name, version in labelled(podman, env.state).items():
            if version == "2.0.0":
                podman.podman("kill", "--signal", "KILL", name)
                said.append(Decision("killed", name))
                return

    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await asyncio.wait_for(service.deploy(env.ctx, spec, "2.0.0", on_progress=hear), 90)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    killed = next(d.message for d in said if d.kind == "killed")
    died = [d.message for d in said if killed in d.message and "exited with code 137 (killed by SIGKILL)" in d.message]
    assert died, [d.message for d in said]
    assert "listening on 0.0.0.0:8000" in died[0]  # the tail of its log
    assert sorted(labelled(podman, env.state).values()) == ["1.0.0", "1.0.0", "2.0.0", "2.0.0"]


async def test_status_down_and_gc_act_on_this_state_dirs_containers(env: Env, podman: PrivatePodman,
                                                                    tmp_path: Path) -> None:
    router = f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}'
    spec = docker_spec(env.tmp_path, podman, router, BLUEGREEN, keep="1s")
    env.made.append(spec)
    other = RolloutEnv(tmp_path / "other")  # another state dir on the same engine
    (tmp_path / "other").mkdir()
    other_spec = docker_spec(tmp_path / "other", podman,
                             f'router: {{listen: "127.0.0.1:{other.port}", drain_timeout: 5s}}', BLUEGREEN)
    other.made.append(other_spec)
    try:
        assert (await deploy(other, other_spec, "1.0.0")).status == "promoted"
        assert (await deploy(env, spec, "1.0.0")).status == "promoted"
        async with Load(env.url) as load:  # the watch after the switch needs traffic to judge
            await load.wait_for(20)
            assert (await deploy(env, spec, "2.0.0")).status == "promoted"
        assert load.failures == []
        [status] = service.status(env.ctx, "shop")
        assert status["state"] == "running" and status["instances"] == {"1.0.0": 2, "2.0.0": 2}

        async def retire() -> list[str]:
            return (await service.gc(env.ctx, "shop"))["shop"]

        retired = await eventually(retire, what="gc to retire 1.0.0 (kept 1 s)", every=0.2)
        assert sorted(s.split("@")[0] for s in retired) == ["1.0.0", "1.0.0"]
        assert sorted(labelled(podman, env.state).values()) == ["2.0.0", "2.0.0"]

        result = await take_down(env.ctx, "shop")
        assert len(result.stopped) == 2 and labelled(podman, env.state) == {}
        [status] = service.status(env.ctx, "shop")
        assert status["state"] == "down" and status["instances"] == {}
        assert sorted(labelled(podman, other.state).values()) == ["1.0.0", "1.0.0"]  # never another state dir's
    finally:
        await asyncio.to_thread(other.close)


def rg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"})


def test_deploy_refuses_a_missing_image_or_engine_before_anything_starts(podman: PrivatePodman,
                                                                         tmp_path: Path) -> None:
    """Through the CLI: the engine's message (or the unreachable address and the fix) on one line, exit 2, and
    nothing started: no container, no router."""
    state = tmp_path / "state"
    spec = docker_spec(tmp_path, podman, 'router: {listen: "127.0.0.1:1", drain_timeout: 5s}', BLUEGREEN)
    done = rg("deploy", str(spec), "--version", "9.9.9", "--state-dir", str(state))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "image:" in line]
    assert len(lines) == 1 and f"{IMAGE}:9.9.9 is not on the engine at {podman.url}" in lines[0], done.stderr
    assert labelled(podman, state) == {}

    gone = tmp_path / "gone.sock"
    spec.write_text(spec.read_text().replace(podman.url, f"unix://{gone}"))
    done = rg("preflight", str(spec), "--version", "1.0.0", "--state-dir", str(state))
    assert done.returncode == 2
    [line] = [line for line in done.stdout.splitlines() if "FAIL" in line]
    assert f"cannot reach the container engine at unix://{gone}" in line and "podman system service" in line


async def test_deploy_shows_the_image_pull(env: Env, podman: PrivatePodman, registry: str) -> None:
    """An image not on the engine yet (pull: missing) is pulled by deploy's preflight, its progress printed in the
    rollout's layout before the rollout starts."""
    spec = docker_spec(env.tmp_path, podman, f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}',
                       BLUEGREEN)
    spec.write_text(spec.read_text().replace(f'image: "{IMAGE}:', f'image: "{registry}/pulled:')
                    .replace("pull: never", "pull: missing"))
    env.made.append(spec)
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, width=300))
    st = await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0", on_progress=printer), 90)
    assert st.status == "promoted", st.reason
    lines = out.getvalue().splitlines()
    pulled = next(i for i, line in enumerate(lines) if line.endswith(f"pulled {registry}/pulled:1.0.0"))
    assert any(f"pulling {registry}/pulled:1.0.0: " in line and "Pulling fs layer" in line for line in lines)
    assert pulled < next(i for i, line in enumerate(lines) if "shop 1.0.0" in line)  # before the rollout's lines


async def test_status_and_down_name_an_engine_that_went_away(tmp_path: Path) -> None:
    """The engine stops answering after a deploy: `status` and `down` say which engine and how to fix it, in one
    line, instead of guessing that nothing runs."""
    env = RolloutEnv(tmp_path)
    with private_podman(tmp_path / "podman") as engine_gone:
        engine_gone.base_image(f"{IMAGE}:1.0.0")
        spec = docker_spec(tmp_path, engine_gone, f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}',
                           BLUEGREEN)
        try:
            assert (await deploy(env, spec, "1.0.0")).status == "promoted"
        finally:
            engine_gone.stop()  # every container removed, then the service stops
        try:
            for command in (["status", "shop"], ["down", "shop"]):
                done = await asyncio.to_thread(rg, *command, "--state-dir", str(env.state))
                said = (done.stdout + done.stderr).strip()
                assert done.returncode != 0 and "Traceback" not in said, said
                assert f"cannot reach the container engine at {engine_gone.url}" in said
                assert len([line for line in said.splitlines() if "cannot reach" in line]) == 1
        finally:
            stop_router(env.state, "shop", 5.0)
