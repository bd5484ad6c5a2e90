"""Health polling and smoke tests against real HTTP servers, with a FakeClock so 60 attempts cost nothing."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from releasegate.engine.clock import FakeClock
from releasegate.errors import ProviderError
from releasegate.providers.base import Instance
from releasegate.providers.checks import (
    CheckResult,
    check_health_once,
    json_subset_mismatch,
    run_smoke,
    wait_healthy,
)
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.spec.models import Health, SmokeTest
from releasegate.spec.models import LocalPlatform as LocalSpec

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "support" / "apps.py"
DEMO = ROOT / "releasegate" / "demoapp.py"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the test server died"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the test server did not listen in time"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Instance]]:
    """Two real ``apps.py serve`` processes shared by the module (they hold no state the tests depend on)."""
    procs, instances = [], []
    try:
        for n in range(2):
            port = free_port()
            proc = subprocess.Popen([PY, str(APPS), "serve", "--port", str(port)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_listening(port, proc)
            instances.append(Instance("web", "1.0.0", f"000{n}", "127.0.0.1", port, proc.pid))
        yield instances
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def health(**kw: object) -> Health:
    return Health.model_validate({"interval": "5s", "timeout": "2s", "attempts": 60, **kw})


# --- health -------------------------------------------------------------------------------------------------


async def test_health_once_passes_with_status_and_latency(servers: list[Instance]) -> None:
    result = await check_health_once(servers[0].address, health())
    assert result.ok, result.reason
    assert result.details["status"] == 200 and result.details["latency_ms"] >= 0


async def test_wait_healthy_passes_with_a_nested_expect_subset(servers: list[Instance]) -> None:
    clock = FakeClock()
    result = await wait_healthy(servers, health(expect={"status": "healthy", "checks": {"db": "ok"}}), clock)
    assert result.ok, result.reason
    assert result.reason == "2 instances healthy on /health (attempt 1 of 60)"
    assert set(result.details["instances"]) == {s.address for s in servers}
    assert clock.now() == FakeClock().now()  # no waiting when everything passes at once


async def test_wait_healthy_fails_after_all_attempts_on_a_bad_status(servers: list[Instance]) -> None:
    clock = FakeClock()
    start = clock.now()
    result = await wait_healthy(servers[:1], health(path="/status/503"), clock)
    assert not result.ok
    address = servers[0].address
    assert result.reason.startswith(f"{address} /status/503 answered 503 on all 60 attempts (last: ")
    assert result.details["instances"][address]["attempts"] == 60
    assert clock.now() - start == pytest.approx(59 * 5.0)  # 59 intervals between 60 attempts, in fake time


async def test_expect_mismatch_names_the_key(servers: list[Instance]) -> None:
    check = health(attempts=3, expect={"checks": {"db": "down"}})
    result = await wait_healthy(servers[:1], check, FakeClock())
    assert not result.ok
    assert "not healthy after 3 attempts" in result.reason
    assert 'checks.db is "ok", expected "down"' in result.reason


async def test_expect_on_a_body_that_is_not_json_fails_with_a_reason(servers: list[Instance]) -> None:
    result = await check_health_once(servers[0].address, health(path="/text", expect={"status": "healthy"}))
    assert not result.ok
    assert "body is not JSON: plain text, not json" in result.reason


async def test_expect_status_list_is_exact(servers: list[Instance]) -> None:
    assert (await check_health_once(servers[0].address, health(path="/status/204"))).ok  # empty: any 2xx
    result = await check_health_once(servers[0].address, health(expect_status=[204]))
    assert not result.ok and "answered 200, expected [204]" in result.reason
    assert (await check_health_once(servers[0].address, health(path="/status/404", expect_status=[404]))).ok


async def test_wait_healthy_passes_once_a_flaky_instance_recovers(servers: list[Instance]) -> None:
    seen: list[tuple[str, int, bool]] = []

    async def on_attempt(inst: Instance, attempt: int, result: CheckResult) -> None:
        seen.append((inst.id, attempt, result.ok))

    check = health(path="/flaky/recover/3")
    result = await wait_healthy(servers[:1], check, FakeClock(), on_attempt=on_attempt)
    assert result.ok, result.reason
    assert seen == [("0000", 1, False), ("0000", 2, False), ("0000", 3, False), ("0000", 4, True)]
    assert result.details["instances"][servers[0].address]["attempts"] == 4


async def test_an_unreachable_instance_fails_with_the_connection_error() -> None:
    gone = Instance("web", "1.0.0", "0009", "127.0.0.1", free_port())
    result = await wait_healthy([gone], health(attempts=3), FakeClock())
    assert not result.ok
    assert result.reason.startswith(f"{gone.address} /health not healthy after 3 attempts (last: ")


async def test_no_instances_is_not_a_pass() -> None:
    assert not (await wait_healthy([], health(), FakeClock())).ok
    assert not (await run_smoke([], [SmokeTest()], 1.0)).ok


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[LocalPlatform]:
    spec = LocalSpec(command=f"{PY} {APPS} serve --port {{port}}")
    yield LocalPlatform(spec, tmp_path / "state", tmp_path)
    await _stop_all(tmp_path)


async def _stop_all(tmp_path: Path) -> None:
    reader = LocalPlatform(LocalSpec(command="true {port}"), tmp_path / "state", tmp_path)
    for service in ("web", "demo"):
        found = await reader.instances(service) + [d.instance for d in await reader.dead_instances(service)]
        for inst in found:
            await reader.stop(inst, grace=1)


async def test_a_dead_instance_fails_the_health_check_at_once(platform: LocalPlatform) -> None:
    [inst] = await platform.start("web", "1.0.0", 1)
    assert (await wait_healthy([inst], health(), FakeClock(), platform)).ok
    await check_health_once(inst.address, health(path="/exit/4"))
    attempts: list[int] = []
    result = await wait_healthy([inst], health(path="/status/503"), FakeClock(), platform,
                                on_attempt=lambda i, n, r: attempts.append(n))
    assert not result.ok
    assert len(attempts) < 60
    assert f"{inst.address} died during the health check: instance web 1.0.0 {inst.id}" in result.reason
    assert "exited with code 4: " in result.reason and "exiting with code 4 on request" in result.reason


async def test_a_platform_without_exit_details_still_fails_fast(servers: list[Instance]) -> None:
    class Gone:
        async def alive(self, instance: Instance) -> bool:
            return False

    ghost = Instance("web", "1.0.0", "0007", "127.0.0.1", free_port())
    result = await wait_healthy([ghost], health(), FakeClock(), Gone())  # type: ignore[arg-type]
    assert not result.ok
    assert result.reason.endswith(f"instance web 1.0.0 0007 ({ghost.address}) is not running")


# --- smoke --------------------------------------------------------------------------------------------------


async def test_smoke_passes_and_lists_every_test_on_every_instance(servers: list[Instance]) -> None:
    tests = [SmokeTest(path="/health"), SmokeTest(path="/json", expect_json={"meta": {"ok": True}}),
             SmokeTest(method="POST", path="/echo", headers={"X-Test": "yes"}, body="hello",
                       expect_json={"method": "POST", "body": "hello", "x_test": "yes"}, expect_body="hello")]
    result = await run_smoke(servers, tests, timeout=5)
    assert result.ok, result.reason
    assert result.reason == "smoke: 3 tests passed on 2 instances"
    assert [(r["test"], r["instance"]) for r in result.details["results"]] == [
        (f"{t.method} {t.path}", s.address) for t in tests for s in servers]
    assert all(r["status"] == 200 and r["latency_ms"] is not None for r in result.details["results"])


async def test_smoke_status_failure_names_test_and_instance(servers: list[Instance]) -> None:
    result = await run_smoke(servers, [SmokeTest(path="/health"), SmokeTest(path="/status/500")], timeout=5)
    assert not result.ok
    address = servers[0].address
    assert result.reason.startswith(f"smoke GET /status/500 on {address}: status 500, expected [200]")
    assert result.reason.endswith("(+1 more failing)")
    assert [r["ok"] for r in result.details["results"]] == [True, True, False, False]


async def test_smoke_latency_failure(servers: list[Instance]) -> None:
    slow = SmokeTest.model_validate({"path": "/slow?s=0.3", "max_latency": "50ms"})
    result = await run_smoke(servers[:1], [slow], timeout=5)
    assert not result.ok
    assert result.reason.startswith(f"smoke GET /slow?s=0.3 on {servers[0].address}: took ")
    assert result.reason.endswith("ms, max 50 ms")


async def test_smoke_timeout(servers: list[Instance]) -> None:
    result = await run_smoke(servers[:1], [SmokeTest(path="/slow?s=2")], timeout=0.2)
    assert not result.ok and "no answer within the 0.2 s timeout" in result.reason


async def test_smoke_body_and_json_failures(servers: list[Instance]) -> None:
    result = await run_smoke(servers[:1], [SmokeTest(path="/text", expect_body="welcome")], timeout=5)
    assert result.reason == (f"smoke GET /text on {servers[0].address}: body does not contain 'welcome' "
                             "(got plain text, not json)")
    result = await run_smoke(servers[:1], [SmokeTest(path="/json", expect_json={"meta": {"region": "eu"}})],
                             timeout=5)
    assert result.reason == f'smoke GET /json on {servers[0].address}: meta.region is "local", expected "eu"'
    result = await run_smoke(servers[:1], [SmokeTest(path="/text", expect_json={"a": 1})], timeout=5)
    assert "body is not JSON" in result.reason


async def test_smoke_empty_status_list_accepts_any_2xx(servers: list[Instance]) -> None:
    assert (await run_smoke(servers[:1], [SmokeTest(path="/status/201", expect_status=[])], 5)).ok
    assert not (await run_smoke(servers[:1], [SmokeTest(path="/status/302", expect_status=[])], 5)).ok


def test_json_subset_matching() -> None:
    assert json_subset_mismatch({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3}) is None
    assert json_subset_mismatch({"a": {"b": 1}}, {"a": {}}) == "a.b is missing"
    assert json_subset_mismatch({"ok": True}, {"ok": 1}) == "ok is 1, expected true"
    assert json_subset_mismatch({"l": [1, 2]}, {"l": [1, 2, 3]}) == "l is [1, 2, 3], expected [1, 2]"
    assert json_subset_mismatch({"a": 1}, [1]) == "body is list, expected an object"


# --- the demo app -------------------------------------------------------------------------------------------


async def demo(tmp_path: Path, version: str, faults: str) -> tuple[LocalPlatform, Instance]:
    """A demo instance, started and listening (start() returns once the port is open)."""
    spec = LocalSpec(command=f"{PY} {DEMO} --port {{port}}", env={"FAULTS": faults})
    platform = LocalPlatform(spec, tmp_path / "state", tmp_path)
    [inst] = await platform.start("demo", version, 1)
    return platform, inst


FAULTS = "3.0.0:error_rate=1;4.0.0:health=fail;5.0.0:latency=0.3;6.0.0:error_rate=0.5;*:latency=0"


@pytest.fixture
async def demo_dir(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path
    await _stop_all(tmp_path)


async def test_demo_healthy_version_with_keep_alive(demo_dir: Path) -> None:
    _, inst = await demo(demo_dir, "2.0.0", FAULTS)
    smoke = [SmokeTest(path="/", expect_json={"version": "2.0.0"}),
             SmokeTest(path="/api/items", expect_json={"version": "2.0.0"})]
    assert (await run_smoke([inst], smoke, 5)).ok
    conn = http.client.HTTPConnection(inst.host, inst.port, timeout=5)
    try:
        for path in ("/health", "/api/items", "/nope"):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert not response.will_close  # HTTP/1.1 keep-alive with a correct Content-Length
        assert response.status == 404
    finally:
        conn.close()


async def test_demo_fault_injection(demo_dir: Path) -> None:
    _, broken = await demo(demo_dir, "3.0.0", FAULTS)
    result = await run_smoke([broken], [SmokeTest(path="/api/items")], 5)
    assert result.reason.startswith(f"smoke GET /api/items on {broken.address}: status 500, expected [200]")
    assert (await run_smoke([broken], [SmokeTest(path="/health")], 5)).ok  # health is never an injected 5xx

    platform, sick = await demo(demo_dir, "4.0.0", FAULTS)
    check = health(attempts=3, expect={"status": "healthy"})
    result = await wait_healthy([sick], check, FakeClock(), platform)
    assert result.reason.startswith(f"{sick.address} /health answered 503 on all 3 attempts")

    _, slow = await demo(demo_dir, "5.0.0", FAULTS)
    smoke = SmokeTest.model_validate({"path": "/api/items", "max_latency": "100ms"})
    result = await run_smoke([slow], [smoke], 5)
    assert not result.ok and "took" in result.reason

    _, flaky = await demo(demo_dir, "6.0.0", FAULTS)
    result = await run_smoke([flaky], [SmokeTest(path="/")] * 40, 5)
    statuses = {r["status"] for r in result.details["results"]}
    assert statuses == {200, 500}  # 40 draws at 50 %: all alike has a chance of 2 in 10^12


async def test_demo_rejects_bad_faults(demo_dir: Path) -> None:
    spec = LocalSpec(command=f"{PY} {DEMO} --port {{port}}", env={"FAULTS": "2.0.0:boom=1"})
    platform = LocalPlatform(spec, demo_dir / "state", demo_dir, startup_grace=30)
    with pytest.raises(ProviderError, match=r"exited with code 2 right after start: .*unknown FAULTS knob"):
        await platform.start("demo", "2.0.0", 1)
