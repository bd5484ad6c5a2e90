"""Health polling and smoke tests sent straight to instances, never through the router.

Going around the router is the point: a new instance must prove itself before any user request can reach it,
and a failure must name the instance, not a traffic share. Time between attempts goes through the ``Clock`` so
that 60 attempts 5 s apart cost nothing under a ``FakeClock``; request timeouts and latencies are real,
because the instances are.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from releasegate.engine.clock import Clock
from releasegate.providers.base import Instance, Platform
from releasegate.providers.smoke_commands import placeholders, run_command
from releasegate.spec.models import Health, SmokeTest
from releasegate.spec.placeholders import substitute, substitute_text

_SNIPPET = 120


@dataclass(frozen=True)
class CheckResult:
    """``reason`` is one human line for events and the CLI; ``details`` is for ``status --json``."""

    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class _Describes(Protocol):
    def describe(self) -> str: ...


@runtime_checkable
class ExitReporter(Protocol):
    """A platform that can say why an instance died (LocalPlatform does); others just report it dead."""

    async def exit_info(self, instance: Instance) -> _Describes | None: ...


@runtime_checkable
class EngineHealth(Protocol):
    """A platform whose instances may carry their own health verdict (a container image's HEALTHCHECK): an instance
    is healthy only when the HTTP check and that verdict agree; None means the instance has no such check."""

    async def engine_health(self, instance: Instance) -> tuple[str, str] | None: ...


OnAttempt = Callable[[Instance, int, CheckResult], Awaitable[None] | None]


def _client(timeout: float) -> httpx.AsyncClient:
    # trust_env=False: an HTTP_PROXY in the controller's environment must not swallow loopback checks.
    return httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


def _status_ok(status: int, expected: list[int]) -> bool:
    return status in expected if expected else 200 <= status < 300


def _expected_status(expected: list[int]) -> str:
    return str(expected) if expected else "any 2xx"


def json_subset_mismatch(expected: Any, actual: Any, where: str = "") -> str | None:
    """Why ``actual`` does not contain ``expected`` (dicts match as subsets, recursively), or None if it does.

    Lists and scalars must be equal, and a bool never equals a number, so ``{ok: true}`` is not met by ``1``.
    """
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return f"{where or 'body'} is {type(actual).__name__}, expected an object"
        for key, value in expected.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in actual:
                return f"{path} is missing"
            why = json_subset_mismatch(value, actual[key], path)
            if why:
                return why
        return None
    if expected != actual or isinstance(expected, bool) != isinstance(actual, bool):
        return f"{where or 'body'} is {json.dumps(actual)[:_SNIPPET]}, expected {json.dumps(expected)}"
    return None


def _body_mismatch(response: httpx.Response, expect: dict[str, Any]) -> str | None:
    if not expect:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"body is not JSON: {_snippet(response.text) or '(empty)'}"
    return json_subset_mismatch(expect, body)


def _values(target: Instance | str) -> dict[str, object]:
    """What the placeholders of ``health`` stand for: the instance's, or a bare address's url, host and port."""
    if isinstance(target, Instance):
        return placeholders(target)
    host, _, port = target.rpartition(":")
    return {"url": f"http://{target}", "host": host, "port": int(port) if port.isdigit() else port}


async def _probe(client: httpx.AsyncClient, target: Instance | str, health: Health) -> CheckResult:
    """One health request; the path and ``expect`` placeholders take the instance's values (a bare address has
    no version or service: those stay as written)."""
    address = target.address if isinstance(target, Instance) else target
    values = _values(target)
    path = health.path_for(values)
    expect = substitute(health.expect, values)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(health.timeout):  # httpx's timeout is per phase, this bounds the whole
            response = await client.get(f"http://{address}{path}")
    except (TimeoutError, httpx.TimeoutException):
        return CheckResult(False, f"{address} {path}: no answer within {health.timeout:g} s",
                           {"status": None, "error": "timeout"})
    except httpx.HTTPError as exc:
        error = str(exc) or type(exc).__name__
        return CheckResult(False, f"{address} {path}: {error}", {"status": None, "error": error})
    latency = time.perf_counter() - started
    details: dict[str, Any] = {"status": response.status_code, "latency_ms": round(latency * 1000, 1)}
    if not _status_ok(response.status_code, health.expect_status):
        details["body"] = _snippet(response.text)
        return CheckResult(False, f"{address} {path} answered {response.status_code}, expected "
                           f"{_expected_status(health.expect_status)} ({details['body'] or 'empty body'})",
                           details)
    why = _body_mismatch(response, expect)
    if why:
        return CheckResult(False, f"{address} {path}: {why}", details)
    return CheckResult(True, f"{address} {path} answered {response.status_code}", details)


async def check_health_once(target: Instance | str, health: Health) -> CheckResult:
    """One health request to an instance (or a bare ``host:port``, without placeholders in ``expect``); the
    result's details carry status and latency."""
    async with _client(health.timeout) as client:
        return await _probe(client, target, health)


