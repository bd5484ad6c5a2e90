"""LocalPlatform with real processes on 127.0.0.1: start, find again, stop, notice deaths, pid reuse."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from releasegate.errors import ProviderError
from releasegate.providers.base import Instance
from releasegate.providers.platforms import local
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.providers.platforms.local_processes import free_port
from releasegate.spec.models import LocalPlatform as LocalSpec
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "support" / "apps.py"
DEMO = ROOT / "releasegate" / "demoapp.py"
PY = sys.executable

MakePlatform = Callable[..., LocalPlatform]


async def stop_everything(state: Path) -> None:
    """Stop whatever a test left under ``state``, live or dead, so no process outlives its test."""
    root = state / "platform" / "local"
    if not root.is_dir():
        return
    for service_dir in root.iterdir():
        reader = LocalPlatform(LocalSpec(command="true {port}"), state, state)
        found = await reader.instances(service_dir.name)
        found += [d.instance for d in await reader.dead_instances(service_dir.name)]
        for inst in found:
            await reader.stop(inst, grace=0.5)


@pytest.fixture
async def make_platform(tmp_path: Path) -> AsyncIterator[MakePlatform]:
    def make(command: str, startup_grace: float = 1.0, **spec: object) -> LocalPlatform:
        model = LocalSpec.model_validate({"command": command, **spec})
        return LocalPlatform(model, tmp_path / "state", tmp_path, startup_grace=startup_grace)

    yield make
    await stop_everything(tmp_path / "state")


def log_text(inst: Instance) -> str:
    assert inst.log is not None
    return Path(inst.log).read_text()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def get_json(inst: Instance, path: str) -> dict[str, object]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(f"http://{inst.address}{path}")
        data: dict[str, object] = response.json()
        return data


async def test_start_n_instances_and_start_is_idempotent(make_platform: MakePlatform) -> None:
    platform = make_platform(f"{PY} {DEMO} --port {{port}}")
    first = await platform.start("shop", "1.0.0", 3)
    assert len(first) == 3
    assert len({i.port for i in first}) == 3
    assert [i.id for i in first] == sorted(i.id for i in first)
    assert all(i.host == "127.0.0.1" and i.version == "1.0.0" and i.log for i in first)
    for inst in first:
        assert await platform.alive(inst)  # start() returns once the port is open: no waiting needed
        assert await get_json(inst, "/health") == {"status": "healthy", "version": "1.0.0"}

    assert await platform.start("shop", "1.0.0", 3) == first
    assert await platform.start("shop", "1.0.0", 2) == first[:2]
    more = await platform.start("shop", "1.0.0", 4)
    assert more[:3] == first and len(more) == 4
    other = await platform.start("shop", "2.0.0", 1)
    assert {i.version for i in await platform.instances("shop")} == {"1.0.0", "2.0.0"}
    assert other[0].id not in {i.id for i in more}


async def _answers(inst: Instance) -> bool:
    try:
        await get_json(inst, "/health")
    except httpx.HTTPError:
        return False
    return True


async def test_environment_cwd_and_substitution(make_platform: MakePlatform, tmp_path: Path) -> None:
    (tmp_path / "releases" / "1.2.3").mkdir(parents=True)
    platform = make_platform(f"{PY} {APPS} serve --port {{port}}", cwd="releases/{version}",
                             env={"EXTRA": "from-spec"})
    [inst] = await platform.start("shop", "1.2.3", 1)
    await eventually(lambda: _answers(inst))
    env = await get_json(inst, "/env")
    assert env == {"cwd": str(tmp_path / "releases" / "1.2.3"), "PORT": str(inst.port),
                   "RELEASEGATE_VERSION": "1.2.3", "RELEASEGATE_SERVICE": "shop", "EXTRA": "from-spec"}


async def test_a_new_platform_object_finds_running_instances(make_platform: MakePlatform,
                                                             tmp_path: Path) -> None:
    started = await make_platform(f"{PY} {APPS} serve --port {{port}}").start("shop", "1.0.0", 2)
    restarted = make_platform(f"{PY} {APPS} serve --port {{port}}")
    assert await restarted.instances("shop") == started
    assert await restarted.start("shop", "1.0.0", 2) == started
    record = json.loads((tmp_path / "state/platform/local/shop" / f"1.0.0-{started[0].id}.json").read_text())
    assert record["pid"] == started[0].pid and record["create_time"] > 0 and record["pgid"] == started[0].pid

    await restarted.stop(started[0], grace=5)
    assert await restarted.instances("shop") == started[1:]
    assert not (tmp_path / "state/platform/local/shop" / f"1.0.0-{started[0].id}.json").exists()


async def test_instances_outlive_the_controller_process(make_platform: MakePlatform, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, pathlib
        from releasegate.providers.platforms.local import LocalPlatform
        from releasegate.spec.models import LocalPlatform as Spec
        spec = Spec(command={f"{PY} {APPS} serve --port {{port}}"!r})
        p = LocalPlatform(spec, pathlib.Path({str(tmp_path / "state")!r}), pathlib.Path({str(tmp_path)!r}))
        print(asyncio.run(p.start("shop", "1.0.0", 1))[0].pid)
    """)
    controller = await asyncio.to_thread(subprocess.run, [PY, "-c", script], capture_output=True, text=True,
                                         timeout=30, check=True)
    pid = int(controller.stdout.strip())

    platform = make_platform(f"{PY} {APPS} serve --port {{port}}")
    [inst] = await platform.instances("shop")
    assert inst.pid == pid and await platform.alive(inst)
    await eventually(lambda: _answers(inst))
    await platform.stop(inst, grace=5)
    await eventually(lambda: gone(pid))
    assert await platform.instances("shop") == []


