"""End to end with containers: the same engine, routers and analysis drive ``platform: {kind: docker}``.

A private Podman (tests/support/podman.py) serves the Docker Engine API; the demo app runs in containers of a
locally built image, published on 127.0.0.1 (bridge network). Blue-green and canary rollouts go through the
built-in router and through nginx under continuous client traffic with no failed request; a failing version rolls
back; a container killed before traffic is replaced like a dead process. (status, down, gc, pulls, preflight and
resume: tests/test_platform_docker_operations.py.)
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate import service
from releasegate.engine.state import Decision, RolloutState
from tests.support.container_specs import BLUEGREEN, CANARY, builtin, deploy, docker_spec, engine_with_images, labelled
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.podman import PrivatePodman
from tests.support.rollouts import Load, RolloutEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with engine_with_images(tmp_path_factory.mktemp("podman")) as pm:
        yield pm


@pytest.fixture
def env(tmp_path: Path, podman: PrivatePodman) -> Iterator[RolloutEnv]:
    """A state dir and router port (tests/support/rollouts.py); ``close`` stops the containers and the router."""
    made = RolloutEnv(tmp_path)
    yield made
    made.close()
    podman.remove_containers()


@pytest.fixture(params=["builtin", "nginx"])
def router(request: pytest.FixtureRequest, env: RolloutEnv, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(router line of the spec, the URL clients use)."""
    if request.param == "builtin":
        yield builtin(env), env.url
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


@pytest.mark.parametrize("strategy", [BLUEGREEN, CANARY], ids=["bluegreen", "canary"])
async def test_container_rollout_under_load_loses_no_request(env: RolloutEnv, podman: PrivatePodman,
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


async def test_a_failing_version_rolls_back_and_its_containers_go(env: RolloutEnv, podman: PrivatePodman) -> None:
    spec = docker_spec(env.tmp_path, podman, builtin(env),
                       CANARY, faults="3.0.0:error_rate=0.5")
    env.made.append(spec)
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "3.0.0")
    assert st.status == "rolled_back" and "error_rate > 5%" in (st.reason or "")
    assert all(f.endswith("from 3.0.0") for f in load.failures), load.failures
    assert sorted(labelled(podman, env.state).values()) == ["1.0.0", "1.0.0"]


async def test_a_container_killed_before_traffic_is_restarted_like_a_dead_process(env: RolloutEnv,
                                                                                 podman: PrivatePodman) -> None:
    """A 2.0.0 container killed (SIGKILL, through the engine) during the health check is noticed with its exit code
    and log tail, replaced once, and the rollout goes on."""
    spec = docker_spec(env.tmp_path, podman, builtin(env),
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
