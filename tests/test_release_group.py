"""Multi-service releases end to end: the seed's six Judgify services as one release through the builtin router,
real demo-app processes under client load; what each tier's failure does; ordered releases by depends_on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from releasegate import group_service
from releasegate.engine.group import GroupState
from tests.support.groups import BROKEN, JUDGIFY, GroupEnv
from tests.support.rollouts import Load
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

NAMES = [name for name, _, _ in JUDGIFY]


@pytest.fixture
def env(tmp_path):
    made = GroupEnv(tmp_path)
    yield made
    made.close()


@contextlib.asynccontextmanager
async def loads(env: GroupEnv) -> AsyncIterator[list[Load]]:
    """Client traffic through every member's router for the whole block."""
    async with contextlib.AsyncExitStack() as stack:
        running = [await stack.enter_async_context(Load(env.url(name), concurrency=2)) for name in env.specs]
        for load in running:
            await load.wait_for(5)
        yield running


async def first_release(env: GroupEnv, **kw: object) -> None:
    """1.0.0 of every member, deployed as a group (a first deploy holds and switches too)."""
    path = env.release(**kw)  # type: ignore[arg-type]
    gs = await group_service.deploy(env.ctx, path, ["1.0.0"])
    assert gs.status == "promoted", gs.reason


def outcome(gs: GroupState) -> dict[str, str]:
    return {m.service: m.status for m in gs.members}


async def test_six_services_switch_together_under_load_and_roll_back_together_after(env):
    await first_release(env, faults={})
    path = env.release()
    async with loads(env) as running:
        gs = await group_service.deploy(env.ctx, path, ["2.0.0"])
        for load in running:
            await load.wait_for(5)
        assert gs.status == "promoted", gs.reason
        assert outcome(gs) == dict.fromkeys(NAMES, "promoted")
        assert env.current() == dict.fromkeys(NAMES, "2.0.0")
        for name in NAMES:
            assert await env.routes(name) == {"2.0.0": 100}
        # After the group: `rollback RELEASE` sends every member back to its kept previous version.
        assert (await group_service.send_command(env.ctx, "judgify-core", "rollback")).applied
        for load in running:
            await load.wait_for(5)
    assert [f for load in running for f in load.failures] == []
    assert env.current() == dict.fromkeys(NAMES, "1.0.0")
    shown = group_service.status(env.ctx, "judgify-core")
    assert shown["status"] == "rolled_back" and {m["status"] for m in shown["members"]} == {"reverted"}
    # Every member held with no traffic until all were ready, and the gateway switched after what it needs.
    events = group_service.history(env.ctx, "judgify-core", 1)[0]["events"]
    intents = [e["message"] for e in events if e["kind"] == "intent"]
    releases = [i.split()[1] for i in intents if i.startswith("release ")]
    assert releases.index("api-gateway") > max(releases.index("judgment"), releases.index("workflow"))
    assert max(intents.index(f"start {n}") for n in NAMES) < min(intents.index(f"release {n}") for n in NAMES)


async def test_a_failing_critical_member_takes_all_six_back_with_no_failed_request(env):
    await first_release(env)
    path = env.release(faults={"judgment": BROKEN})
    async with loads(env) as running:
        gs = await group_service.deploy(env.ctx, path, ["2.0.0"])
        for load in running:
            await load.wait_for(5)
    assert gs.status == "rolled_back"
    assert "critical member judgment failed" in (gs.reason or "")
    statuses = outcome(gs)
    assert statuses["judgment"] == "aborted" and "smoke failed" in (gs.member("judgment").reason or "")
    assert all(statuses[n] in ("reverted", "skipped") for n in NAMES if n != "judgment"), statuses
    assert env.current() == dict.fromkeys(NAMES, "1.0.0")
    for name in NAMES:
        assert await env.routes(name) == {"1.0.0": 100}
    assert [f for load in running for f in load.failures] == []
    assert sum(load.by_version.get("2.0.0", 0) for load in running) == 0


async def test_a_critical_member_failing_after_the_switch_takes_back_the_switched_and_the_promoted(env):
    """The gateway's analysis rolls it back during its watch: the member still watching is rolled back through its
    controller, the one already promoted is switched back to its kept previous version."""
    members: list[tuple[str, str, list[str]]] = [
        ("gateway", "critical", []), ("workflow", "important", []), ("logs", "supporting", [])]
    await first_release(env, members=members)
    path = env.release(members, faults={"gateway": "2.0.0:error_rate=1,paths=/api/orders"},
                       watch={"gateway": "30s", "workflow": "30s", "logs": "0s"})
    orders = env.url("gateway").replace("/api/items", "/api/orders")
    async with Load(orders, concurrency=2), Load(env.url("workflow"), concurrency=1):
        gs = await group_service.deploy(env.ctx, path, ["2.0.0"])
    assert gs.status == "rolled_back" and "critical member gateway failed" in (gs.reason or "")
    assert outcome(gs) == {"gateway": "rolled_back", "workflow": "reverted", "logs": "reverted"}
    assert env.current() == {"gateway": "1.0.0", "workflow": "1.0.0", "logs": "1.0.0"}
    for name in ("gateway", "workflow", "logs"):
        assert await env.routes(name) == {"1.0.0": 100}


