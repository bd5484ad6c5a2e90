"""``releasegate demo`` tells the same story every run, keeps its state to look at, and says when its port is
taken; the demo app's faults are counted, so a run can be repeated exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from releasegate.providers.platforms.local import LocalPlatform
from releasegate.spec.models import LocalPlatform as LocalSpec
from tests.support.rollouts import free_port

pytestmark = pytest.mark.slow

RUNS = 2


def rg(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_HOME"}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def test_the_demo_tells_the_same_story_every_run_and_keeps_its_state(tmp_path):
    port = free_port()
    for run in range(1, RUNS + 1):  # the same directory each time: a demo replaces the previous one's state
        r = rg("demo", "--fast", "--port", str(port), cwd=tmp_path)
        assert r.returncode == 0, f"run {run}:\n{r.stdout}\n{r.stderr}"
        assert "demo finished as designed" in r.stdout
        state = tmp_path / ".releasegate-demo"
        assert "--state-dir .releasegate-demo status demo" in r.stdout  # the follow-up commands, ready to paste

        history = json.loads(rg("--state-dir", str(state), "history", "demo", "--json", cwd=tmp_path).stdout)
        assert [(h["version"], h["status"]) for h in history] == [
            ("3.0.0", "rolled_back"), ("2.0.0", "promoted"), ("1.0.0", "promoted")]
        kinds = [e["kind"] for e in history[0]["events"]]
        assert "smoke_passed" in kinds and "step" in kinds  # 3.0.0 passed health and smoke, then got users
        rollback = next(e for e in history[0]["events"] if e["kind"] == "rollback")
        assert "error_rate" in rollback["message"] and rollback["data"]["values"]["0:error_rate"] > 0.05
        assert not any(e["kind"] == "rollback" for e in history[1]["events"])  # 2.0.0: no false alarm

        [status] = json.loads(rg("--state-dir", str(state), "status", "--json", cwd=tmp_path).stdout)
        assert (status["state"], status["last_version"], status["instances"]) == ("down", "2.0.0", {})
        assert rg("--state-dir", str(state), "audit", "verify", cwd=tmp_path).returncode == 0


def test_the_demo_says_in_one_line_when_its_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = rg("demo", "--fast", "--port", str(port), cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"releasegate: demo: port {port} on 127.0.0.1 is in use; run it on a free "
                                     "port with `releasegate demo --port PORT`"]
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / ".releasegate-demo").exists()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo")
    r = rg("demo", "--state-dir", "mine", "--port", str(free_port()), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "mine is not empty and not a demo's state" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a demo"


# --- the demo app -------------------------------------------------------------------------------------------


async def test_demo_app_faults_are_counted_and_can_target_one_path(tmp_path):
    spec = LocalSpec(command=f"{sys.executable} -m releasegate.demoapp --port {{port}}",
                     env={"FAULTS": "3.0.0:error_rate=1,paths=/api/orders;4.0.0:error_rate=0.25"})
    platform = LocalPlatform(spec, tmp_path / "state", tmp_path)
    try:
        [broken] = await platform.start("demo", "3.0.0", 1)
        [flaky] = await platform.start("demo", "4.0.0", 1)
        async with httpx.AsyncClient(base_url=f"http://{broken.address}", trust_env=False) as client:
            for _ in range(5):  # what health checks and smoke tests see: all fine
                assert (await client.get("/health")).status_code == 200
                assert (await client.get("/api/items")).status_code == 200
            assert [(await client.post("/api/orders")).status_code for _ in range(4)] == [500] * 4  # every order
        async with httpx.AsyncClient(base_url=f"http://{flaky.address}", trust_env=False) as client:
            statuses = [(await client.get("/api/items")).status_code for _ in range(8)]
            assert statuses == [200, 200, 200, 500, 200, 200, 200, 500]  # exactly a quarter, evenly spread
            order = await client.post("/api/orders")
            assert order.status_code == 201 and order.json() == {"version": "4.0.0", "order": 1}
    finally:
        for inst in await platform.instances("demo"):
            await platform.stop(inst, 2.0)


async def test_demo_app_refuses_a_path_it_does_not_serve(tmp_path):
    from releasegate.errors import ProviderError

    spec = LocalSpec(command=f"{sys.executable} -m releasegate.demoapp --port {{port}}",
                     env={"FAULTS": "3.0.0:error_rate=1,paths=/api/checkout"})
    platform = LocalPlatform(spec, tmp_path / "state", tmp_path, startup_grace=30)
    with pytest.raises(ProviderError, match=r"paths: /api/checkout is not one of the app's paths"):
        await platform.start("demo", "3.0.0", 1)
