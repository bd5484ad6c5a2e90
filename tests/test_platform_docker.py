"""The container platform against a real engine: a private Podman serving the Docker Engine API (tests/support/
podman.py). Starting, labels, finding containers again from another platform object (a restarted controller) and
only in its own state dir, stopping, exits noticed with their code and log, preflight's image check, an engine
that is not there, volumes, env, host networking and the image's HEALTHCHECK."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from docker.models.containers import Container

from releasegate.engine.clock import SystemClock
from releasegate.errors import ProviderError
from releasegate.providers import checks
from releasegate.providers.base import MetricQuery, MetricSource
from releasegate.providers.platforms import container_engine as engine
from releasegate.providers.platforms import make_platform
from releasegate.providers.platforms.containers import ContainerPlatform
from releasegate.spec.models import Health
from releasegate.spec.platforms import DockerPlatform
from tests.support.podman import DEMOAPP, HOST_VOLUMES, PYTHON, PrivatePodman, private_podman
from tests.support.registry import LocalRegistry
from tests.support.rollouts import free_port
from tests.support.wait import eventually

APPS = Path(__file__).resolve().parent / "support" / "apps.py"
IMAGE = "localhost/rg-shop"
DEMO = [PYTHON, "/app/demoapp.py", "--host", "0.0.0.0", "--port", "8000"]
SERVE = [PYTHON, "/app/apps.py", "serve", "--port", "{port}"]  # host network: the platform's free port


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePodman]:
    with private_podman(tmp_path_factory.mktemp("podman"), [f"127.0.0.1:{free_port()}"]) as pm:
        base = pm.base_image(f"{IMAGE}:1.0.0")
        pm.podman("tag", base, f"{IMAGE}:2.0.0")
        pm.healthcheck_image(f"{IMAGE}:sick", base, "/bin/false")
        pm.healthcheck_image(f"{IMAGE}:fine", base, "/bin/true")
        yield pm


@pytest.fixture(scope="module")
def registry(podman: PrivatePodman) -> Iterator[str]:
    """A registry with shop:1.0.0 (the base image), on the port the engine trusts over plain HTTP."""
    layout = podman.root / "layout"
    podman.podman("push", f"{IMAGE}:1.0.0", f"oci:{layout}:1.0.0")
    with LocalRegistry(layout, int(podman.insecure_registries[0].rsplit(":", 1)[1])) as reg:
        yield reg.address


@pytest.fixture
def clean(podman: PrivatePodman) -> Iterator[PrivatePodman]:
    yield podman
    podman.remove_containers()


def spec(podman: PrivatePodman, **over: Any) -> DockerPlatform:
    data: dict[str, Any] = {
        "kind": "docker", "image": IMAGE + ":{version}", "port": 8000, "engine": podman.url, "instances": 2,
        "volumes": [*HOST_VOLUMES, f"{DEMOAPP}:/app/demoapp.py:ro", f"{APPS}:/app/apps.py:ro"], "args": DEMO,
        "stop_grace": "3s", "pull": "never"}
    return DockerPlatform.model_validate({**data, **over})


def platform(podman: PrivatePodman, state_dir: Path, spec_dir: Path | None = None,
             **over: Any) -> ContainerPlatform:
    made = make_platform(spec(podman, **over), state_dir, spec_dir or state_dir)
    assert isinstance(made, ContainerPlatform)
    return made


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        return await client.get(url)


def containers(podman: PrivatePodman) -> list[Container]:
    return docker.DockerClient(base_url=podman.url).containers.list(all=True)


async def test_start_labels_finds_again_and_stops(clean: PrivatePodman, tmp_path: Path) -> None:
    p = platform(clean, tmp_path / "state")
    started = await p.start("shop", "1.0.0", 2)
    assert [i.version for i in started] == ["1.0.0", "1.0.0"] and len({i.address for i in started}) == 2
    for inst in started:
        r = (await get(f"http://{inst.address}/health"))
        assert r.status_code == 200 and r.headers["x-version"] == "1.0.0"
    assert await p.start("shop", "1.0.0", 2) == started  # idempotent: the running ones are kept
    labels = {c.name: c.labels for c in containers(clean)}
    assert {lab[engine.INSTANCE] for lab in labels.values()} == {i.id for i in started}
    assert all(lab[engine.SERVICE] == "shop" and lab[engine.VERSION] == "1.0.0"
               and lab[engine.STATE_DIR] == str((tmp_path / "state").resolve()) for lab in labels.values())

    again = platform(clean, tmp_path / "state")  # a restarted controller, or `status` in another process
    assert await again.instances("shop") == started and again.running("shop") == started
    assert await again.reconcile("shop") == []
    assert await platform(clean, tmp_path / "other").instances("shop") == []  # another state dir's: not ours

    await again.stop(started[0], 3.0)
    await again.stop(started[0], 3.0)  # idempotent
    assert await p.instances("shop") == started[1:]
    assert not await p.alive(started[0]) and await p.alive(started[1])
    assert [c.name for c in containers(clean)] == [started[1].ref]


async def test_an_exit_is_noticed_with_its_code_and_log_until_stop(clean: PrivatePodman, tmp_path: Path) -> None:
    p = platform(clean, tmp_path, network="host", args=SERVE)
    [inst] = await p.start("shop", "1.0.0", 1)
    with contextlib.suppress(httpx.HTTPError):
        await get(f"http://{inst.address}/exit/3")  # answers (or not), then exits with 3
    dead = await eventually(lambda: p.dead_instances("shop"), what="the exit to be noticed")
    assert [d.instance.id for d in dead] == [inst.id] and dead[0].exit_code == 3
    assert "serving on" in dead[0].log_tail and "exited with code 3" in dead[0].describe()
    assert await p.instances("shop") == [] and not await p.alive(inst)
    info = await p.exit_info(inst)
    assert info is not None and info.exit_code == 3
    await p.stop(inst, 0.0)  # the controller is done with it: the container goes
    assert await p.dead_instances("shop") == [] and containers(clean) == []


async def test_a_container_that_exits_at_once_fails_start_with_its_log(clean: PrivatePodman, tmp_path: Path) -> None:
    p = platform(clean, tmp_path, args=[PYTHON, "-c", "import sys; print('no config found'); sys.exit(4)"])
    with pytest.raises(ProviderError, match=r"exited with code 4 right after start: no config found"):
        await p.start("shop", "1.0.0", 2)
    assert containers(clean) == []  # both attempts' containers removed


async def test_memory_limit_kill_is_reported(clean: PrivatePodman, tmp_path: Path) -> None:
    """A container over its memory limit is killed by the kernel: reported with the engine's OOM verdict when it
    gives one, and always with the signal (Podman under cgroupfs here reports exit code 137 alone)."""
    hog = [PYTHON, "-c", "x = bytearray(300 * 1024 * 1024); print('allocated')"]
    p = platform(clean, tmp_path, args=hog, memory="40m")
    with pytest.raises(ProviderError, match=r"(was OOM-killed|killed by SIGKILL)"):
        await p.start("shop", "1.0.0", 1)


def test_oom_killed_state_is_the_cause() -> None:
    """The engine's OOMKilled flag, as Docker sets it, becomes the dead instance's cause."""
    attrs = {"Name": "/rg-shop-1-0001", "Config": {"Labels": {engine.SERVICE: "shop", engine.VERSION: "1",
                                                              engine.INSTANCE: "0001", engine.PORT: "8123"}},
             "State": {"Status": "exited", "ExitCode": 137, "OOMKilled": True,
                       "FinishedAt": "2026-12-05T14:37:40.008732873Z"}}

    class NoLogs(Container):
        def logs(self, **kwargs: Any) -> bytes:  # type: ignore[override]
            return b"allocating\n"

    dead = engine.dead_of(NoLogs(attrs=attrs))
    assert dead.cause == "was OOM-killed (exit code 137)" and dead.exit_code == 137
    assert dead.instance.address == "127.0.0.1:8123" and dead.exited_at == pytest.approx(1796481460.0087, abs=1e-3)
    assert "was OOM-killed" in dead.describe() and "allocating" in dead.describe()


def test_image_references_split_for_the_pull() -> None:
    assert engine.split_image("registry:5000/team/shop:1.2") == ("registry:5000/team/shop", "1.2")
    assert engine.split_image("registry:5000/shop") == ("registry:5000/shop", "latest")
    assert engine.split_image("shop") == ("shop", "latest")
    assert engine.split_image("shop@sha256:" + "a" * 64) == ("shop@sha256:" + "a" * 64, None)


async def test_preflight_refuses_a_missing_image_with_the_engines_message(clean: PrivatePodman,
                                                                         tmp_path: Path) -> None:
    present = await platform(clean, tmp_path).preflight("shop", "1.0.0")
    assert present[0][1] and "present" in present[0][2]
    [(name, ok, detail)] = await platform(clean, tmp_path).preflight("shop", "9.9.9")
    assert (name, ok) == ("image", False) and "\n" not in detail
    assert f"{IMAGE}:9.9.9 is not on the engine at {clean.url} and platform.pull is never" in detail
    [(_, ok, detail)] = await platform(clean, tmp_path, pull="missing").preflight("shop", "9.9.9")
    assert not ok and "\n" not in detail
    assert f"cannot pull image {IMAGE}:9.9.9: the engine at {clean.url} says:" in detail  # the registry is not there
    assert containers(clean) == []


async def test_pull_missing_fetches_the_image_in_preflight_with_progress(clean: PrivatePodman, registry: str,
                                                                          tmp_path: Path) -> None:
    said: list[str] = []
    p = platform(clean, tmp_path, image=f"{registry}/shop:{{version}}", pull="missing")
    p.notify = said.append
    [(_, ok, detail)] = await p.preflight("shop", "1.0.0")
    assert ok and detail.startswith(f"{registry}/shop:1.0.0 pulled in "), detail
    assert said[-1] == f"pulled {registry}/shop:1.0.0" and any("Pulling fs layer" in line for line in said), said
    said.clear()
    [(_, ok, detail)] = await p.preflight("shop", "1.0.0")
    assert ok and "present" in detail and said == []  # missing: not pulled again
    [inst] = await p.start("shop", "1.0.0", 1)
    assert (await get(f"http://{inst.address}/health")).status_code == 200
    [(_, ok, detail)] = await p.preflight("shop", "9.9.9")
    assert not ok and "\n" not in detail
    assert f"cannot pull image {registry}/shop:9.9.9: the engine at {clean.url} says:" in detail
    assert "manifest unknown" in detail


async def test_an_engine_that_is_not_there_is_named_with_the_fix(tmp_path: Path) -> None:
    gone = f"unix://{tmp_path / 'nothing.sock'}"
    p = make_platform(DockerPlatform(kind="docker", image="shop:{version}", port=8000, engine=gone), tmp_path,
                      tmp_path)
    with pytest.raises(ProviderError) as caught:
        await p.instances("shop")
    said = str(caught.value)
    assert said.startswith(f"cannot reach the container engine at {gone} (No such file or directory)")
    assert "\n" not in said
    assert "podman system service" in said and "platform.engine" in said
    with pytest.raises(ProviderError, match="cannot reach the container engine"):
        p.running("shop")
    [(_, ok, detail)] = await p.preflight("shop", "1.0.0")
    assert not ok and detail.startswith(f"cannot reach the container engine at {gone}")


async def test_docker_host_is_used_when_the_spec_names_no_engine(clean: PrivatePodman, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", clean.url)
    p = make_platform(spec(clean, engine=None), tmp_path, tmp_path)
    assert await p.instances("shop") == []
    monkeypatch.delenv("DOCKER_HOST")
    assert engine.engine_address(None) == engine.DEFAULT_ENGINE


async def test_env_volumes_and_host_network(clean: PrivatePodman, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hello.txt").write_text("from the spec dir\n")
    spec_dir = tmp_path
    p = platform(clean, tmp_path / "state", spec_dir, network="host", args=SERVE, instances=1,
                 env={"EXTRA": "v={version} port={port}", "GREETING": "hi"},
                 volumes=[*spec(clean).volumes, "./data:/data:ro"])
    [inst] = await p.start("shop", "2.0.0", 1)
    seen = (await get(f"http://{inst.address}/env?names=GREETING")).json()
    assert seen["PORT"] == str(inst.port) and seen["RELEASEGATE_VERSION"] == "2.0.0"
    assert seen["EXTRA"] == f"v=2.0.0 port={inst.port}" and seen["GREETING"] == "hi"
    [c] = containers(clean)
    # ./data is the spec's dir. Podman's exec sometimes hands back no output on a loaded machine: asked again.
    await eventually(lambda: c.exec_run(["/bin/cat", "/data/hello.txt"]).output == b"from the spec dir\n", 20,
                     "the spec dir's file, read inside the container")
    assert c.exec_run(["/bin/sh", "-c", "echo x > /data/new"]).exit_code != 0  # :ro


async def test_the_images_healthcheck_counts_beside_the_http_check(clean: PrivatePodman, tmp_path: Path) -> None:
    health = Health.model_validate({"path": "/health", "interval": "100ms", "timeout": "2s", "attempts": 30})
    sick = platform(clean, tmp_path, image=IMAGE + ":sick", instances=1)
    [inst] = await sick.start("shop", "1.0.0", 1)
    assert (await get(f"http://{inst.address}/health")).status_code == 200  # HTTP alone would pass
    result = await checks.wait_healthy([inst], health, SystemClock(), platform=sick)
    assert not result.ok and "the image's HEALTHCHECK says unhealthy (exit code 1)" in result.reason
    probed = await checks.engine_probe(sick)([inst], health)  # the analysis's probe during a rollout, too
    assert probed == {inst.address: "the image's HEALTHCHECK says unhealthy (exit code 1)"}
    await sick.stop(inst, 1.0)

    fine = platform(clean, tmp_path, image=IMAGE + ":fine", instances=1)
    [inst] = await fine.start("shop", "1.0.0", 1)
    result = await checks.wait_healthy([inst], health, SystemClock(), platform=fine)
    assert result.ok, result.reason
    assert await fine.engine_health(inst) == ("healthy", "exit code 0")
    plain = platform(clean, tmp_path / "plain", instances=1)
    [other] = await plain.start("shop", "1.0.0", 1)
    assert await plain.engine_health(other) is None  # no HEALTHCHECK in the image: the HTTP check alone decides
    assert await checks.engine_probe(plain)([other], health) == {other.address: None}


def test_podman_is_private(clean: PrivatePodman) -> None:
    """The engine keeps its images and containers under the test's directory: the host's Podman is not touched."""
    info = docker.DockerClient(base_url=clean.url).info()
    assert info["DockerRootDir"] == str(clean.root / "storage") and info["Driver"] == "vfs"


async def test_cpu_and_memory_per_container_from_the_engines_stats(clean: PrivatePodman, tmp_path: Path) -> None:
    burn = [PYTHON, "/app/apps.py", "burn", "--port", "{port}"]
    p = platform(clean, tmp_path, network="host", args=burn, memory="256m", instances=1)
    [inst] = await p.start("shop", "1.0.0", 1)
    metrics = p.metric_source()
    assert isinstance(metrics, MetricSource)
    cpu = await metrics.query(MetricQuery("shop", "1.0.0", "cpu", 60.0))
    assert cpu is not None and cpu > 0  # a busy loop accrues cpu time in any 0.25 s
    memory = await metrics.query(MetricQuery("shop", "1.0.0", "memory_mb", 60.0))
    assert memory is not None and memory > 1
    percent = await metrics.query(MetricQuery("shop", "1.0.0", "memory_percent", 60.0))
    assert percent is not None and percent == pytest.approx(memory * 100 / 256, rel=0.2)  # of its 256m limit
    q = MetricQuery("shop", "9.9.9", "cpu", 60.0)
    assert await metrics.query(q) is None and metrics.explain(q) == "no running container of 9.9.9"
    await p.stop(inst, 1.0)