async def probe_health(instances: list[Instance], health: Health) -> dict[str, str | None]:
    """One health request to each instance at once, as the analysis during a rollout does: address -> None when
    healthy, else why not (with the answer). Every instance gets exactly one attempt, so the engine counts."""
    if not instances:
        return {}
    async with _client(health.timeout) as client:
        results = await asyncio.gather(*(_probe(client, i, health) for i in instances))
    return {i.address: None if r.ok else r.reason for i, r in zip(instances, results, strict=True)}


def engine_probe(platform: EngineHealth) -> Callable[[list[Instance], Health],
                                                    Awaitable[dict[str, str | None]]]:
    """``probe_health`` for a platform whose instances carry their own verdict: an instance that answers HTTP but
    whose image's HEALTHCHECK says ``unhealthy`` counts as a failed probe, with the engine's last line."""
    async def probe(instances: list[Instance], health: Health) -> dict[str, str | None]:
        found = await probe_health(instances, health)
        for inst in instances:
            if found.get(inst.address) is None:
                verdict = await platform.engine_health(inst)
                if verdict is not None and verdict[0] == "unhealthy":
                    found[inst.address] = f"the image's HEALTHCHECK says unhealthy ({verdict[1]})"
        return found

    return probe


async def _why_dead(platform: Platform, instance: Instance) -> str | None:
    if await platform.alive(instance):
        return None
    if isinstance(platform, ExitReporter):
        info = await platform.exit_info(instance)
        if info is not None:
            return info.describe()
    return f"instance {instance.service} {instance.version} {instance.id} ({instance.address}) is not running"


async def _engine_verdict(platform: EngineHealth, inst: Instance,
                          result: CheckResult) -> tuple[CheckResult, bool]:
    """The HTTP check passed: what the image's HEALTHCHECK says too. (result, failed for good): ``starting`` is
    not healthy yet (polling goes on); ``unhealthy`` fails the check at once with the engine's last line."""
    verdict = await platform.engine_health(inst)
    if verdict is None or verdict[0] == "healthy":
        return result, False
    status, line = verdict
    if status == "unhealthy":
        return CheckResult(False, f"{inst.address}: the image's HEALTHCHECK says unhealthy ({line})",
                           {**result.details, "engine_health": status}), True
    return CheckResult(False, f"{inst.address} answers, but the image's HEALTHCHECK is {status} ({line})",
                       {**result.details, "engine_health": status}), False


def _final_reason(instance: Instance, health: Health, attempts: int, history: list[CheckResult]) -> str:
    address, path = instance.address, health.path_for(placeholders(instance))
    statuses = {r.details.get("status") for r in history}
    last = history[-1]
    if len(statuses) == 1 and "body" in last.details:  # the same wrong status every time
        why = last.details["body"] or "empty body"
        return f"{address} {path} answered {statuses.pop()} on all {attempts} attempts (last: {why})"
    return f"{address} {path} not healthy after {attempts} attempts (last: {last.reason})"


async def wait_healthy(instances: list[Instance], health: Health, clock: Clock,
                       platform: Platform | None = None, on_attempt: OnAttempt | None = None) -> CheckResult:
    """Poll every instance until each has passed once, or fail when one runs out of attempts.

    Instances are polled together, every ``health.interval`` on ``clock``. With ``platform``, an instance that
    died fails the check at once with why (exit code, log tail) instead of burning the remaining attempts.
    ``on_attempt(instance, attempt, result)`` may be sync or async; it lets the controller report progress.
    """
    if not instances:
        return CheckResult(False, "no instances to check", {"instances": {}})
    history: dict[str, list[CheckResult]] = {i.address: [] for i in instances}
    passed: set[str] = set()

    def details() -> dict[str, Any]:
        return {"instances": {a: {"attempts": len(h), "ok": a in passed, **(h[-1].details if h else {})}
                              for a, h in history.items()}}

    async with _client(health.timeout) as client:
        for attempt in range(1, health.attempts + 1):
            round_started = clock.now()
            pending = [i for i in instances if i.address not in passed]
            results = await asyncio.gather(*(_probe(client, i, health) for i in pending))
            for inst, result in zip(pending, results, strict=True):
                failed = False
                if result.ok and isinstance(platform, EngineHealth):
                    result, failed = await _engine_verdict(platform, inst, result)
                history[inst.address].append(result)
                if failed:
                    return CheckResult(False, result.reason, details())
                if on_attempt is not None:
                    maybe = on_attempt(inst, attempt, result)
                    if inspect.isawaitable(maybe):
                        await maybe
                if result.ok:
                    passed.add(inst.address)
                elif platform is not None and (why := await _why_dead(platform, inst)):
                    return CheckResult(False, f"{inst.address} died during the health check: {why}",
                                       details())
            if len(passed) == len(instances):
                n, path = len(instances), health.path_for(placeholders(instances[0]))
                return CheckResult(True, f"{n} instance{'s' if n != 1 else ''} healthy on {path} "
                                   f"(attempt {attempt} of {health.attempts})", details())
            if attempt < health.attempts:
                await clock.sleep(max(0.0, round_started + health.interval - clock.now()))
    failing = next(i for i in instances if i.address not in passed)
    reason = _final_reason(failing, health, health.attempts, history[failing.address])
    return CheckResult(False, reason, details())


