"""End to end on this machine: real app processes, the real router process, real HTTP on 127.0.0.1, SQLite.

Each test deploys 1.0.0 first, then rolls out another version under continuous client traffic and checks what a
user would notice: which version answered, whether any request failed, where traffic ends up, what was recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.errors import UserError
from releasegate.providers.base import Instance
from releasegate.providers.routers.builtin import changes_path, read_router_state, router_client
from tests.support.rollouts import Load, RolloutEnv, free_port, write_spec
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

CANARY = "{canary: {steps: [{weight: 20, pause: 1500ms}, {weight: 50, pause: 1500ms}]}}"


class Env(RolloutEnv):
    def spec(self, strategy: str = CANARY, *, control: bool = False, **kw: Any) -> Path:
        return super().spec(strategy, control=control, **kw)


@pytest.fixture
def env(tmp_path):
    """A state dir, a free router port, and cleanup of every process the test started."""
    made = Env(tmp_path)
    yield made
    made.close()


async def deploy(env, spec: Path, version: str):
    """Every rollout here finishes in seconds; one that does not is a failure, not a hang."""
    return await asyncio.wait_for(service.deploy(env.ctx, spec, version), 60)


async def routes_now(env: Env) -> dict[str, int]:
    return await env.routes()


async def test_canary_promotes_under_load_with_zero_failed_requests(env):
    spec = env.spec()
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "2.0.0")
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    assert load.by_version.get("1.0.0", 0) > 0 and load.by_version.get("2.0.0", 0) > 0
    assert await routes_now(env) == {"2.0.0": 100}
    [status] = service.status(env.ctx, "shop")
    assert status["current"] == "2.0.0" and status["previous"] == "1.0.0"
    assert status["previous_retire_at"] > st.finished_at + 23 * 3600  # kept 24 h for instant rollback
    # Every move the controller made carries its lease's fencing token: a router refuses a stale one.
    moves = [json.loads(line) for line in changes_path(env.state, "shop").read_text().splitlines()]
    assert {m["fence"]["rollout"] for m in moves if "2.0.0" in m["fence"]["rollout"]} == {st.id}
    assert all(m["fence"]["token"] == 1 for m in moves)  # driven by one process from start to end


async def test_error_rate_breach_rolls_back_and_records_the_evidence(env):
    spec = env.spec(faults="3.0.0:error_rate=0.5", smoke_path="/health")
    await deploy(env, spec, "1.0.0")
    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "3.0.0")
        await load.wait_for(20)
    assert st.status == "rolled_back"
    assert "error_rate > 5% for 2s" in (st.reason or "")
    assert await routes_now(env) == {"1.0.0": 100}
    assert all(f.endswith("from 3.0.0") for f in load.failures), load.failures  # the stable version never failed
    [run] = [h for h in service.history(env.ctx, "shop") if h["version"] == "3.0.0"]
    decision = next(e for e in run["events"] if e["kind"] == "rollback")
    assert decision["data"]["values"]["0:error_rate"] > 0.05
    kinds = [e["kind"] for e in run["events"]]
    assert kinds.index("intent") < kinds.index("step")  # the step was written before it was acted on
    assert service.status(env.ctx, "shop")[0]["current"] == "1.0.0"


async def test_latency_breach_rolls_back(env):
    spec = env.spec(faults="3.0.0:latency=0.4", rules="[{metric: latency_p95, max: 150ms, for: 1s}]",
                    smoke_path="/health")
    await deploy(env, spec, "1.0.0")
    async with Load(env.url, concurrency=8) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "3.0.0")
    assert st.status == "rolled_back" and "latency_p95 > 150ms" in (st.reason or "")
    assert load.failures == []
    assert await routes_now(env) == {"1.0.0": 100}


@pytest.mark.parametrize(("faults", "check"), [("2.0.0:health=fail", "health"),
                                               ("2.0.0:error_rate=1", "smoke")])
async def test_failed_health_or_smoke_aborts_before_any_user_request_reaches_it(env, faults, check):
    spec = env.spec(faults=faults)
    spec.write_text(spec.read_text().replace("attempts: 50", "attempts: 5"))
    await deploy(env, spec, "1.0.0")
    async with Load(env.url) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "2.0.0")
        await load.wait_for(20)
    assert st.status == "aborted" and f"{check} failed" in (st.reason or "")
    assert "2.0.0" not in load.by_version and load.failures == []
    stats = await env.router().stats(600)
    assert stats.get("2.0.0", {}).get("requests", 0) == 0
    assert {i.version for i in await _instances(env, spec)} == {"1.0.0"}


async def _instances(env, spec: Path) -> list[Instance]:
    from releasegate.providers.platforms import make_platform
    from releasegate.spec import load_spec

    s = load_spec(spec)
    return await make_platform(s.platform, env.state, spec.parent).instances("shop")


async def test_bluegreen_switch_and_rollback_command_lose_no_request(env):
    spec = env.spec("{bluegreen: {keep_previous: 1h}}")
    await deploy(env, spec, "1.0.0")
    async with Load(env.url, concurrency=6) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "2.0.0")
        assert st.status == "promoted"
        await load.wait_for(30)
        assert await routes_now(env) == {"2.0.0": 100}
        result = await service.send_command(env.ctx, "shop", "rollback")
        assert result.applied
        await load.wait_for(30)
    assert load.failures == []
    assert await routes_now(env) == {"1.0.0": 100}
    assert {i.version for i in await _instances(env, spec)} == {"1.0.0"}
    assert service.status(env.ctx, "shop")[0]["current"] == "1.0.0"


async def test_rollback_as_a_user_needs_their_token_and_is_audited_under_their_name(env):
    from releasegate.governance.identity import new_token
    from releasegate.governance.policy import load_policy
    from releasegate.store.audit import AuditLog

    policy = load_policy(Path(__file__).resolve().parent.parent / "examples" / "governance" / "policy.yaml")
    token = new_token(env.state, policy, "erin")
    spec = env.spec("{bluegreen: {keep_previous: 1h}}", post_promotion="0s")
    await deploy(env, spec, "1.0.0")
    await deploy(env, spec, "2.0.0")
    rollback = [sys.executable, "-m", "releasegate", "--state-dir", str(env.state), "rollback", "shop", "--as", "erin"]

    def run(token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(rollback, capture_output=True, text=True, env={**os.environ, "RELEASEGATE_TOKEN": token})

    wrong = await asyncio.to_thread(run, "rg_not-erins")
    assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1 and "not erin's current token" in wrong.stderr
    assert await routes_now(env) == {"2.0.0": 100}  # refused: nothing happened
    done = await asyncio.to_thread(run, token)
    assert done.returncode == 0, done.stderr
    assert await routes_now(env) == {"1.0.0": 100}
    [entry] = [e for e in AuditLog(env.state).entries() if e.action == "rollback"]
    assert entry.actor == "erin" and "rolled back by erin" in (entry.decision or "")


async def test_rolling_replaces_every_instance_under_load_with_zero_failures(env):
    spec = env.spec("{rolling: {max_surge: 1, max_unavailable: 1}}", instances=3)
    await deploy(env, spec, "1.0.0")
    async with Load(env.url, concurrency=6) as load:
        await load.wait_for(20)
        st = await deploy(env, spec, "2.0.0")
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    assert [i.version for i in await _instances(env, spec)] == ["2.0.0"] * 3
    assert await routes_now(env) == {"2.0.0": 100}


async def test_second_deploy_is_refused_naming_the_rollout_in_progress(env):
    spec = env.spec("{canary: {steps: [{weight: 10}]}}")  # no pause: waits for promote
    await deploy(env, spec, "1.0.0")
    first = asyncio.create_task(deploy(env, spec, "2.0.0"))
    await eventually(lambda: (service.status(env.ctx, "shop")[0]["rollout"] or {}).get("waiting"), what="manual step")
    with pytest.raises(UserError, match=r"rollout shop-2\.0\.0-\w+ of 2\.0\.0 is in progress"):
        await deploy(env, spec, "3.0.0")
    async with Load(env.url) as load:  # the post-promotion watch passes on evidence only: it needs traffic
        await load.wait_for(10)
        assert (await service.send_command(env.ctx, "shop", "promote")).applied
        st = await first
    assert st.status == "promoted" and await routes_now(env) == {"2.0.0": 100}


async def test_sigkill_of_the_controller_keeps_traffic_flowing_and_resume_finishes(env):
    spec = env.spec("{canary: {steps: [{weight: 20, pause: 2s}, {weight: 50, pause: 2s}]}}")
    await deploy(env, spec, "1.0.0")
    cmd = [sys.executable, "-m", "releasegate", "--state-dir", str(env.state), "deploy", str(spec),
           "--version", "2.0.0"]
    async with Load(env.url) as load:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await eventually(lambda: (service.status(env.ctx, "shop")[0]["rollout"] or {}).get("weight") == 20,
                             30, what="the canary at 20%")  # a subprocess deploy: slow to start on a loaded machine
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        await load.wait_for(40)  # the data plane does not need the controller
        rollout = service.status(env.ctx, "shop")[0]["rollout"]
        assert rollout["controller_alive"] is False and rollout["weight"] == 20
        assert await routes_now(env) == {"2.0.0": 20, "1.0.0": 80}
        st = await asyncio.wait_for(service.resume(env.ctx, "shop"), 60)
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert load.failures == []
    events = [e["kind"] for e in service.history(env.ctx, "shop")[0]["events"]]
    assert "resumed" in events


async def test_a_router_killed_mid_canary_comes_back_with_its_routes_and_the_rollout_finishes(env):
    spec = env.spec("{canary: {steps: [{weight: 20, pause: 3s}, {weight: 50, pause: 1s}]}}")
    await deploy(env, spec, "1.0.0")
    async with Load(env.url) as load:
        await load.wait_for(20)
        rollout = asyncio.create_task(deploy(env, spec, "2.0.0"))
        await eventually(lambda: (service.status(env.ctx, "shop")[0]["rollout"] or {}).get("weight") == 20,
                   what="the canary at 20%")
        old = read_router_state(env.state, "shop")
        assert old is not None, "the router is not running"
        os.kill(int(old["pid"]), signal.SIGKILL)
        # The controller notices at its next tick and restarts the router from its persisted routes file.
        new = await eventually(lambda: (s := read_router_state(env.state, "shop")) and s["pid"] != old["pid"] and s,
                         what="a restarted router")
        assert (await router_client(env.state, "shop", str(new["admin"])).get_routes("shop")).weight_of("2.0.0") >= 20
        st = await rollout
        await load.wait_for(20)
    assert st.status == "promoted", st.reason
    assert await routes_now(env) == {"2.0.0": 100}


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: shop\nplatform:\n  command: python3 app.py\nstratgy: {}\n")
    r = subprocess.run([sys.executable, "-m", "releasegate", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{bad}:3:12:" in r.stderr and "{port}" in r.stderr
    assert f"{bad}:4:1: unknown key 'stratgy' (did you mean 'strategy'?)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(tmp_path / "s"), "status", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("releasegate: nope: unknown service")


def test_plan_prints_steps_and_changes_nothing(tmp_path):
    spec = write_spec(tmp_path, 18999, CANARY)
    state = tmp_path / "state"
    r = subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), "plan", str(spec),
                        "--version", "2.0.0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "first deploy" in r.stdout and "route 2.0.0 100%" in r.stdout
    assert not state.exists()


async def test_gc_retires_the_previous_version_once_keep_previous_has_passed(env):
    spec = env.spec("{bluegreen: {keep_previous: 1s}}", post_promotion="0s")
    await deploy(env, spec, "1.0.0")
    await deploy(env, spec, "2.0.0")
    assert {i.version for i in await _instances(env, spec)} == {"1.0.0", "2.0.0"}  # kept for instant rollback
    assert await service.gc(env.ctx) in ({}, {"shop": []})  # not due yet... or just due: nothing stopped early
    due = service.status(env.ctx, "shop")[0]["previous_retire_at"]
    await eventually(lambda: env.ctx.clock.now() > due, what="keep_previous to pass")
    stopped = await service.gc(env.ctx)
    assert [s.split("@")[0] for s in stopped["shop"]] == ["1.0.0", "1.0.0"]
    assert {i.version for i in await _instances(env, spec)} == {"2.0.0"}
    assert service.status(env.ctx, "shop")[0]["previous"] is None
    [retired] = [e for e in service.history(env.ctx, "shop", 1)[0]["events"] if e["kind"] == "retired"]
    # shown with the rollout that replaced it
    assert retired["message"].startswith("retiring 1.0.0: kept for rollback until ")
    assert retired["message"].endswith(", which has passed (2 instance(s) stopped)")
    with pytest.raises(UserError, match="nothing to roll back to"):
        await service.send_command(env.ctx, "shop", "rollback")


async def test_a_deploy_that_retires_the_kept_version_says_so_records_it_and_audits_it(env):
    """Deploying a third version ends the instant rollback to the first: the deploy prints it, `history` shows it
    with the rollout that had kept it, and the audit log names who did it."""
    from releasegate.store.audit import AuditLog

    spec = env.spec("{bluegreen: {}}", post_promotion="0s", rules="[]")
    await deploy(env, spec, "1.0.0")
    await deploy(env, spec, "2.0.0")
    kept_until = service.status(env.ctx, "shop")[0]["previous_retire_at"]
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "releasegate", "--state-dir", str(env.state),
                                                 "deploy", str(spec), "--version", "3.0.0"],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if "retiring" in ln]
    assert "retiring 1.0.0, kept for rollback until " in line
    assert "because 3.0.0 replaces 2.0.0's rollback target: 2.0.0 becomes the version kept for rollback" in line
    assert line.endswith("(2 instance(s) stopped)")
    assert {i.version for i in await _instances(env, spec)} == {"2.0.0", "3.0.0"}

    by_version = {h["version"]: h for h in service.history(env.ctx, "shop")}
    [retired] = [e for e in by_version["2.0.0"]["events"] if e["kind"] == "retired"]
    assert retired["data"]["version"] == "1.0.0" and retired["data"]["kept_until"] == kept_until
    assert retired["data"]["replaced_by"] == "3.0.0" and len(retired["data"]["stopped"]) == 2
    text = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "releasegate", "--state-dir",
                                                    str(env.state), "history", "shop"],
                                   capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    assert "retired         retiring 1.0.0, kept for rollback until" in text.stdout
    [entry] = [e for e in AuditLog(env.state).entries() if e.action == "retire"]
    assert entry.release == "shop@1.0.0" and entry.actor.endswith("(os login)")
    assert "because 3.0.0 replaces" in str(entry.decision)


def test_router_cli_runs_in_the_foreground_reports_status_and_stops(tmp_path):
    port = free_port()
    state = str(tmp_path / "state")
    rg = [sys.executable, "-m", "releasegate", "--state-dir", state, "router"]
    proc = subprocess.Popen([*rg, "--service", "shop", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(eventually(lambda: read_router_state(Path(state), "shop") is not None, what="the router"))
        status = subprocess.run([*rg, "status"], capture_output=True, text=True)
        assert f"shop: built-in router pid {proc.pid} on 127.0.0.1:{port}" in status.stdout
        clash = subprocess.run([*rg, "--service", "other", "--listen", f"127.0.0.1:{port}"],
                               capture_output=True, text=True)
        assert clash.returncode == 2 and "address already in use" in clash.stderr and "Traceback" not in clash.stderr
        stop = subprocess.run([*rg, "stop", "shop"], capture_output=True, text=True)
        assert stop.returncode == 0 and "stopped" in stop.stdout
        assert proc.wait(timeout=10) == 0
        after = subprocess.run([*rg, "status"], capture_output=True, text=True)
        assert "router pid" not in after.stdout and ("not running" in after.stdout or "no router" in after.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_a_deploy_posts_its_events_to_the_notify_targets(env):
    from tests.support.receiver import Receiver

    with Receiver() as everything, Receiver() as outcomes:
        extra = (f'notify:\n  - {{url: "{everything.url()}"}}\n'
                 f'  - {{url: "{outcomes.url()}", events: [promoted, rolled_back]}}\n')
        spec = env.spec(extra=extra)
        await deploy(env, spec, "1.0.0")
        async with Load(env.url) as load:
            await load.wait_for(20)
            st = await deploy(env, spec, "2.0.0")
        assert st.status == "promoted"
        kinds = [e.get("event") for e in everything.events()]
        assert kinds.count("started") == 2 and "step" in kinds and kinds.count("promoted") == 2
        assert [e.get("event") for e in outcomes.events()] == ["promoted", "promoted"]
        step = next(e for e in everything.events() if e.get("event") == "step" and e.get("service_version") == "2.0.0")
        assert step.get("weight") == "20"


async def test_migrations_run_before_traffic_and_a_failing_one_restores_the_database_and_aborts(env, tmp_path):
    import sqlite3

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users (email) VALUES ('a@example.com'), ('b@example.com')")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_add_phone.sql").write_text("ALTER TABLE users ADD COLUMN phone TEXT;\n")
    spec = env.spec("{bluegreen: {}}", extra="migrations: {database: 'sqlite:///app.db'}\n", post_promotion="0s")
    await deploy(env, spec, "1.0.0")
    st = await deploy(env, spec, "2.0.0")
    assert st.status == "promoted" and st.migrations_applied == ["001_add_phone.sql"]
    with sqlite3.connect(db) as conn:
        assert "phone" in [r[1] for r in conn.execute("PRAGMA table_info(users)")]

    (tmp_path / "migrations" / "002_ok.sql").write_text("CREATE TABLE audit (id INTEGER PRIMARY KEY);\n")
    (tmp_path / "migrations" / "003_broken.sql").write_text("INSERT INTO no_such_table VALUES (1);\n")
    async with Load(env.url) as load:
        await load.wait_for(10)
        st = await deploy(env, spec, "3.0.0")
        await load.wait_for(10)
    assert st.status == "aborted" and "003_broken.sql" in (st.reason or "")
    assert "3.0.0" not in load.by_version and load.failures == []
    with sqlite3.connect(db) as conn:  # restored: 002's table is gone too, the data is as before
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "audit" not in tables and conn.execute("SELECT count(*) FROM users").fetchone()[0] == 2
