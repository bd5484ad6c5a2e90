"""The order and content of checks, end to end: real demo processes, the real router, SQLite migrations, smoke
commands run by /bin/sh, real HTTP on 127.0.0.1.

PrivateTrade's runbook: start the new version, migrate (T+1), health-check until /health says
{"status": "healthy", "version": "2.0.0"}, run the smoke suite against the new endpoints (T+5), which need the new
schema, then move traffic. And health keeps being checked under traffic: a version whose /health fails after the
first traffic is rolled back, not promoted.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from releasegate import service
from releasegate.planning import make_plan
from releasegate.providers.platforms import make_platform
from releasegate.providers.routers.builtin import BuiltinRouterClient, read_router_state, router_client
from releasegate.spec import load_spec
from tests.support.rollouts import Load, cleanup, free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.slow
PY = sys.executable

SMOKE = '''\
import json, sqlite3, sys, urllib.request
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
version = args["--version"]
with urllib.request.urlopen(args["--base-url"] + "/api/items", timeout=5) as r:
    assert json.load(r)["version"] == version
columns = [row[1] for row in sqlite3.connect("app.db").execute("PRAGMA table_info(config)")]
print("config columns:", columns)
if version != "1.0.0" and "stock_mode" not in columns:
    print("FAILED test_stock_mode[specific]: no column stock_mode (not migrated?)")
    sys.exit(1)
if version == "3.0.0":
    print("FAILED tests/smoke/test_stocks.py::test_add_specific[/api/stocks/specific/add] - 500 != 200")
    sys.exit(2)
print("4 passed")
'''


def spec_text(port: int, steps: str = "[{weight: 20, pause: 3s}, {weight: 50, pause: 3s}]") -> str:
    return f"""\
service: shop
platform:
  command: "{PY} -m releasegate.demoapp --port {{port}}"
  instances: 2
  env: {{DEMO_CONTROL: "1"}}
  stop_grace: 3s
router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}
health:
  path: /health
  interval: 100ms
  timeout: 1s
  attempts: 50
  expect: {{status: healthy, version: "{{version}}"}}
smoke:
  - {{path: /api/items, expect_json: {{version: "{{version}}"}}, max_latency: 5s}}  # not a latency test
  - {{command: "{PY} smoke.py --base-url {{url}} --version {{version}}", timeout: 30s}}
strategy: {{canary: {{steps: {steps}}}}}
analysis:
  interval: 500ms
  post_promotion: 2s
  rules: [{{metric: error_rate, max: 0.05, for: 2s}}]
rollback: {{staircase: [10, 0], step_wait: 1s}}
migrations: {{database: "sqlite:///app.db"}}
"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Path, service.Context, int]]:
    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("CREATE TABLE config (id INTEGER PRIMARY KEY, name TEXT, value TEXT)")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "smoke.py").write_text(SMOKE)
    port = free_port()
    spec = tmp_path / "shop.yaml"
    spec.write_text(spec_text(port))
    yield spec, service.new_context(tmp_path / "state"), port
    asyncio.run(cleanup(tmp_path / "state", spec))


async def deploy(ctx: service.Context, spec: Path, version: str):
    return await asyncio.wait_for(service.deploy(ctx, spec, version), 90)


def router(state: Path) -> BuiltinRouterClient:
    info = read_router_state(state, "shop")
    assert info is not None
    return router_client(state, "shop", str(info["admin"]))


