"""``releasegate down``: a service taken out of service on purpose, and ``status`` that never calls a version
current when none of its instances runs. Real app processes, the real router process, real HTTP, SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from releasegate import service
from releasegate.errors import UserError
from releasegate.providers.platforms import make_platform
from releasegate.providers.routers.builtin import read_router_state, router_paths
from releasegate.spec import load_spec
from releasegate.store.audit import AuditLog
from releasegate.teardown import take_down
from tests.support.rollouts import Load, cleanup, free_port, write_spec
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

CANARY = "{canary: {steps: [{weight: 20, pause: 1s}]}}"


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    port = free_port()
    spec = write_spec(tmp_path, port, CANARY)

    class Env:
        def __init__(self) -> None:
            self.ctx = service.new_context(state)
            self.state = state
            self.port = port
            self.spec = spec
            self.url = f"http://127.0.0.1:{port}/api/items"

        async def live(self) -> dict[str, int]:
            platform = make_platform(load_spec(spec).platform, state, spec.parent)
            counts: dict[str, int] = {}
            for inst in await platform.instances("shop"):
                counts[inst.version] = counts.get(inst.version, 0) + 1
            return counts

        def rg(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_TOKEN"}
            env["COLUMNS"] = "200"  # a table row per line, whatever the terminal
            if token is not None:
                env["RELEASEGATE_TOKEN"] = token
            return subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), *args],
                                  capture_output=True, text=True, env=env, timeout=120)

    yield Env()
    asyncio.run(cleanup(state, spec))


def flat(text: str) -> str:
    """A rendered table as one line of words, wherever the terminal wrapped its cells."""
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


async def deploy(env, version: str):
    return await asyncio.wait_for(service.deploy(env.ctx, env.spec, version), 60)


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.ConnectError:
        return True
    return False


async def test_down_stops_every_version_and_the_router_and_status_says_down(env):
    await deploy(env, "1.0.0")
    async with Load(env.url) as load:
        await load.wait_for(20)
        assert (await deploy(env, "2.0.0")).status == "promoted"
    assert await env.live() == {"1.0.0": 2, "2.0.0": 2}  # 1.0.0 kept for an instant rollback
    [before] = service.status(env.ctx, "shop")
    assert (before["state"], before["current"], before["instances"]) == ("running", "2.0.0", {"1.0.0": 2, "2.0.0": 2})

    r = await asyncio.to_thread(env.rg, "down", "shop")
    assert r.returncode == 0, r.stderr
    assert "shop taken down by" in r.stdout and "4 instance(s) stopped" in r.stdout

    assert await env.live() == {}
    assert read_router_state(env.state, "shop") is None
    assert not router_paths(env.state, "shop")[1].exists()  # a router started later serves nothing old
    assert await asyncio.to_thread(_refused, env.url)
    [after] = service.status(env.ctx, "shop")
    assert after == {"service": "shop", "state": "down", "current": None, "last_version": "2.0.0", "instances": {},
                     "previous": None, "previous_retire_at": None, "rollout": None}
    text = await asyncio.to_thread(env.rg, "status", "shop")
    assert "shop down (was 2.0.0)" in flat(text.stdout)
    [entry] = [e for e in AuditLog(env.state).entries() if e.action == "down"]
    assert entry.actor.endswith("(os login)") and entry.release == "shop@2.0.0"
    last = service.history(env.ctx, "shop", 1)[0]  # shown with the last rollout: `history shop` ends with it
    assert [e["kind"] for e in last["events"]][-2:] == ["intent", "down"] and last["version"] == "2.0.0"

    again = await asyncio.to_thread(env.rg, "down", "shop")
    assert again.returncode == 0 and "already down" in again.stdout

    # Deploying again starts from scratch: a first deploy, not a canary from a version that no longer runs.
    st = await deploy(env, "3.0.0")
    assert st.status == "promoted" and st.previous is None
    [back] = service.status(env.ctx, "shop")
    assert (back["state"], back["current"], back["instances"]) == ("running", "3.0.0", {"3.0.0": 2})


async def test_down_is_refused_during_a_rollout_unless_forced_and_needs_the_users_token(env):
    from releasegate.governance.identity import new_token
    from releasegate.governance.policy import load_policy

    manual = write_spec(env.spec.parent, env.port, "{canary: {steps: [{weight: 20}]}}")  # waits for promote
    await deploy(env, "1.0.0")
    rollout = asyncio.create_task(asyncio.wait_for(service.deploy(env.ctx, manual, "2.0.0"), 120))
    await eventually(lambda: (service.status(env.ctx, "shop")[0]["rollout"] or {}).get("waiting"),
                     what="the canary waiting for promote")
    with pytest.raises(UserError, match=r"rollout shop-2\.0\.0-\w+ of 2\.0\.0 is in progress.*"
                                        r"`releasegate abort shop` first, or `releasegate down shop --force`"):
        await take_down(env.ctx, "shop")
    assert await env.live() == {"1.0.0": 2, "2.0.0": 2}  # refused: nothing was touched

    policy = load_policy(Path(__file__).resolve().parent.parent / "examples" / "governance" / "policy.yaml")
    token = new_token(env.state, policy, "erin")
    wrong = await asyncio.to_thread(env.rg, "down", "shop", "--force", "--as", "erin", token="rg_not-erins")
    assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1 and "not erin's current token" in wrong.stderr
    assert await env.live() == {"1.0.0": 2, "2.0.0": 2}

    forced = await asyncio.to_thread(env.rg, "down", "shop", "--force", "--as", "erin", token=token)
    assert forced.returncode == 0, forced.stderr
    st = await rollout
    assert st.status == "aborted"  # the controller driving it applied the abort, then the service went down
    assert await env.live() == {}
    assert read_router_state(env.state, "shop") is None
    actions = [(e.action, e.actor) for e in AuditLog(env.state).entries() if e.action in ("down", "rollout.abort")]
    assert ("down", "erin") in actions
    history = service.history(env.ctx, "shop", 1)[0]
    assert any(e["kind"] == "command" and e["message"] == "abort by erin" for e in history["events"])
    assert service.status(env.ctx, "shop")[0]["state"] == "down"


async def test_status_never_calls_a_version_current_when_none_of_its_instances_runs(env):
    await deploy(env, "1.0.0")
    platform = make_platform(load_spec(env.spec).platform, env.state, env.spec.parent)
    for inst in await platform.instances("shop"):
        os.killpg(inst.pid or 0, signal.SIGKILL)  # a crash, a reboot: nobody took it down (the whole group)
    await eventually(lambda: service.status(env.ctx, "shop")[0]["state"] == "not_running", what="status to notice")
    [item] = service.status(env.ctx, "shop")
    assert (item["current"], item["last_version"], item["instances"]) == (None, "1.0.0", {})
    r = await asyncio.to_thread(env.rg, "status", "shop", "--json")
    assert json.loads(r.stdout)[0]["state"] == "not_running"
    text = await asyncio.to_thread(env.rg, "status")
    assert "shop not running (1.0.0: no instance runs)" in flat(text.stdout)

    r = await asyncio.to_thread(env.rg, "down", "shop")  # cleans up what is left: the router, the records
    assert r.returncode == 0 and "0 instance(s) stopped" in r.stdout, r.stderr
    assert read_router_state(env.state, "shop") is None and not await platform.dead_instances("shop")
    assert service.status(env.ctx, "shop")[0]["state"] == "down"


async def test_the_router_port_is_free_for_the_next_deploy_right_after_down_under_traffic(env):
    """The router closes its users' connections as it stops, so they linger in TIME-WAIT on its port for a
    minute: nothing listens there, and preflight (so the next deploy) must not call the port taken."""
    from releasegate.preflight import preflight

    await deploy(env, "1.0.0")
    async with Load(env.url) as load:
        await load.wait_for(20)
        r = await asyncio.to_thread(env.rg, "down", "shop")
        assert r.returncode == 0, r.stderr
    checks = {c.name: c for c in await preflight(load_spec(env.spec), env.spec, "2.0.0", env.state)}
    assert checks["port"].ok, checks["port"].detail
    assert (await deploy(env, "2.0.0")).status == "promoted"


async def test_a_failed_deploy_after_down_keeps_the_last_promoted_version(env):
    """After `down`, a deploy that fails before it promotes (here its health check) leaves the service down with
    the version that was running when it was taken down: `last_version` is never lost."""
    failing = write_spec(env.spec.parent, env.port, CANARY, faults="2.0.0:health=fail")
    await deploy(env, "1.0.0")
    assert (await asyncio.to_thread(env.rg, "down", "shop")).returncode == 0
    st = await asyncio.wait_for(service.deploy(env.ctx, failing, "2.0.0"), 60)
    assert st.status == "aborted"
    [item] = service.status(env.ctx, "shop")
    assert (item["state"], item["current"], item["last_version"]) == ("down", None, "1.0.0")
    r = await asyncio.to_thread(env.rg, "status", "shop", "--json")
    assert json.loads(r.stdout)[0]["last_version"] == "1.0.0"
    again = await asyncio.to_thread(env.rg, "down", "shop")  # nothing runs: a second down records no version...
    assert again.returncode == 0
    assert service.status(env.ctx, "shop")[0]["last_version"] == "1.0.0"  # ...and still forgets none