def _resolved(test: SmokeTest, instance: Instance) -> SmokeTest:
    """The request with ``{version}``, ``{port}``... replaced by the instance's values."""
    values = placeholders(instance)
    return test.model_copy(update={
        "path": substitute_text(test.path, values),
        "headers": {k: substitute_text(v, values) for k, v in test.headers.items()},
        "body": None if test.body is None else substitute_text(test.body, values),
        "expect_body": None if test.expect_body is None else substitute_text(test.expect_body, values),
        "expect_json": substitute(test.expect_json, values)})


async def _smoke_one(client: httpx.AsyncClient, instance: Instance, test: SmokeTest,
                     limit: float) -> dict[str, Any]:
    test = _resolved(test, instance)
    limit = test.timeout if test.timeout is not None else limit
    name = f"smoke {test.method} {test.path} on {instance.address}"
    row: dict[str, Any] = {"test": f"{test.method} {test.path}", "instance": instance.address, "ok": False,
                           "status": None, "latency_ms": None, "reason": ""}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            response = await client.request(test.method, f"http://{instance.address}{test.path}",
                                            headers=test.headers, content=test.body)
    except (TimeoutError, httpx.TimeoutException):
        row["reason"] = f"{name}: no answer within the {limit:g} s timeout"
        return row
    except httpx.HTTPError as exc:
        row["reason"] = f"{name}: {exc or type(exc).__name__}"
        return row
    latency = time.perf_counter() - started
    row.update(status=response.status_code, latency_ms=round(latency * 1000, 1))
    if not _status_ok(response.status_code, test.expect_status):
        body = _snippet(response.text) or "empty body"
        row["reason"] = (f"{name}: status {response.status_code}, expected "
                         f"{_expected_status(test.expect_status)} ({body})")
    elif latency > test.max_latency:
        row["reason"] = f"{name}: took {latency * 1000:.0f} ms, max {test.max_latency * 1000:.0f} ms"
    elif test.expect_body is not None and test.expect_body not in response.text:
        row["reason"] = (f"{name}: body does not contain {test.expect_body!r} "
                         f"(got {_snippet(response.text) or 'empty body'})")
    elif test.expect_json and (why := _body_mismatch(response, test.expect_json)):
        row["reason"] = f"{name}: {why}"
    else:
        row["ok"] = True
    return row


async def _smoke_command(instance: Instance, test: SmokeTest, spec_dir: Path) -> dict[str, Any]:
    r = await run_command(test, instance, spec_dir)
    row: dict[str, Any] = {"test": f"command {test.command}", "instance": instance.address, "ok": r.ok,
                           "command": r.command, "exit_code": r.exit_code, "seconds": round(r.seconds, 1),
                           "output": r.output, "reason": ""}
    if not r.ok:
        how = (f"did not finish within {r.seconds:.0f} s and was killed" if r.timed_out
               else f"exited {r.exit_code} after {r.seconds:.1f} s")
        tail = r.last_lines()
        row["reason"] = f"smoke command `{r.command}` {how}" + (f"; output ends: {tail}" if tail else
                                                                "; it printed nothing")
    return row


async def run_smoke(instances: list[Instance], tests: list[SmokeTest], timeout: float,  # noqa: ASYNC109
                    spec_dir: Path | None = None) -> CheckResult:
    """Send every request test to every instance, one request at a time so latencies are not inflated by each
    other; run every command test once, against the first instance.

    Request tests all run even after a failure, so the details show the whole picture; a command (which may take
    minutes) is skipped once something failed. The reason names the first failing test and instance, and a
    command's output tail. ``timeout`` is the per-request default; commands run in ``spec_dir``.
    """
    if not instances:
        return CheckResult(False, "no instances to smoke-test", {"results": []})
    rows: list[dict[str, Any]] = []
    async with _client(timeout) as client:
        for test in tests:
            if test.is_command:
                if any(not r["ok"] for r in rows):
                    rows.append({"test": f"command {test.command}", "instance": instances[0].address,
                                 "ok": False, "skipped": True, "reason": "skipped: an earlier smoke test failed"})
                else:
                    rows.append(await _smoke_command(instances[0], test, spec_dir or Path.cwd()))
                continue
            for inst in instances:
                rows.append(await _smoke_one(client, inst, test, timeout))
    failed = [r for r in rows if not r["ok"] and not r.get("skipped")]
    if failed:
        more = f" (+{len(failed) - 1} more failing)" if len(failed) > 1 else ""
        return CheckResult(False, failed[0]["reason"] + more, {"results": rows})
    n_cmd = sum(1 for t in tests if t.is_command)
    n_req = len(tests) - n_cmd
    said = f"{n_req} test{'s' if n_req != 1 else ''} passed on {len(instances)} " \
           f"instance{'s' if len(instances) != 1 else ''}"
    if n_cmd:
        said = (f"{said}, " if n_req else "") + f"{n_cmd} command{'s' if n_cmd != 1 else ''} passed"
    return CheckResult(True, f"smoke: {said}", {"results": rows})
