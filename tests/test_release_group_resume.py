"""A release group is one persisted state machine: a `releasegate deploy release.yaml` process SIGKILLed while its
members hold, and again in the middle of the switch, is finished by `resume RELEASE`, under client load with no
failed request (the routers and instances never depended on the killed process)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from releasegate import group_service
from tests.support.groups import JUDGIFY, GroupEnv
from tests.support.rollouts import Load
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

NAMES = [name for name, _, _ in JUDGIFY]


@pytest.fixture
def env(tmp_path):
    made = GroupEnv(tmp_path)
    yield made
    made.close()


def members(env: GroupEnv, version: str) -> dict[str, Any] | None:
    """The group's members as `status` shows them, once the deploy of ``version`` has recorded its group."""
    if not group_service.known(env.ctx, "judgify-core"):
        return None
    data = group_service.status(env.ctx, "judgify-core")
    if data["members"][0]["version"] != version:
        return None
    return {m["service"]: m for m in data["members"]}


async def cli(env: GroupEnv, *args: str) -> tuple[int | None, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "releasegate", "--state-dir", str(env.state),
                                                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def kill_when(env: GroupEnv, version: str, reached: Callable[[dict[str, Any]], bool]) -> None:
    path = env.tmp_path / "release.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "releasegate", "--state-dir", str(env.state), "deploy", str(path),
                             "--version", version], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await eventually(lambda: ((m := members(env, version)) is not None and reached(m)) or proc.poll() is not None,
                         within=60, what=f"the group of {version} reaching its kill point", every=0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


async def test_sigkill_while_members_hold_and_during_the_switch_then_resume_finishes(env):
    path = env.release()
    first = await group_service.deploy(env.ctx, path, ["1.0.0"])
    assert first.status == "promoted", first.reason
    loads = [Load(env.url(name), concurrency=1) for name in NAMES]
    for load in loads:
        await load.__aenter__()
    try:
        # Killed while some members hold (no traffic moved yet).
        await kill_when(env, "2.0.0", lambda m: any(x["status"] == "held" for x in m.values()))
        gs = await group_service.resume(env.ctx, "judgify-core")
        assert gs.status == "promoted", gs.reason
        assert env.current() == dict.fromkeys(NAMES, "2.0.0")
        # Killed in the middle of the switch: some members released, the gateway not yet.
        await kill_when(env, "3.0.0", lambda m: any(x["told"] == "release" for x in m.values()))
        code, out, err = await cli(env, "resume", "judgify-core")  # this time as an operator would
        assert code == 0, err
        assert "release judgify-core promoted: every member promoted (6)" in out
        assert env.current() == dict.fromkeys(NAMES, "3.0.0")
        for name in NAMES:
            assert await env.routes(name) == {"3.0.0": 100}
        for load in loads:
            await load.wait_for(3)
    finally:
        for load in loads:
            await load.__aexit__(None, None, None)
    assert [f for load in loads for f in load.failures] == []
    events = group_service.history(env.ctx, "judgify-core", 1)[0]["events"]
    assert any(e["kind"] == "resumed" for e in events)
    # What an operator reads: the releases first in `status`, one line per member in `status RELEASE`.
    _, out, err = await cli(env, "status")
    assert out.startswith("release judgify-core: promoted, 6 member(s)"), out + err
    _, out, _ = await cli(env, "status", "judgify-core")
    lines = out.splitlines()
    assert lines[0].startswith("release judgify-core (") and len(lines) == 7
    assert all(line.split()[0] == name and "2.0.0 -> 3.0.0" in line and line.rstrip().endswith("promoted")
               for line, name in zip(lines[1:], NAMES, strict=True)), out
