"""Command bells (releasegate/wakeups.py): how the server's controllers hear of promote/abort/rollback.

The app runs in the test's event loop (httpx's ASGI transport), so its supervisor's rollouts are real controllers
of real local processes and a real router, in this process. The intervals at which the controllers and the bells'
watcher look at the store are set to an hour where a test must not be rescued by them: if the bell did not ring,
the command would not be applied within the route's 30 s wait and the test would fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from releasegate import service
from releasegate.server.auth import issue
from releasegate.server.runner import Supervisor
from tests.support.rollouts import RolloutEnv
from tests.support.server import app_in_this_loop
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

FAST = "{canary: {steps: [{weight: 50, pause: 100ms}], keep_previous: 1h}}"
HELD = "{canary: {steps: [{weight: 20, pause: 1h}], keep_previous: 1h}}"
HOUR = 3600.0


@pytest.fixture
def made(tmp_path: Path) -> Iterator[RolloutEnv]:
    env = RolloutEnv(tmp_path)
    try:
        yield env
    finally:
        env.close()  # stops what the last spec started (outside the test's event loop)


@pytest.fixture
async def app(made: RolloutEnv) -> AsyncIterator[FastAPI]:
    async with app_in_this_loop(made.state, made.tmp_path) as built:
        yield built


def client(app: FastAPI, made: RolloutEnv) -> httpx.AsyncClient:
    token = issue(made.state, "dora", "deployer")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://releasegate",
                             headers={"Authorization": f"Bearer {token}"}, timeout=60)


async def held_canary(c: httpx.AsyncClient, made: RolloutEnv) -> str:
    """1.0.0 promoted, then 2.0.0 held at 20 % (its controller asleep until the next analysis); its id."""
    made.spec(FAST)
    first = (await c.post("/api/v1/rollouts", json={"spec_path": "shop.yaml", "version": "1.0.0"})).json()["id"]
    await _until(c, first, lambda got: not got["active"], "1.0.0 to be promoted")
    made.spec(HELD)
    answer = await c.post("/api/v1/rollouts", json={"spec_path": "shop.yaml", "version": "2.0.0"})
    assert answer.status_code == 202, answer.text
    rollout_id: str = answer.json()["id"]
    await _until(c, rollout_id, lambda got: got["weight"] == 20, "2.0.0 at 20%")
    return rollout_id


async def _until(c: httpx.AsyncClient, rollout_id: str, ok: Any, what: str) -> dict[str, Any]:
    async def look() -> dict[str, Any] | None:
        got: dict[str, Any] = (await c.get(f"/api/v1/rollouts/{rollout_id}")).json()
        return got if ok(got) else None
    found: dict[str, Any] = await eventually(look, 60, what, every=0.05)
    return found


async def test_a_command_posted_through_the_api_wakes_its_controller_at_once(app: FastAPI, made: RolloutEnv):
    supervisor: Supervisor = app.state.supervisor
    supervisor.bells.fallback = HOUR  # no controller asks the store itself within the test
    supervisor.bells.pending = None  # and no watcher asks for them: only the bell can wake the controller
    async with client(app, made) as c:
        rollout_id = await held_canary(c, made)
        answer = (await c.post("/api/v1/services/shop/abort")).json()
        assert answer["applied"] is True, answer  # applied within the route's wait: the bell woke the controller
        ended = await _until(c, rollout_id, lambda got: not got["active"], "the abort to end the rollout")
    assert ended["status"] == "aborted"
    assert await made.routes() == {"1.0.0": 100}


async def test_a_command_from_another_process_is_rung_by_the_watcher(app: FastAPI, made: RolloutEnv):
    """A command the server did not post (the CLI standalone on the same store: a context without bells) is
    found by the one watcher of the process, with the controllers' own look at the store an hour away."""
    supervisor: Supervisor = app.state.supervisor
    supervisor.bells.fallback = HOUR
    supervisor.bells.watch_every = 0.05
    async with client(app, made) as c:
        rollout_id = await held_canary(c, made)
        elsewhere = service.new_context(made.state)
        elsewhere.actor = "cli-user"
        result = await service.send_command(elsewhere, "shop", "abort", wait=30.0)
        assert result.applied, result.message
        ended = await _until(c, rollout_id, lambda got: not got["active"], "the abort to end the rollout")
    assert ended["status"] == "aborted"
    assert await made.routes() == {"1.0.0": 100}
