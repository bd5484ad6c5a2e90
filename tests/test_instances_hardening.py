"""Issue 9, section 4: instances that die before traffic, processes left behind, and the router's port after a stop.

Real processes throughout (the demo app, the router, the CLI in a subprocess), except the engine tests at the top,
which pin the decisions themselves in simulated time. docs/security.md, section 4, says what these hold us to.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from releasegate import service
from releasegate.engine import decide, rolling
from releasegate.engine.state import Health, Outcome, Route, Smoke, Start, Stop
from releasegate.errors import UserError
from releasegate.providers.platforms import make_platform
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.providers.platforms.local_processes import MARKER, read_record, write_record
from releasegate.providers.routers.builtin import read_router_state, stop_router
from releasegate.spec import load_spec
from releasegate.spec.models import LocalPlatform as LocalSpec
from releasegate.store.audit import AuditLog
from tests.support.rollouts import PY, RolloutEnv, cleanup, marked_processes
from tests.support.simulated import make_spec
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[1]
CRASHING_APP = ROOT / "tests" / "support" / "crashing_app.py"
KILLED_AFTER_SPAWN = ROOT / "tests" / "support" / "killed_after_spawn.py"
BLUEGREEN = "{bluegreen: {}}"


# --- the decisions, in simulated time ---------------------------------------------------------------------------


def died(address: str = "127.0.0.1:5001", code: int = 3) -> Outcome:
    """What the controller reports when an instance of the checked version is found dead."""
    entry = {"instance": "0003", "address": address, "exit_code": code, "log_tail": "boom",
             "message": f"instance shop 2.0.0 0003 ({address}) exited with code {code}: boom"}
    return Outcome(False, f"{entry['message']} (1 of 2 instance(s) of 2.0.0 run)", {"died": [entry]})


def test_a_death_before_traffic_restarts_once_then_checks_everything_again():
    spec = make_spec(strategy={"bluegreen": {}})
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(update={"phase": "smoke"})
    assert decide.next_action(st, spec, 0.0) == Smoke("2.0.0", 2)  # smoke asks for every instance
    st, said = decide.apply(st, spec, Smoke("2.0.0", 2), died(), 1.0)
    assert st.phase == "start" and st.restarts == 1 and st.status == "running"
    assert [d.kind for d in said] == ["restart"]
    assert "exited with code 3: boom" in said[0].message and "before any traffic" in said[0].message
    assert said[0].data["died"][0]["exit_code"] == 3  # type: ignore[index]
    assert decide.next_action(st, spec, 1.0) == Start("2.0.0", 2)
    st, _ = decide.apply(st, spec, Start("2.0.0", 2), Outcome(True), 2.0)
    assert decide.next_action(st, spec, 2.0) == Health("2.0.0", 2)  # health and smoke again, on all of them


def test_a_second_death_before_traffic_aborts_with_the_reason():
    spec = make_spec(strategy={"bluegreen": {}})
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(update={"phase": "health", "restarts": 1})
    st, said = decide.apply(st, spec, Health("2.0.0", 2), died(), 1.0)
    assert st.phase == "abort" and st.outcome == "aborted" and said[0].kind == "abort"
    assert "exited with code 3: boom" in (st.reason or "") and "died again after the restart" in (st.reason or "")
    assert decide.next_action(st, spec, 1.0) == Stop("2.0.0", 0)  # no traffic to take back: stop it


def test_a_death_found_before_the_first_route_restarts_and_after_traffic_rolls_back():
    spec = make_spec(strategy={"canary": {"steps": [{"weight": 20, "pause": "1m"}, {"weight": 50, "pause": "1m"}]}})
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(update={"phase": "step"})
    first = decide.next_action(st, spec, 0.0)
    assert isinstance(first, Route) and first.weight_of("2.0.0") == 20
    restarted, said = decide.apply(st, spec, first, died(), 1.0)
    assert restarted.phase == "start" and said[0].kind == "restart"
    at_20 = st.model_copy(update={"step": 1, "weight": 20})  # step 2 not routed yet: 20 % -> 50 %
    rolled, said = decide.apply(at_20, spec, decide.next_action(at_20, spec, 0.0), died(), 1.0)
    assert rolled.phase == "rollback" and rolled.staircase == [0] and said[0].kind == "rollback"
    assert "died" in (rolled.reason or "")


def test_rolling_restarts_its_first_batch_once_and_later_batches_roll_back():
    spec = make_spec(platform={"command": "app {port}", "instances": 2}, strategy={"rolling": {}})
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0)
    st = rolling.begin(st, spec, 0.0)
    assert st.rolling is not None
    st = st.model_copy(update={"rolling": st.rolling.model_copy(update={"stage": "health"})})
    assert decide.next_action(st, spec, 0.0) == Health("2.0.0", 1)
    again, said = decide.apply(st, spec, Health("2.0.0", 1), died(), 1.0)
    assert again.rolling is not None and again.rolling.stage == "start" and said[0].kind == "restart"
    ended, said = decide.apply(again.model_copy(update={"rolling": st.rolling}), spec, Health("2.0.0", 1), died(), 2.0)
    assert ended.phase == "stop_new" and ended.outcome == "aborted" and said[0].kind == "abort"


# --- a real app that dies before traffic ------------------------------------------------------------------------


class Env(RolloutEnv):
    """Specs for the crashing app: ``crash(version, n)`` dooms the next n instances of that version to exit with
    code 3 right after answering their first health check (tests/support/crashing_app.py)."""

    def spec(self, strategy: str = BLUEGREEN, **kw: Any) -> Path:
        path = super().spec(strategy, rules="[]", **kw)
        text = path.read_text().replace("-m releasegate.demoapp --port", f"{CRASHING_APP} --port")
        path.write_text(text.replace('env: {FAULTS: ""}', f'env: {{CRASH_DIR: "{self.tmp_path / "crash"}"}}'))
        return path

    def crash(self, version: str, n: int) -> None:
        directory = self.tmp_path / "crash" / version
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (directory / f"token-{i}").touch()

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "releasegate", "--state-dir", str(self.state), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, **kw)

    def status(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = service.status(self.ctx, "shop")
        return found[0]


@pytest.fixture
def env(tmp_path: Path):
    made = Env(tmp_path)
    yield made
    made.close()
    leftovers = [p.pid for p in marked_processes(made.state)]
    for pid in leftovers:  # a failed test must not leave processes behind either
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    assert not leftovers, f"processes left running: {leftovers}"


async def deploy(env: Env, spec: Path, version: str):
    return await asyncio.wait_for(service.deploy(env.ctx, spec, version), 90)


def events(env: Env, kind: str) -> list[dict[str, Any]]:
    return [e for e in service.history(env.ctx, "shop")[0]["events"] if e["kind"] == kind]


async def backends(env: Env, version: str) -> list[str]:
    routes = await env.router().get_routes("shop")
    return next((list(v.backends) for v in routes.versions if v.version == version), [])


@pytest.mark.slow
async def test_an_instance_that_dies_before_traffic_is_restarted_once_and_the_version_runs_at_full_strength(env):
    spec = env.spec()
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    env.crash("2.0.0", 1)  # one of the two new instances passes its health check, then exits with code 3
    st = await deploy(env, spec, "2.0.0")
    assert st.status == "promoted", st.reason
    assert env.status()["instances"] == {"1.0.0": 2, "2.0.0": 2}  # not promoted at half capacity
    live = [i for i in make_platform(load_spec(spec).platform, env.state, spec.parent).running("shop")
            if i.version == "2.0.0"]
    assert sorted(await backends(env, "2.0.0")) == sorted(i.address for i in live)
    [restart] = events(env, "restart")
    [dead] = restart["data"]["died"]
    assert dead["exit_code"] == 3 and "crashing after its first health check" in dead["log_tail"]
    assert Path(dead["log"]).is_file() and dead["address"] not in await backends(env, "2.0.0")
    assert "restart 1 of 1" in restart["message"]
    kinds = [e["kind"] for e in service.history(env.ctx, "shop")[0]["events"]]
    assert kinds.index("restart") < kinds.index("switched")  # restarted before any traffic moved
    [audited] = [e for e in AuditLog(env.state).entries() if e.action == "rollout.restart"]
    assert audited.evidence["died"][0]["exit_code"] == 3


@pytest.mark.slow
async def test_an_instance_that_dies_again_after_its_restart_aborts_and_deploy_exits_non_zero(env):
    spec = env.spec()
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    env.crash("2.0.0", 3)  # both new instances die, and so does one of their replacements
    done = env.cli("deploy", str(spec), "--version", "2.0.0")
    assert done.returncode == 3, done.stdout + done.stderr
    history = service.history(env.ctx, "shop")[0]
    assert history["status"] == "aborted"
    assert "died again after the restart" in history["reason"] and "exited with code 3" in history["reason"]
    assert "no user traffic reached it" in history["reason"]
    assert len(events(env, "restart")) == 1
    assert env.status()["instances"] == {"1.0.0": 2} and env.status()["current"] == "1.0.0"
    assert await env.routes() == {"1.0.0": 100}


@pytest.mark.slow
async def test_rolling_restarts_a_first_batch_instance_that_died_before_its_traffic(env):
    spec = env.spec("{rolling: {max_surge: 1, max_unavailable: 0}}")
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    env.crash("2.0.0", 1)  # the first batch's only instance dies after its health check
    st = await deploy(env, spec, "2.0.0")
    assert st.status == "promoted", st.reason
    assert env.status()["instances"] == {"2.0.0": 2}
    [restart] = events(env, "restart")
    assert restart["data"]["died"][0]["exit_code"] == 3
    assert len(await backends(env, "2.0.0")) == 2


# --- processes left behind by a controller killed between spawn and record ---------------------------------------


def kill_after_spawn(env: Env, spec: Path, version: str) -> psutil.Process:
    """`deploy` SIGKILLed right after it spawned its first instance, before recording it: that instance."""
    done = subprocess.run([PY, str(KILLED_AFTER_SPAWN), "--state-dir", str(env.state), "deploy", str(spec),
                           "--version", version], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    [leader] = [p for p in marked_processes(env.state) if p.pid == os.getpgid(p.pid)
                and p.environ()["RELEASEGATE_VERSION"] == version]
    record = read_record(Path(leader.environ()[MARKER]))
    assert record is not None and record.state == "starting" and record.pid == 0  # only the intent was written
    assert record.port == int(leader.environ()["PORT"]) and Path(record.log).is_file()
    return leader


@pytest.mark.slow
async def test_a_process_spawned_but_not_recorded_is_seen_by_status_and_stopped_by_down(env):
    spec = env.spec()
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    orphan = kill_after_spawn(env, spec, "2.0.0")
    shown = env.cli("status", "shop", "--json")
    assert json.loads(shown.stdout)[0]["instances"] == {"1.0.0": 2, "2.0.0": 1}, shown.stderr
    record = read_record(Path(orphan.environ()[MARKER]))
    assert record is not None and record.state == "running" and record.pid == orphan.pid  # adopted
    assert "ended before recording it" in Path(record.log).read_text()
    down = env.cli("down", "shop", "--force")
    assert down.returncode == 0, down.stdout + down.stderr
    await eventually(lambda: not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE,
                     what="the orphan to be stopped")
    assert marked_processes(env.state) == []
    assert env.status()["state"] == "down"


@pytest.mark.slow
async def test_resume_adopts_the_process_it_spawned_instead_of_starting_another(env):
    spec = env.spec()
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    orphan = kill_after_spawn(env, spec, "2.0.0")
    st = await asyncio.wait_for(service.resume(env.ctx, "shop"), 90)
    assert st.status == "promoted", st.reason
    live = [i for i in make_platform(load_spec(spec).platform, env.state, spec.parent).running("shop")
            if i.version == "2.0.0"]
    assert len(live) == 2 and orphan.pid in {i.pid for i in live}
    assert len({p.pid for p in marked_processes(env.state) if p.pid == os.getpgid(p.pid)}) == 4  # 2 + 2, no more
    [said] = events(env, "reconciled")
    assert f"pid {orphan.pid}" in said["message"] and "ended before recording it" in said["message"]


async def test_reconcile_adopts_a_marked_process_without_a_record_and_stops_a_duplicate(tmp_path: Path):
    state = tmp_path / "state"
    spec = LocalSpec(command=f"{PY} -m releasegate.demoapp --port {{port}}", stop_grace="1s")
    first = LocalPlatform(spec, state, ROOT)
    [inst] = await first.start("shop", "1.0.0", 1)
    record_path = first.service_dir("shop") / "1.0.0-0001.json"
    marker = str(record_path.resolve())
    try:
        record_path.unlink()  # the record is lost; the process still says whose it is
        duplicate = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True,
                                     env={**os.environ, MARKER: marker, "PORT": str(inst.port)})
        assert LocalPlatform(spec, state, ROOT).running("shop") == []  # the records alone do not know it
        again = LocalPlatform(spec, state, ROOT)
        said = await again.reconcile("shop")
        [adopted] = again.running("shop")
        assert (adopted.id, adopted.pid, adopted.port) == ("0001", inst.pid, inst.port)  # the oldest one
        assert duplicate.wait(timeout=10) is not None and not psutil.pid_exists(duplicate.pid)  # stopped (reaped)
        assert said == [f"instance shop 1.0.0 0001: adopted: 1.0.0 0001 on {inst.address} (pid {inst.pid}) ran "
                        "without a record",
                        f"instance shop 1.0.0 0001: stopped process group {duplicate.pid} (pid {duplicate.pid}) "
                        f"marked as 1.0.0-0001: a duplicate of the recorded instance (pid {inst.pid})"]
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"http://{inst.address}/health")).status_code == 200
        assert await again.reconcile("shop") == []  # idempotent
    finally:
        for p in marked_processes(state):
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)


async def test_an_intent_is_left_to_a_live_spawner_and_dropped_once_it_is_gone(tmp_path: Path):
    state = tmp_path / "state"
    spec = LocalSpec(command="sleep 60 # {port}")
    platform = LocalPlatform(spec, state, tmp_path)
    platform.service_dir("shop").mkdir(parents=True)
    path = platform.service_dir("shop") / "1.0.0-0001.json"
    intent = platform._intent("shop", "1.0.0", "0001", tmp_path, 1234, path)
    write_record(path, intent)  # by this (live) process: it is about to record what it spawns
    assert await LocalPlatform(spec, state, tmp_path).reconcile("shop") == [] and path.exists()
    sleeper = subprocess.Popen(["sleep", "0"])
    sleeper.wait()
    write_record(path, dataclasses.replace(intent, owner=sleeper.pid))  # its spawner is gone
    assert LocalPlatform(spec, state, tmp_path).running("shop") == [] and not path.exists()  # nothing ran


async def test_stopping_an_instance_that_exited_stops_what_it_left_running_in_its_group(tmp_path: Path):
    # A background sleep in the instance's process group (the shell then becomes the app): it outlives the app.
    spec = LocalSpec(command=f"sleep 60 & exec {PY} -m releasegate.demoapp --port {{port}}")
    platform = LocalPlatform(spec, tmp_path / "state", ROOT)
    [inst] = await platform.start("shop", "1.0.0", 1)
    assert inst.pid is not None
    [left] = psutil.Process(inst.pid).children()
    assert os.getpgid(left.pid) == inst.pid
    os.kill(inst.pid, signal.SIGKILL)  # the app dies; its leftover keeps running in the group
    [dead] = await eventually(lambda: platform.dead_instances("shop"), what="the death noticed")
    assert left.is_running()
    await platform.stop(dead.instance, 0.5)
    await eventually(lambda: not left.is_running() or left.status() == psutil.STATUS_ZOMBIE, what="leftover gone")


# --- the router's port right after the router stopped -----------------------------------------------------------


CLOSED_FIRST = {psutil.CONN_FIN_WAIT1, psutil.CONN_FIN_WAIT2, psutil.CONN_CLOSING, psutil.CONN_TIME_WAIT}
"""The states of a connection on the side that closed it first: they outlive the router that closed it."""


def server_side(port: int) -> list[str]:
    """States of the TCP connections accepted on ``port`` (not its listening socket): what a router left there."""
    return [c.status for c in psutil.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == port and c.raddr and c.status != psutil.CONN_LISTEN]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["router stop", "router crash"])
async def test_deploy_right_after_the_router_stopped_with_keep_alive_connections_is_accepted(env, how):
    spec = env.spec()
    assert (await deploy(env, spec, "1.0.0")).status == "promoted"
    router = read_router_state(env.state, "shop")
    assert router is not None
    clients = [httpx.AsyncClient(trust_env=False, timeout=5) for _ in range(4)]
    try:
        for client in clients:  # keep-alive: each client keeps its connection open in its pool
            for _ in range(3):
                assert (await client.get(env.url)).status_code == 200
        if how == "router stop":
            assert stop_router(env.state, "shop", 10.0)
        else:
            os.kill(int(router["pid"]), signal.SIGKILL)
            await eventually(lambda: not psutil.pid_exists(int(router["pid"])) or
                             psutil.Process(int(router["pid"])).status() == psutil.STATUS_ZOMBIE, what="router gone")
        # Gone means its sockets are closed too (a killed process can look dead a moment before its last thread
        # closed them): its side of every connection waits in FIN-WAIT for the clients, which close theirs next.
        await eventually(lambda: set(server_side(env.port)) <= CLOSED_FIRST and server_side(env.port),
                         what="the router's side of its connections closed")
        for client in clients:
            await client.aclose()  # the clients notice and close their side too
        assert server_side(env.port) and set(server_side(env.port)) <= CLOSED_FIRST
        with pytest.raises(OSError), socket.socket() as plain:  # what made the port look taken for a minute
            plain.bind(("127.0.0.1", env.port))
        st = await deploy(env, spec, "2.0.0")  # at once: nothing polled, nothing waited for
    finally:
        for client in clients:
            await client.aclose()
    assert st.status == "promoted", st.reason
    new = read_router_state(env.state, "shop")
    assert new is not None and new["pid"] != router["pid"] and new["listen"] == f"127.0.0.1:{env.port}"
    assert await env.routes() == {"2.0.0": 100}


async def test_a_port_held_by_a_real_listener_is_still_refused(tmp_path: Path):
    env = Env(tmp_path)
    spec = env.spec()
    # A real program on the router's port, bound with SO_REUSEADDR itself (http.server does): still taken.
    holder = subprocess.Popen([PY, "-m", "http.server", str(env.port), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await eventually(lambda: any(c.laddr and c.laddr.port == env.port and c.status == psutil.CONN_LISTEN
                                     for c in psutil.net_connections(kind="tcp")), what="the listener")
        with pytest.raises(UserError, match="taken by another program"):
            await deploy(env, spec, "1.0.0")
        assert marked_processes(env.state) == [] and read_router_state(env.state, "shop") is None
    finally:
        holder.terminate()
        holder.wait(timeout=10)
        await cleanup(env.state, spec)