async def test_stop_sends_sigterm_and_the_demo_app_exits_gracefully(make_platform: MakePlatform) -> None:
    platform = make_platform(f"{PY} {DEMO} --port {{port}}")
    [inst] = await platform.start("shop", "1.0.0", 1)
    await eventually(lambda: _answers(inst))
    assert inst.pid is not None and inst.log is not None
    await platform.stop(inst, grace=10)
    assert gone(inst.pid)
    assert "demo shop 1.0.0 stopped" in log_text(inst)
    assert await platform.instances("shop") == [] and await platform.dead_instances("shop") == []
    await platform.stop(inst, grace=10)  # idempotent


async def test_stop_kills_after_grace_when_sigterm_is_ignored(make_platform: MakePlatform) -> None:
    platform = make_platform(f"{PY} {APPS} ignore-term --port {{port}}")
    [inst] = await platform.start("shop", "1.0.0", 1)
    assert inst.pid is not None and inst.log is not None
    await platform.stop(inst, grace=0.3)
    assert gone(inst.pid)
    assert "got SIGTERM, ignoring it" in log_text(inst)


async def test_stop_takes_the_whole_process_group(make_platform: MakePlatform, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    platform = make_platform(f"{PY} {APPS} spawn-child --port {{port}} --pidfile {pidfile}")
    [inst] = await platform.start("shop", "1.0.0", 1)
    await eventually(lambda: pidfile.exists() and pidfile.read_text().strip())
    child = int(pidfile.read_text())
    assert not gone(child)
    await platform.stop(inst, grace=5)
    await eventually(lambda: gone(child))


async def test_a_dead_instance_is_noticed_with_its_exit_code_and_log(make_platform: MakePlatform) -> None:
    platform = make_platform(f"{PY} {APPS} serve --port {{port}}")
    [dying, staying] = await platform.start("shop", "1.0.0", 2)
    await eventually(lambda: _answers(dying))
    await get_json(dying, "/exit/3")
    await eventually(lambda: _not(platform.alive(dying)))

    assert await platform.instances("shop") == [staying]
    [dead] = await platform.dead_instances("shop")
    assert dead.instance == dying and dead.exit_code == 3
    assert "exiting with code 3 on request" in dead.log_tail
    assert "exited with code 3" in dead.describe() and dying.address in dead.describe()
    assert await platform.exit_info(dying) == dead
    assert await platform.exit_info(staying) is None

    again = await platform.start("shop", "1.0.0", 2)  # replaces the dead one, keeps the live one
    assert again[0] == staying and again[1].id not in {dying.id, staying.id}
    assert await platform.dead_instances("shop") == [dead]  # still reported until stopped
    await platform.stop(dying, grace=1)
    assert await platform.dead_instances("shop") == []


async def _not(awaitable: object) -> bool:
    assert asyncio.iscoroutine(awaitable)
    return not await awaitable


async def test_a_command_that_fails_at_once_is_reported(make_platform: MakePlatform) -> None:
    platform = make_platform("nosuchcmd-rg --port {port}")
    with pytest.raises(ProviderError, match=r"instance shop 2\.0\.0 exited with code 127 right after start: "
                       r".*nosuchcmd-rg.*not found.*\(log: .*2\.0\.0-\d+\.log\)"):
        await platform.start("shop", "2.0.0", 2)
    assert await platform.instances("shop") == [] and await platform.dead_instances("shop") == []


async def test_an_app_that_exits_at_once_is_reported_with_its_output(make_platform: MakePlatform) -> None:
    # A long grace costs nothing here (the app exits at once) and keeps a loaded machine from flaking.
    platform = make_platform(f"{PY} {APPS} exit --code 3 --message 'config.yaml is missing' --port {{port}}",
                             startup_grace=30)
    with pytest.raises(ProviderError, match=r"exited with code 3 right after start: config\.yaml is missing"):
        await platform.start("shop", "2.0.0", 1)


async def test_a_missing_working_directory_is_named(make_platform: MakePlatform, tmp_path: Path) -> None:
    platform = make_platform(f"{PY} {APPS} serve --port {{port}}", cwd="builds/{version}")
    with pytest.raises(ProviderError, match=f"working directory {tmp_path}/builds/9.9.9 does not exist"):
        await platform.start("shop", "9.9.9", 1)


async def test_a_port_taken_after_the_probe_is_retried(make_platform: MakePlatform,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ports = iter([busy.getsockname()[1]])
    real = free_port  # what local.free_port is until the patch below (local imports it from local_processes)
    monkeypatch.setattr(local, "free_port", lambda: next(ports, None) or real())
    try:
        platform = make_platform(f"{PY} {APPS} serve --port {{port}}", startup_grace=30)
        [inst] = await platform.start("shop", "1.0.0", 1)
        assert inst.port != busy.getsockname()[1]
        await eventually(lambda: _answers(inst))
        assert "Address already in use" in log_text(inst)
    finally:
        busy.close()


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process that now holds a recorded pid: same pid, different create_time."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    directory = tmp_path / "state/platform/local/shop"
    directory.mkdir(parents=True)
    created = psutil.Process(proc.pid).create_time()
    record = {"service": "shop", "version": "1.0.0", "id": "0042", "port": 1, "pid": proc.pid,
              "pgid": proc.pid, "log": str(directory / "1.0.0-0042.log"), "log_offset": 0,
              "started_at": time.time() - 3600,
              "create_time": created - 3600, "command": "app --port 1", "cwd": str(tmp_path)}
    (directory / "1.0.0-0042.json").write_text(json.dumps(record))
    yield proc
    proc.kill()
    proc.wait()


async def test_a_reused_pid_is_never_signalled(make_platform: MakePlatform,
                                               stranger: subprocess.Popen[bytes]) -> None:
    platform = make_platform(f"{PY} {APPS} serve --port {{port}}")
    assert await platform.instances("shop") == []
    [dead] = await platform.dead_instances("shop")
    assert dead.instance.pid == stranger.pid and dead.exit_code is None
    await platform.stop(dead.instance, grace=0.1)
    assert stranger.poll() is None, "a process that is not ours was signalled"
    assert await platform.dead_instances("shop") == []


async def test_stop_of_an_unknown_instance_is_a_no_op(make_platform: MakePlatform) -> None:
    platform = make_platform(f"{PY} {APPS} serve --port {{port}}")
    await platform.stop(Instance("shop", "1.0.0", "9999", "127.0.0.1", 1, pid=os.getpid()), grace=0.1)
    assert not await platform.alive(Instance("shop", "1.0.0", "9999", "127.0.0.1", 1))
    assert signal.getsignal(signal.SIGTERM) is not None  # and we are still here
