"""The container platform through the commands: `status`, `down` and `gc` act on this state dir's containers only;
deploy refuses a missing image or engine before anything starts; an image pull is shown; an engine that went away
is named with the fix; a controller killed mid-rollout is resumed and finds its containers by their labels."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from releasegate import service
from releasegate.progress import ProgressPrinter
from releasegate.providers.routers.builtin import stop_router
from releasegate.teardown import take_down
from tests.support.container_specs import (
    BLUEGREEN,
    CANARY,
    IMAGE,
    builtin,
    deploy,
    docker_spec,
    engine_with_images,
    labelled,
    registry_of,
    rg,
)
from tests.support.podman import PrivatePodman, private_podman
from tests.support.rollouts import Load, RolloutEnv
from tests.support.wait import eventually

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


@pytest.fixture(scope="module")
def registry(podman: PrivatePodman) -> Iterator[str]:
    with registry_of(podman) as address:
        yield address


async def test_status_down_and_gc_act_on_this_state_dirs_containers(env: RolloutEnv, podman: PrivatePodman,
                                                                    tmp_path: Path) -> None:
    router = builtin(env)
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


async def test_deploy_shows_the_image_pull(env: RolloutEnv, podman: PrivatePodman, registry: str) -> None:
    """An image not on the engine yet (pull: missing) is pulled by deploy's preflight, its progress printed in the
    rollout's layout before the rollout starts."""
    spec = docker_spec(env.tmp_path, podman, builtin(env),
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
        spec = docker_spec(tmp_path, engine_gone, builtin(env),
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


async def test_a_killed_controller_is_resumed_and_finds_its_containers(env: RolloutEnv, podman: PrivatePodman) -> None:
    """`releasegate deploy` SIGKILLed at the canary's 20 % step: `resume` (another process's controller) reads the
    containers back from the engine's labels, starts none twice, and finishes with no failed request."""
    spec = docker_spec(env.tmp_path, podman, builtin(env),
                       CANARY)
    env.made.append(spec)
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        proc = subprocess.Popen([sys.executable, "-m", "releasegate", "deploy", str(spec), "--version", "2.0.0",
                                 "--state-dir", str(env.state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def at_20() -> bool:
                [status] = service.status(env.ctx, "shop")
                return bool(status["rollout"] and status["rollout"]["weight"] >= 20)

            await eventually(at_20, within=60, what="2.0.0 at 20 %", every=0.05)
        finally:
            proc.kill()
            proc.wait()
        before = labelled(podman, env.state)
        st = await asyncio.wait_for(service.resume(env.ctx, "shop"), 90)
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    assert sorted(before.values()) == ["1.0.0", "1.0.0", "2.0.0", "2.0.0"]
    after = labelled(podman, env.state)
    assert {n for n, v in after.items() if v == "2.0.0"} == {n for n, v in before.items() if v == "2.0.0"}
