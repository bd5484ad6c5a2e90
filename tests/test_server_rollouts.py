"""Real local-process rollouts driven by a real ``releasegate server`` and steered only through its API.

Each test starts the server (subprocess, loopback), deploys with a deployer's token, follows ``GET /rollouts/{id}``
and ``/events`` as a client would, and checks what the routers route and what the audit log recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate import service
from tests.support.rollouts import Load, RolloutEnv
from tests.support.server import ServerProc, served
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

FAST = "{canary: {steps: [{weight: 50, pause: 100ms}], keep_previous: 1h}}"
HELD = "{canary: {steps: [{weight: 20, pause: 1h}], keep_previous: 1h}}"
"""A canary that stays at 20 % until someone promotes, aborts or rolls it back (or the test ends)."""


@pytest.fixture
def env(tmp_path) -> Iterator[tuple[RolloutEnv, ServerProc]]:
    with served(tmp_path) as pair:
        yield pair


def deploy(c: httpx.Client, version: str, **extra: Any) -> httpx.Response:
    return c.post("/api/v1/rollouts", json={"spec_path": "shop.yaml", "version": version}, **extra)


async def ended(c: httpx.Client, rollout_id: str) -> dict[str, Any]:
    """The rollout once it is over (polled as a client would)."""
    def over() -> dict[str, Any] | None:
        got: dict[str, Any] = c.get(f"/api/v1/rollouts/{rollout_id}").json()
        return None if got["active"] else got
    found: dict[str, Any] = await eventually(over, 60, f"rollout {rollout_id} to end", every=0.1)
    return found


def lag_count(c: httpx.Client) -> float:
    """How many controller wake-ups ``releasegate_scheduling_lag_seconds`` has observed."""
    found = re.search(r"^releasegate_scheduling_lag_seconds_count (\S+)$", c.get("/metrics").text, re.M)
    assert found is not None, "no releasegate_scheduling_lag_seconds on /metrics"
    return float(found.group(1))


async def at_weight(c: httpx.Client, rollout_id: str, weight: int) -> None:
    await eventually(lambda: c.get(f"/api/v1/rollouts/{rollout_id}").json()["weight"] == weight, 60,
                     f"rollout {rollout_id} at {weight}%", every=0.1)


async def test_a_deploy_through_the_api_promotes_is_idempotent_and_audited_under_the_token_name(env):
    made, server = env
    made.spec(FAST)
    token = server.token("dora", "deployer", "shop")
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}",
                                                               "Idempotency-Key": "ci-run-7"}, timeout=60) as ac:
        body = {"spec_path": "shop.yaml", "version": "1.0.0"}
        first, racing = await asyncio.gather(ac.post("/api/v1/rollouts", json=body),
                                             ac.post("/api/v1/rollouts", json=body))  # a CI retry racing the first
    assert first.status_code == racing.status_code == 202, (first.text, racing.text)
    assert first.json() == racing.json()
    with server.client(token) as c:
        rid = first.json()["id"]
        assert first.headers["location"] == f"/api/v1/rollouts/{rid}"
        again = deploy(c, "1.0.0", headers={"Idempotency-Key": "ci-run-7"})
        other = deploy(c, "1.0.1", headers={"Idempotency-Key": "ci-run-7"})
        assert again.status_code == 202 and again.json()["id"] == rid
        assert other.status_code == 409 and other.json()["type"] == "urn:releasegate:problem:idempotency-conflict"
        done = await ended(c, rid)
        assert done["status"] == "promoted", done["reason"]
        assert done["actor"] == "dora"
        kinds = [e["kind"] for e in c.get(f"/api/v1/rollouts/{rid}/events").json()]
        assert kinds[0] == "created" and kinds[-1] == "promoted"
        later = c.get(f"/api/v1/rollouts/{rid}/events", params={"after": 10**9}).json()
        assert later == []
        listed = c.get("/api/v1/rollouts").json()
        assert [r["id"] for r in listed] == [rid]
        [shop] = c.get("/api/v1/services").json()
        assert shop["state"] == "running" and shop["current"] == "1.0.0"
    assert await made.routes() == {"1.0.0": 100}
    with server.client(server.token("ada", "admin")) as c:
        entries = [json.loads(line) for line in c.get("/api/v1/audit/export").text.splitlines()]
    actors = {e["action"]: e["actor"] for e in entries if e["release"] == "shop@1.0.0"}
    assert actors["deploy.admitted"] == "dora" and actors["rollout.promoted"] == "dora", actors


async def test_promote_abort_and_rollback_need_a_deployer_of_that_service(env):
    made, server = env
    made.spec(FAST)
    dora = server.token("dora", "deployer", "shop")
    vera = server.token("vera", "viewer")
    otto = server.token("otto", "deployer", "billing-*")
    with server.client(dora) as c:
        assert (await ended(c, deploy(c, "1.0.0").json()["id"]))["status"] == "promoted"
    async with Load(made.url) as load:
        await _steer(made, server, dora, vera, otto)
    assert load.failures == []
    assert await made.routes() == {"1.0.0": 100}


async def _steer(made: RolloutEnv, server: ServerProc, dora: str, vera: str, otto: str) -> None:
    with server.client(dora) as c:
        made.spec(HELD)
        rid = deploy(c, "2.0.0").json()["id"]
        await at_weight(c, rid, 20)
        await eventually(lambda: lag_count(c) > 0, 30, "/metrics to count the held canary's wake-ups", every=0.1)
        busy = deploy(c, "2.0.1")
        assert busy.status_code == 409 and f"rollout {rid} of 2.0.0 is in progress" in busy.json()["detail"]
    for token, status in ((vera, 403), (otto, 403)):
        with server.client(token) as c:
            refused = c.post("/api/v1/services/shop/promote")
        assert refused.status_code == status, refused.text
    with server.client(dora) as c:
        answer = c.post("/api/v1/services/shop/promote").json()
        assert answer["applied"] is True, answer
        assert (await ended(c, rid))["status"] == "promoted"
        assert await made.routes() == {"2.0.0": 100}
        back = c.post("/api/v1/services/shop/rollback")
        assert back.status_code == 200, back.text
        assert await made.routes() == {"1.0.0": 100}
        rid3 = deploy(c, "3.0.0").json()["id"]
        await at_weight(c, rid3, 20)
        assert c.post(f"/api/v1/rollouts/{rid3}/abort").json()["applied"] is True  # named by the rollout
        assert (await ended(c, rid3))["status"] == "aborted"
        over = c.post(f"/api/v1/rollouts/{rid}/promote")
        assert over.status_code == 409 and over.json()["detail"].startswith(f"rollout {rid} is over (promoted)")


async def test_a_restarted_server_adopts_the_rollout_a_killed_one_left_mid_canary(env):
    made, server = env
    made.spec(FAST)
    token = server.token("dora", "deployer")
    with server.client(token) as c:
        assert (await ended(c, deploy(c, "1.0.0").json()["id"]))["status"] == "promoted"
    async with Load(made.url) as load:
        await _crash_and_adopt(made, server, token)
    assert load.failures == []
    assert await made.routes() == {"2.0.0": 100}


async def _crash_and_adopt(made: RolloutEnv, server: ServerProc, token: str) -> None:
    with server.client(token) as c:
        made.spec(HELD)
        rid = deploy(c, "2.0.0").json()["id"]
        await at_weight(c, rid, 20)
    server.stop(kill=True)  # a crash: nothing is released
    [status] = service.status(made.ctx, "shop")
    assert status["rollout"]["controller_alive"] is False
    assert await made.routes() == {"2.0.0": 20, "1.0.0": 80}  # the data plane does not need the server
    server.start()
    with server.client(token) as c:
        await eventually(lambda: c.get(f"/api/v1/rollouts/{rid}").json()["controller_alive"], 30,
                         "the new server to drive the rollout")
        resumed = c.post("/api/v1/services/shop/resume")
        assert resumed.status_code == 409 and "being driven already" in resumed.json()["detail"]
        assert c.post("/api/v1/services/shop/promote").json()["applied"] is True
        assert (await ended(c, rid))["status"] == "promoted"
        kinds = [e["kind"] for e in c.get(f"/api/v1/rollouts/{rid}/events").json()]
    assert "resumed" in kinds


async def test_sigterm_releases_the_rollout_at_once_and_the_next_server_aborts_it(env):
    made, server = env
    made.spec(FAST)
    token = server.token("dora", "deployer")
    with server.client(token) as c:
        assert (await ended(c, deploy(c, "1.0.0").json()["id"]))["status"] == "promoted"
        made.spec(HELD)
        rid = deploy(c, "2.0.0").json()["id"]
        await at_weight(c, rid, 20)
    assert server.stop() in (0, -15)  # uvicorn exits through the signal it handled, after a clean shutdown
    assert "Application shutdown complete" in server.log.read_text()
    [status] = service.status(made.ctx, "shop")
    assert status["rollout"]["id"] == rid and status["rollout"]["controller_alive"] is False
    log = server.log.read_text()
    assert "Traceback" not in log
    assert "HTTP Request:" not in log  # httpx logs URLs, and a notification URL may carry a secret
    server.start()
    with server.client(token) as c:
        assert c.post("/api/v1/services/shop/abort").json()["applied"] is True
        assert (await ended(c, rid))["status"] == "aborted"
    assert await made.routes() == {"1.0.0": 100}


async def test_the_cli_with_releasegate_server_deploys_follows_and_exits_as_standalone(env):
    made, server = env
    spec = made.spec(FAST)
    dora, vera = server.token("dora", "deployer"), server.token("vera", "viewer")

    def cli(*args: str, token: str = dora) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "RELEASEGATE_SERVER": server.url, "RELEASEGATE_TOKEN": token}
        return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True,
                              env=environ, cwd=made.tmp_path, timeout=120)

    def standalone(*args: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_SERVER"}
        return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True,
                              env=environ, cwd=made.tmp_path, timeout=120)
    first = cli("deploy", str(spec), "--version", "1.0.0")
    assert first.returncode == 0, first.stderr
    assert "shop 1.0.0: promoted after" in first.stdout
    [shop] = json.loads(cli("status", "--json").stdout)
    assert shop["current"] == "1.0.0" and shop["state"] == "running"
    [past] = json.loads(cli("history", "shop", "--json").stdout)
    assert past["status"] == "promoted" and past["events"]
    for args, token, code, said in [
        (("promote", "shop"), dora, 2, "releasegate: shop: no rollout in progress"),
        (("deploy", str(spec), "--version", "1.0.1"), vera, 2, "releasegate: vera is viewer of *; this needs role "
                                                                "deployer"),
        (("gc",), dora, 2, "releasegate: gc: not available through the server"),
    ]:
        done = cli(*args, token=token)
        assert done.returncode == code and done.stderr.startswith(said), (args, done.stderr)
    bad = made.tmp_path / "bad.yaml"
    bad.write_text("service: shop\nstrategy: sideways\n")
    checked = cli("validate", str(bad))
    alone = standalone("validate", str(bad))
    assert checked.returncode == alone.returncode == 2
    assert checked.stderr == alone.stderr and f"releasegate: {bad}:2:11: " in checked.stderr
    assert cli("validate", str(spec)).stdout.startswith(f"{spec}: ok: service shop")
    made.spec(HELD)
    async with Load(made.url) as load:
        environ = {**os.environ, "RELEASEGATE_SERVER": server.url, "RELEASEGATE_TOKEN": dora}
        following = subprocess.Popen([sys.executable, "-m", "releasegate", "deploy", str(spec), "--version", "2.0.0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
        try:
            with server.client(dora) as c:
                await eventually(lambda: following.poll() is not None or [
                    r for r in c.get("/api/v1/rollouts").json() if r["version"] == "2.0.0" and r["weight"] == 20],
                    60, "2.0.0 at 20%")
                assert following.poll() is None, following.communicate()
            aborted = cli("abort", "shop")
            assert aborted.returncode == 0 and "abort applied to rollout" in aborted.stdout, aborted.stderr
            stdout, _ = following.communicate(timeout=60)
        finally:
            if following.poll() is None:
                following.kill()
                following.wait()
    assert following.returncode == 3, stdout
    assert "shop 2.0.0: aborted after" in stdout
    assert load.failures == []
    await _sign_through_the_cli(server, cli)  # last: the stored policy then judges every deploy


async def test_a_rollout_whose_deploy_process_died_is_resumed_through_the_api(env):
    made, server = env
    spec = made.spec(FAST)
    token = server.token("dora", "deployer")
    with server.client(token) as c:
        assert (await ended(c, deploy(c, "1.0.0").json()["id"]))["status"] == "promoted"
    spec = made.spec(HELD)
    async with Load(made.url) as load:
        standalone = subprocess.Popen([sys.executable, "-m", "releasegate", "--state-dir", str(made.state), "deploy",
                                       str(spec), "--version", "2.0.0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with server.client(token) as c:
                [rollout] = await eventually(lambda: [r for r in c.get("/api/v1/rollouts").json()
                                                      if r["version"] == "2.0.0" and r["weight"] == 20], 60,
                                             "the standalone deploy at 20%")
                assert rollout["controller_alive"] is True
                busy = c.post(f"/api/v1/rollouts/{rollout['id']}/resume")
                assert busy.status_code == 409, busy.text  # a live `deploy` drives it
        finally:
            standalone.kill()
            standalone.wait()
        with server.client(token) as c:
            resumed = c.post(f"/api/v1/rollouts/{rollout['id']}/resume")
            assert resumed.status_code == 200 and resumed.json()["rollout"] == rollout["id"], resumed.text
            await eventually(lambda: c.get(f"/api/v1/rollouts/{rollout['id']}").json()["controller_alive"], 30,
                             "the server to drive it")
            assert c.post("/api/v1/services/shop/promote").json()["applied"] is True
            assert (await ended(c, rollout["id"]))["status"] == "promoted"
    assert load.failures == []
    assert await made.routes() == {"2.0.0": 100}


async def _sign_through_the_cli(server: ServerProc, cli: Any) -> None:
    from releasegate.governance.approvals import new_release

    policy = (Path(__file__).resolve().parents[1] / "examples" / "governance" / "policy.yaml").read_text()
    with server.client(server.token("root", "admin")) as c:
        assert c.put("/api/v1/policy", json={"text": policy}).status_code == 200
    new_release(server.state, "shop", "9.0.0", "alice")
    signed = cli("approve", "shop@9.0.0", "--stage", "reviewer", token=server.token("bob", "approver"))
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith("shop@9.0.0: bob approved stage reviewer for prod (1 of 2); 0 of ")
    rejected = cli("reject", "shop@9.0.0", "--stage", "qa", "--reason", "flaky", token=server.token("dave", "approver"))
    assert rejected.returncode == 0 and "rejected by dave at stage qa" in rejected.stdout, rejected.stderr


async def test_break_glass_through_the_server_is_owned_by_the_tokens_user(env):
    from releasegate.governance.approvals import new_release

    made, server = env
    spec = made.spec(FAST)
    policy = (Path(__file__).resolve().parents[1] / "examples" / "governance" / "policy.yaml").read_text()
    with server.client(server.token("root", "admin")) as c:
        assert c.put("/api/v1/policy", json={"text": policy}).status_code == 200
    new_release(server.state, "shop", "1.0.0", "alice")
    dora, erin = server.token("dora", "deployer"), server.token("erin", "approver")

    def cli(*args: str, token: str = dora) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "RELEASEGATE_SERVER": server.url, "RELEASEGATE_TOKEN": token}
        return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True,
                              env=environ, cwd=made.tmp_path, timeout=120)
    deploy_args = ("deploy", str(spec), "--version", "1.0.0")
    for extra, said in [((), "policy (prod): "),
                        (("--break-glass",), "--break-glass needs --reason TEXT"),
                        (("--break-glass", "--reason", "outage"), "--break-glass needs an approval of stage sre"),
                        (("--allow-breaking-migration",), "--allow-breaking-migration: shop@1.0.0 was not "
                                                          "registered as carrying a breaking migration")]:
        refused = cli(*deploy_args, *extra)
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.startswith("releasegate: shop@1.0.0 refused for prod:") and said in refused.stderr, (
            extra, refused.stderr)
    signed = cli("approve", "shop@1.0.0", "--stage", "sre", "--check", "deployment window checked", "--check",
                 "rollback plan verified", token=erin)
    assert signed.returncode == 0, signed.stderr
    done = cli(*deploy_args, "--break-glass", "--reason", "outage")
    assert done.returncode == 0 and "shop 1.0.0: promoted after" in done.stdout, done.stdout + done.stderr
    with server.client(server.token("ada", "admin")) as c:
        entries = [json.loads(line) for line in c.get("/api/v1/audit/export").text.splitlines()]
    [emergency] = [e for e in entries if e["action"] == "deploy.emergency"]
    assert emergency["actor"] == "dora" and emergency["decision"].startswith("break-glass: outage; bypassed: ")
