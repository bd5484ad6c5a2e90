"""``run: docker`` on SSH hosts against real sshds (network namespaces, tests/support/ssh_hosts.py) and a real
container engine: Debian's podman, called over SSH as the hosts' container CLI (``docker_cli``).

There is no registry here: the image is ``podman import`` of an empty root file system, and the host's /usr, /lib,
/etc and this checkout are mounted read-only into each container for a Python runtime (``volumes``). podman runs
with tests/support/podman.py's private configuration (store, locks and temp dir under the test's temp dir; runc,
cgroupfs, no default ulimits, as this sandbox needs).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from releasegate.providers.platforms import make_platform
from releasegate.providers.platforms.ssh_hosts import SshPlatform
from releasegate.spec import load_spec
from tests.support.podman import PrivatePodman
from tests.support.rollouts import free_port
from tests.support.ssh_hosts import Fleet, fleet_of
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The container CLI the hosts use (words, as ``platform.docker_cli`` takes them): podman with the private
    configuration of tests/support/podman.py (its own store, locks and temp dir, so it never meets another test's
    engine), holding the image shop:1.0.0."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("run: docker over SSH needs podman and runc (scripts/test installs them)")
    engine = PrivatePodman(tmp_path_factory.mktemp("podman"))
    engine.write_config()
    env = {k: v for k, v in engine.env.items() if k.startswith("CONTAINERS_")}
    try:
        engine.base_image("shop:1.0.0")
        yield "env " + " ".join(f"{k}={v}" for k, v in sorted(env.items())) + " podman"
    finally:
        engine.stop()  # every container removed, leftovers of this engine ended


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of(tmp_path_factory.mktemp("fleet"), 2, alt_port=1) as made:
        yield made


def write(directory: Path, fleet: Fleet, cli: str, *, image: str = "localhost/shop:{version}") -> Path:
    runtime = sorted({sys.base_prefix, str(ROOT)})
    volumes = [f"{d}:{d}:ro" for d in ("/usr", "/lib", "/lib64", "/bin", "/etc", *runtime) if Path(d).exists()]
    args = [sys.executable, "-m", "releasegate.demoapp", "--host", "0.0.0.0", "--port", "8000",
            "--version", "{version}"]
    path = directory / "shop.yaml"
    path.write_text(f"""\
service: shop
platform:
  kind: ssh
{fleet.spec_lines("unused {port}")}  run: docker
  docker_cli: {cli}
  image: "{image}"
  port: 8000
  pull: never
  volumes: {volumes}
  args: {args}
  stop_grace: 1s
router: {{listen: "127.0.0.1:{free_port()}"}}
health: {{path: /health}}
strategy: {{bluegreen: {{}}}}
""")
    return path


def platform(path: Path, state: Path) -> SshPlatform:
    made = make_platform(load_spec(path).platform, state, path.parent)
    assert isinstance(made, SshPlatform)
    return made


async def _answers(address: str) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return str((await client.get(f"http://{address}/health")).json()["version"])
    except httpx.HTTPError:
        return None


async def test_containers_run_on_every_host_are_found_again_and_a_killed_one_is_a_dead_instance(tmp_path, fleet,
                                                                                               podman):
    spec = write(tmp_path, fleet, podman)
    p = platform(spec, tmp_path / "state")
    try:
        assert all(ok for _, ok, _ in await p.preflight("shop", "1.0.0"))
        started = await p.start("shop", "1.0.0", 2)
        assert sorted(i.host for i in started) == sorted(h.address for h in fleet.hosts)
        for address in [i.address for i in started]:  # published on a free port of its host, reached over the veth
            assert await eventually(lambda: _answers(address), what=address) == "1.0.0"  # noqa: B023
        again = platform(spec, tmp_path / "state")  # the labels are the record
        assert await again.instances("shop") == started
        victim = started[0]
        name = (victim.ref or "").rpartition("/")[2]
        subprocess.run(f"{podman} kill --signal KILL {name}", shell=True, check=True, capture_output=True)  # noqa: ASYNC221
        [dead] = await eventually(lambda: again.dead_instances("shop"), what="the dead container")
        assert dead.instance.id == victim.id and dead.exit_code == -signal.SIGKILL
        assert "was killed by SIGKILL" in dead.describe()
        assert [i.id for i in await again.instances("shop")] == [started[1].id]
        for inst in started:
            await again.stop(inst, 1.0)
            await again.stop(inst, 1.0)  # idempotent
        assert await again.instances("shop") == [] and await again.dead_instances("shop") == []
        await again.close()
    finally:
        for inst in await p.instances("shop"):
            await p.stop(inst, 0.0)
        await p.close()


async def test_a_missing_image_with_pull_never_fails_preflight_on_every_host(tmp_path, fleet, podman):
    spec = write(tmp_path, fleet, podman, image="localhost/nothing:{version}")
    checks = await platform(spec, tmp_path / "state").preflight("shop", "1.0.0")
    assert [name for name, ok, _ in checks if not ok] == [f"host {e}" for e in fleet.entries()]
    assert all("has no image localhost/nothing:1.0.0 and platform.pull is never" in d for _, _, d in checks)