async def test_migrations_run_before_health_and_the_smoke_commands_that_need_the_schema(app, tmp_path):
    spec, ctx, port = app
    assert (await deploy(ctx, spec, "1.0.0")).status == "promoted"
    (tmp_path / "migrations" / "001_add_stock_mode.sql").write_text("ALTER TABLE config ADD COLUMN stock_mode TEXT;\n")

    plan = make_plan(spec, "2.0.0", ctx.state_dir)
    steps = [what.split(" ")[0] for _, what in plan.rows]
    assert steps[2:6] == ["start", "apply", "health-check", "smoke-test"]  # after the running version's prepare
    assert f"`{PY} smoke.py --base-url {{url}} --version {{version}}` against one instance" in plan.rows[5][1]

    async with Load(f"http://127.0.0.1:{port}/api/items") as load:
        await load.wait_for(10)
        st = await deploy(ctx, spec, "2.0.0")
    assert st.status == "promoted", st.reason
    assert load.failures == []
    events = service.history(ctx, "shop", 1)[0]["events"]
    kinds = [e["kind"] for e in events]
    assert kinds.index("started") < kinds.index("migrated") < kinds.index("healthy") < kinds.index("smoke_passed")
    smoke = next(e for e in events if e["kind"] == "smoke_passed")
    command_row = smoke["data"]["results"][-1]
    assert command_row["exit_code"] == 0 and "'stock_mode'" in command_row["output"]
    assert command_row["command"].startswith(f"{PY} smoke.py --base-url http://127.0.0.1:")


async def test_a_failing_smoke_command_aborts_with_its_output_and_no_user_traffic(app, tmp_path):
    spec, ctx, port = app
    assert (await deploy(ctx, spec, "1.0.0")).status == "promoted"
    (tmp_path / "migrations" / "001_add_stock_mode.sql").write_text("ALTER TABLE config ADD COLUMN stock_mode TEXT;\n")
    state = str(ctx.state_dir)
    async with Load(f"http://127.0.0.1:{port}/api/items") as load:
        await load.wait_for(10)
        run = await asyncio.to_thread(
            subprocess.run, [PY, "-m", "releasegate", "--state-dir", state, "deploy", str(spec), "--version", "3.0.0"],
            capture_output=True, text=True, timeout=120)
        await load.wait_for(10)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "3.0.0" not in load.by_version and load.failures == []
    out = " ".join(run.stdout.split())  # rich wraps long lines
    assert "test_add_specific[/api/stocks/specific/add] - 500 != 200" in out  # shown as printed, brackets too
    [rollout] = service.history(ctx, "shop", 1)
    assert rollout["status"] == "aborted"
    assert "exited 2 after" in rollout["reason"] and "test_add_specific[/api/stocks/specific/add]" in rollout["reason"]
    abort = next(e for e in rollout["events"] if e["kind"] == "abort")
    assert "4 passed" not in abort["data"]["results"][-1]["output"]
    assert "config columns:" in abort["data"]["results"][-1]["output"]


async def test_a_version_whose_health_fails_under_traffic_is_rolled_back_not_promoted(app, tmp_path):
    spec, ctx, port = app
    assert (await deploy(ctx, spec, "1.0.0")).status == "promoted"
    (tmp_path / "migrations" / "001_add_stock_mode.sql").write_text("ALTER TABLE config ADD COLUMN stock_mode TEXT;\n")
    platform = make_platform(load_spec(spec).platform, ctx.state_dir, spec.parent)
    async with Load(f"http://127.0.0.1:{port}/api/items") as load:
        await load.wait_for(10)
        rollout = asyncio.create_task(deploy(ctx, spec, "2.0.0"))

        async def canary_live() -> bool:
            assert not rollout.done(), f"the rollout ended before its first traffic: {rollout.result().reason}"
            return (await router(ctx.state_dir).get_routes("shop")).weight_of("2.0.0") > 0

        await eventually(canary_live, within=30, what="the first traffic to 2.0.0")
        new = [i for i in await platform.instances("shop") if i.version == "2.0.0"]
        async with httpx.AsyncClient(trust_env=False) as client:  # /health starts answering 503; requests are fine
            for inst in new:
                assert (await client.put(f"http://{inst.address}/_faults", content="health=fail")).status_code == 200
        st = await rollout
        await load.wait_for(10)
    assert st.status == "rolled_back"
    reason = st.reason or ""
    assert "health check of 2.0.0 failed 3 times in a row on 127.0.0.1:" in reason
    assert "/health answered 503" in reason and '"status": "failing"' in reason
    assert load.failures == []
    assert (await router(ctx.state_dir).get_routes("shop")).weights() == {"1.0.0": 100}
