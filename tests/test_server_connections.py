"""A server's rollouts share one set of database connections (releasegate/store/shared.py).

Why it matters to a user: each rollout used to keep three SQLite connections of its own (the controller's store,
the audit log, the calendar reader). At a thousand rollouts that was 3,000 connections and their caches, which
the garbage collector walked at every full collection: pauses of 0.3 s for every rollout at once, and 650 MB of
memory (docs/benchmarks.md). Here real rollouts (real processes behind real routers) are held in their canary
step in one server, and the SQLite connections this process holds are counted: six rollouts hold no more than
two do.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from releasegate.server.auth import issue
from tests.support.rollouts import RolloutEnv, cleanup, free_port, write_spec
from tests.support.server import app_in_this_loop
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

FAST = "{canary: {steps: [{weight: 50, pause: 100ms}], keep_previous: 1h}}"
HELD = "{canary: {steps: [{weight: 20, pause: 1h}], keep_previous: 1h}}"


@pytest.fixture
def made(tmp_path: Path) -> Iterator[tuple[RolloutEnv, list[Path]]]:
    env, specs = RolloutEnv(tmp_path), list[Path]()
    try:
        yield env, specs
    finally:
        for spec in specs:
            asyncio.run(cleanup(env.state, spec))


@pytest.fixture
async def app(made: tuple[RolloutEnv, list[Path]]) -> AsyncIterator[FastAPI]:
    async with app_in_this_loop(made[0].state, made[0].tmp_path) as built:
        yield built


def service_spec(env: RolloutEnv, n: int, port: int, strategy: str) -> Path:
    """Service ``svc<n>`` behind its router on ``port``, one instance."""
    directory = env.tmp_path / f"svc{n}"
    directory.mkdir(exist_ok=True)
    path = write_spec(directory, port, strategy, instances=1)
    path.write_text(path.read_text().replace("service: shop", f"service: svc{n}"))
    return path


def connections() -> int:
    """How many SQLite connections this process has open (once what nothing uses any more is collected). Not its
    descriptors on the file: SQLite keeps a closed connection's descriptor while others in the process hold
    locks on the file, and reuses it later."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, sqlite3.Connection))


async def held(c: httpx.AsyncClient, env: RolloutEnv, specs: list[Path], n: int) -> None:
    """svc<n> at 1.0.0 (promoted), then 2.0.0 held in its 20 % step."""
    port = free_port()
    for version, strategy in (("1.0.0", FAST), ("2.0.0", HELD)):
        path = service_spec(env, n, port, strategy)
        if path not in specs:
            specs.append(path)
        answer = await c.post("/api/v1/rollouts", json={"spec_path": str(path.relative_to(env.tmp_path)),
                                                        "version": version})
        assert answer.status_code == 202, answer.text
        rollout_id = answer.json()["id"]

        async def reached(rollout_id: str = rollout_id, version: str = version) -> bool:
            got = (await c.get(f"/api/v1/rollouts/{rollout_id}")).json()
            return bool(got["status"] == "promoted" if version == "1.0.0" else got["weight"] == 20)
        await eventually(reached, 90, f"svc{n} {version}", every=0.05)


async def test_six_rollouts_hold_no_more_database_connections_than_two(
        app: FastAPI, made: tuple[RolloutEnv, list[Path]]) -> None:
    """Two first: by then the server has opened what it keeps for itself (its reads', its command watcher's)."""
    env, specs = made
    token = issue(env.state, "dora", "deployer")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://releasegate",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for n in range(2):
            await held(c, env, specs, n)
        with_two = connections()
        for n in range(2, 6):
            await held(c, env, specs, n)
        with_six = connections()
        assert app.state.supervisor.active() == 6
    assert with_six <= with_two, f"{with_two} connections with two rollouts held, {with_six} with six"
