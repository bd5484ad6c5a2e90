"""Smoke commands, placeholders in expectations and one-shot health probes, against real demo processes.

The commands are real shell commands (a Python script standing in for ``pytest tests/smoke --base-url {url}``) and
the instances real ``releasegate.demoapp`` processes on loopback ports.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from releasegate.engine.clock import FakeClock
from releasegate.providers.base import Instance
from releasegate.providers.checks import check_health_once, probe_health, run_smoke, wait_healthy
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.spec.models import Health, SmokeTest
from releasegate.spec.models import LocalPlatform as LocalSpec
from tests.support.wait import eventually

PY = sys.executable
DEMO = Path(__file__).resolve().parents[1] / "releasegate" / "demoapp.py"

SMOKE_SCRIPT = '''\
import json, os, sys, urllib.request
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with urllib.request.urlopen(args["--base-url"] + "/health", timeout=5) as r:
    body = json.load(r)
print("cwd", os.getcwd())
print("env", os.environ["RELEASEGATE_URL"], os.environ["RELEASEGATE_VERSION"], os.environ["RELEASEGATE_SERVICE"],
      os.environ.get("EXTRA", "-"))
print("health", body)
sys.exit(0 if body.get("version") == args["--version"] else 1)
'''


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[LocalPlatform]:
    spec = LocalSpec(command=f"{PY} {DEMO} --port {{port}}", env={"FAULTS": "9.0.0:health=fail"})
    platform = LocalPlatform(spec, tmp_path / "state", tmp_path)
    yield platform
    for inst in await platform.instances("demo"):
        await platform.stop(inst, grace=1)


def cmd(command: str, **kw: object) -> SmokeTest:
    return SmokeTest.model_validate({"command": command, **kw})


# --- placeholders -------------------------------------------------------------------------------------------


async def test_health_expect_checks_the_instance_s_own_version(demo: LocalPlatform) -> None:
    """PrivateTrade: /health must answer {"status": "healthy", "version": "2.0.0"} for 2.0.0."""
    [inst] = await demo.start("demo", "2.0.0", 1)
    check = Health.model_validate({"attempts": 2, "interval": "1s",
                                   "expect": {"status": "healthy", "version": "{version}"}})
    assert (await wait_healthy([inst], check, FakeClock())).ok
    assert (await check_health_once(inst, check)).ok
    claimed = Instance("demo", "2.0.1", inst.id, inst.host, inst.port)  # 2.0.0 answering where 2.0.1 should
    result = await check_health_once(claimed, check)
    assert not result.ok and 'version is "2.0.0", expected "2.0.1"' in result.reason


async def test_smoke_requests_substitute_version_service_and_port(demo: LocalPlatform) -> None:
    [inst] = await demo.start("demo", "2.0.0", 1)
    test = SmokeTest.model_validate({"path": "/", "expect_json": {"service": "{service}", "version": "{version}"},
                                     "headers": {"X-Port": "{port}"}})
    result = await run_smoke([inst], [test], 5)
    assert result.ok, result.reason
    wrong = Instance("demo", "2.0.1", inst.id, inst.host, inst.port)
    result = await run_smoke([wrong], [test], 5)
    assert not result.ok and 'version is "2.0.0", expected "2.0.1"' in result.reason


# --- smoke commands -----------------------------------------------------------------------------------------


async def test_a_smoke_command_runs_against_one_new_instance_in_the_spec_directory(
        demo: LocalPlatform, tmp_path: Path) -> None:
    (tmp_path / "smoke.py").write_text(SMOKE_SCRIPT)
    first, second = await demo.start("demo", "2.0.0", 2)
    test = cmd(f"{PY} smoke.py --base-url {{url}} --version {{version}}", env={"EXTRA": "on {service}"})
    result = await run_smoke([first, second], [SmokeTest(path="/health"), test], 5, spec_dir=tmp_path)
    assert result.ok, result.reason
    assert result.reason == "smoke: 1 test passed on 2 instances, 1 command passed"
    rows = result.details["results"]
    assert [r["instance"] for r in rows] == [first.address, second.address, first.address]  # the command: once
    row = rows[-1]
    assert row["exit_code"] == 0 and row["command"].startswith(f"{PY} smoke.py --base-url http://{first.address}")
    assert f"cwd {tmp_path}" in row["output"]
    assert f"env http://{first.address} 2.0.0 demo on demo" in row["output"]


async def test_a_failing_command_fails_smoke_with_the_end_of_its_output(demo: LocalPlatform, tmp_path: Path) -> None:
    [inst] = await demo.start("demo", "2.0.0", 1)
    script = "import sys\nfor i in range(1, 501): print(f'line {i}')\nsys.stdout.flush()\n" \
             "print('FAILED test_orders', file=sys.stderr)\nsys.exit(3)\n"  # stderr is kept too
    (tmp_path / "noisy.py").write_text(script)
    result = await run_smoke([inst], [cmd(f"{PY} noisy.py")], 5, spec_dir=tmp_path)
    assert not result.ok
    assert result.reason.startswith(f"smoke command `{PY} noisy.py` exited 3 after ")
    assert result.reason.endswith("output ends: line 499 | line 500 | FAILED test_orders")
    output = result.details["results"][0]["output"]
    lines = output.splitlines()
    assert len(lines) == 20 and lines[-1] == "FAILED test_orders" and "line 1\n" not in output


async def test_a_command_past_its_timeout_is_killed_with_its_whole_process_group(
        demo: LocalPlatform, tmp_path: Path) -> None:
    [inst] = await demo.start("demo", "2.0.0", 1)
    ticks = 0

    async def ticker() -> None:  # the controller's loop must keep running while a smoke suite does
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    test = cmd("sleep 300 & echo $! > child.pid; echo started the suite; wait", timeout="500ms")
    result = await run_smoke([inst], [test], 5, spec_dir=tmp_path)
    beat.cancel()
    assert not result.ok and "was killed" in result.reason and "started the suite" in result.reason
    assert ticks > 1
    child = int((tmp_path / "child.pid").read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await eventually(gone, what="the command's background child to be killed")


async def test_commands_are_skipped_after_a_failed_request_and_requests_all_run(
        demo: LocalPlatform, tmp_path: Path) -> None:
    [inst] = await demo.start("demo", "2.0.0", 1)
    marker = tmp_path / "ran"
    tests = [SmokeTest(path="/nope"), cmd(f"touch {marker}"), SmokeTest(path="/")]
    result = await run_smoke([inst], tests, 5, spec_dir=tmp_path)
    assert not result.ok and result.reason.startswith(f"smoke GET /nope on {inst.address}: status 404")
    rows = result.details["results"]
    assert rows[1]["reason"] == "skipped: an earlier smoke test failed" and rows[2]["ok"]
    assert not marker.exists()


async def test_cwd_is_relative_to_the_spec_and_a_missing_one_fails_with_a_reason(
        demo: LocalPlatform, tmp_path: Path) -> None:
    [inst] = await demo.start("demo", "2.0.0", 1)
    (tmp_path / "tests" / "smoke").mkdir(parents=True)
    assert (await run_smoke([inst], [cmd("test -d ../smoke", cwd="tests/smoke")], 5, spec_dir=tmp_path)).ok
    result = await run_smoke([inst], [cmd("true", cwd="nowhere")], 5, spec_dir=tmp_path)
    assert not result.ok and "could not start the command in" in result.reason and "nowhere" in result.reason


# --- health during the rollout: one probe per instance ------------------------------------------------------


async def test_probe_health_asks_every_instance_once_and_says_why_one_fails(demo: LocalPlatform) -> None:
    [good] = await demo.start("demo", "2.0.0", 1)
    [sick] = await demo.start("demo", "9.0.0", 1)
    check = Health.model_validate({"expect": {"version": "{version}"}})
    found = await probe_health([good, sick], check)
    assert found[good.address] is None
    why = found[sick.address]
    assert why is not None and f"{sick.address} /health answered 503" in why
    assert await probe_health([], check) == {}