async def test_a_failing_supporting_member_goes_back_alone(env):
    await first_release(env)
    path = env.release(faults={"logging": BROKEN})
    async with loads(env) as running:
        gs = await group_service.deploy(env.ctx, path, ["2.0.0"])
    assert gs.status == "partial" and "logging" in (gs.reason or "")
    assert outcome(gs) == {**dict.fromkeys(NAMES, "promoted"), "logging": "aborted"}
    assert env.current() == {**dict.fromkeys(NAMES, "2.0.0"), "logging": "1.0.0"}
    assert await env.routes("logging") == {"1.0.0": 100}
    assert [f for load in running for f in load.failures] == []
    # Every member's outcome and reason, shown together.
    shown = group_service.status(env.ctx, "judgify-core")
    assert [m["service"] for m in shown["members"]] == NAMES
    assert "smoke failed" in next(m["reason"] for m in shown["members"] if m["service"] == "logging")


async def test_an_important_member_pauses_the_group_until_promote(env):
    members = [("gateway", "critical", ["workflow"]), ("workflow", "important", []), ("logs", "supporting", [])]
    await first_release(env, members=members)
    path = env.release(members, faults={"workflow": BROKEN})
    deploy = asyncio.create_task(group_service.deploy(env.ctx, path, ["2.0.0"]))
    paused = await eventually(lambda: group_service.status(env.ctx, "judgify-core")["paused"], within=30,
                              what="the group pausing")
    assert "important member workflow failed" in paused and "promote judgify-core" in paused
    # Paused: the others hold with no traffic; nothing switches on its own.
    assert await env.routes("gateway") == {"1.0.0": 100}
    assert not deploy.done()
    res = await group_service.send_command(env.ctx, "judgify-core", "promote")
    assert res.applied
    gs = await asyncio.wait_for(deploy, 60)
    assert gs.status == "partial"
    assert outcome(gs) == {"gateway": "promoted", "workflow": "aborted", "logs": "promoted"}
    assert env.current() == {"gateway": "2.0.0", "workflow": "1.0.0", "logs": "2.0.0"}


async def test_rollback_of_a_paused_group_takes_every_member_back(env):
    members: list[tuple[str, str, list[str]]] = [("gateway", "critical", []), ("workflow", "important", [])]
    await first_release(env, members=members, switch="ordered")
    path = env.release(members, switch="ordered", faults={"workflow": BROKEN})
    deploy = asyncio.create_task(group_service.deploy(env.ctx, path, ["2.0.0"]))
    await eventually(lambda: group_service.status(env.ctx, "judgify-core")["paused"], within=30,
                     what="the group pausing")
    await eventually(lambda: env.current()["gateway"] == "2.0.0", within=30, what="gateway promoted")
    await group_service.send_command(env.ctx, "judgify-core", "rollback")
    gs = await asyncio.wait_for(deploy, 60)
    assert gs.status == "rolled_back"
    assert outcome(gs) == {"gateway": "reverted", "workflow": "aborted"}
    assert env.current() == {"gateway": "1.0.0", "workflow": "1.0.0"}
    assert await env.routes("gateway") == {"1.0.0": 100}


async def test_an_ordered_release_promotes_each_member_after_the_ones_it_depends_on(env):
    members = [("gateway", "critical", ["api", "worker"]), ("api", "important", ["db"]), ("worker", "supporting", []),
               ("db", "critical", [])]
    path = env.release(members, switch="ordered")
    assert (await group_service.deploy(env.ctx, path, ["1.0.0"])).status == "promoted"
    gs = await group_service.deploy(env.ctx, path, ["api=2.0.1", "worker=2.0.2", "db=2.0.3", "gateway=2.0.4"])
    assert gs.status == "promoted", gs.reason
    assert env.current() == {"gateway": "2.0.4", "api": "2.0.1", "worker": "2.0.2", "db": "2.0.3"}
    store = env.ctx.store()
    try:
        ran = {m.service: store.rollout(m.rollout_id) for m in gs.members}
    finally:
        store.close()
    times = {name: (rec.state.created_at, rec.state.finished_at) for name, rec in ran.items() if rec}
    assert times["api"][0] >= times["db"][1]
    assert times["gateway"][0] >= max(times["api"][1] or 0, times["worker"][1] or 0)
    assert all(rec is not None and rec.state.strategy == "bluegreen" for rec in ran.values())
