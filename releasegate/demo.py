"""``releasegate demo``: the whole loop on this machine in about a minute, the same story every run.

A small shop API (releasegate/demoapp.py) runs behind the built-in router while simulated users browse the catalogue
and place orders. 1.0.0 is deployed first; 2.0.0, a good release, is canaried to 100 % under that traffic; 3.0.0 is a
bad release whose checkout answers 500 to every order. Its /health is fine and the smoke test (which, as in
production, only reads: it never places an order) passes, so only real traffic shows the bug: analysis sees 3.0.0's
error rate at about a third and rolls it back.

Why the story is the same every run: the app's faults are counted, not random, and the users carry sticky buckets
spread evenly over 0-99 and visited in a well-mixed order, so a 20 % canary gets a fifth of the users in every
second of the demo. Everything runs for real (processes, HTTP on 127.0.0.1, the SQLite store); only the pauses are
short. The state is kept afterwards (default ./.releasegate-demo) so ``status``, ``history`` and ``audit verify``
can be tried on it; the service is taken down at the end with ``releasegate down``'s use case.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from releasegate import service
from releasegate.durations import format_duration
from releasegate.engine.state import RolloutState
from releasegate.errors import UserError
from releasegate.progress import ProgressPrinter

SERVICE = "demo"
FAULTS = "3.0.0:error_rate=1,paths=/api/orders"

SPEC = """\
# Written by `releasegate demo`; its state is in this directory. Try: {program} --state-dir {state} history demo
service: demo
tier: important
platform:
  kind: local
  command: "{python} -m releasegate.demoapp --port {{port}}"
  instances: 2
  env: {{FAULTS: "{faults}"}}   # 3.0.0's checkout is broken: every POST /api/orders answers 500
  stop_grace: 2s
router: {{kind: builtin, listen: "127.0.0.1:{port}", sticky: cookie}}
health: {{path: /health, interval: 200ms, timeout: 1s, attempts: 50, expect: {{status: healthy}}}}
smoke:                          # read-only, as in production: a smoke test never places a real order
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 500ms}}
strategy:
  canary:
    steps:
      - {{weight: 20, pause: {pause}}}
      - {{weight: 50, pause: {pause}}}
    keep_previous: 24h
analysis:
  interval: 2s                  # each look covers 2 s: even at a 10 % stair it holds a few users' visits
  post_promotion: {watch}
  rules:
    - {{metric: error_rate, max: 0.05, for: 2s}}
    - {{metric: latency_p95, max: 500ms, for: 3s}}
rollback: {{mode: staircase, staircase: [10, 0], step_wait: 2s}}
"""

STORY = (
    ("1.0.0", "first deploy: start 2 instances, health check, smoke test, 100 %"),
    ("2.0.0", "a good release, canaried 20 % -> 50 % -> 100 % while the users keep shopping; analysis checks "
              "the error rate and p95 latency at every step"),
    ("3.0.0", "a bad release: its new checkout answers 500 to every order (POST /api/orders). /health is fine and "
              "the smoke test only reads the catalogue, so both pass; only real traffic shows the bug, and "
              "analysis should roll it back"),
)
EXPECTED = ("promoted", "promoted", "rolled_back")
SESSION = (("GET", "/api/items"), ("GET", "/api/items"), ("POST", "/api/orders"))
"""What one user visit does: browse twice, order once (so a version that fails every order fails a third)."""

GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class Traffic:
    """Users shopping through the router, each visit counted by the version that answered it."""

    url: str
    cookie: str = "rg_bucket"
    visits_per_second: float = 13.0  # about 40 requests/s
    workers: int = 4
    by_version: dict[str, list[int]] = field(default_factory=dict)  # version -> [requests, failures]
    unreachable: int = 0
    visits: int = 0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # set once users got their first answers
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    def stop(self) -> None:
        self._stop.set()

    def requests(self) -> int:
        return sum(n for n, _ in self.by_version.values())

    async def _worker(self) -> None:
        pace = self.workers / self.visits_per_second
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0, trust_env=False) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                self.visits += 1
                # A returning user with the sticky bucket the router gave it: buckets spread evenly over 0-99.
                bucket = int((self.visits * GOLDEN) % 1.0 * 100)
                for method, path in SESSION:
                    await self._one(client, method, path, bucket)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, pace - (time.monotonic() - started)))

    async def _one(self, client: httpx.AsyncClient, method: str, path: str, bucket: int) -> None:
        client.cookies.clear()
        try:
            r = await client.request(method, path, headers={"Cookie": f"{self.cookie}={bucket}"})
        except httpx.HTTPError:
            self.unreachable += 1
            return
        counts = self.by_version.setdefault(r.headers.get("x-version") or "?", [0, 0])
        counts[0] += 1
        counts[1] += r.status_code >= 500
        if counts[0] >= 30:
            self.flowing.set()


def program() -> str:
    """How the user started releasegate, for the follow-up commands the demo prints."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name != "releasegate":
        return f"{shlex.quote(sys.executable)} -m releasegate"
    on_path = shutil.which("releasegate")
    if on_path and Path(on_path).resolve() == Path(argv0).resolve():
        return "releasegate"
    short = os.path.relpath(argv0) if os.path.isabs(argv0) else argv0
    return shlex.quote(argv0 if short.startswith("..") else short)


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the router binds: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _prepare(root: Path, port: int) -> None:
    """A fresh state dir: an earlier demo's is stopped and replaced; any other non-empty directory is refused."""
    if root.is_dir() and any(root.iterdir()):
        if not (root / "demo.yaml").is_file():
            raise UserError(f"demo: {root} is not empty and not a demo's state; choose another directory with "
                            "--state-dir DIR")
        asyncio.run(cleanup(root))
    elif root.exists() and not root.is_dir():
        raise UserError(f"demo: {root} is a file; choose a directory with --state-dir DIR")
    if not 0 < port < 65536:
        raise UserError(f"demo: --port {port} is not a TCP port (1-65535)")
    if _port_taken(port):
        raise UserError(f"demo: port {port} on 127.0.0.1 is in use; run it on a free port with "
                        f"`releasegate demo --port PORT`")
    shutil.rmtree(root, ignore_errors=True)
    try:
        root.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"demo: cannot create {root} ({exc.strerror}); choose another with --state-dir DIR") from None


def run_demo(console: Console, state_dir: Path, port: int, fast: bool) -> int:
    """0 when the story happened as designed, 1 otherwise (the table says what differed)."""
    root = state_dir
    _prepare(root, port)
    spec_path = root / "demo.yaml"
    spec_path.write_text(SPEC.format(state=shlex.quote(str(root)), program=program(), python=sys.executable,
                                     port=port, faults=FAULTS, pause="3s" if fast else "8s",
                                     watch="2s" if fast else "5s"))
    console.print(f"[bold]releasegate demo[/bold]: a small shop API (releasegate/demoapp.py) behind the built-in "
                  f"router on 127.0.0.1:{port}; simulated users browse GET /api/items and order POST /api/orders, "
                  f"about 40 requests/s. Spec {spec_path}, state in {root}.")
    finished = False
    try:
        code = asyncio.run(_tour(console, root, spec_path, port, fast))
        finished = True
    finally:
        if not finished:
            asyncio.run(cleanup(root))
    _follow_up(console, root)
    return code


async def _deploy(ctx: service.Context, console: Console, spec_path: Path, version: str,
                  limit: float) -> RolloutState:
    """One rollout with live progress; a rollout that has not ended within ``limit`` is aborted (and reported),
    so the demo never hangs, whatever the engine decides."""
    task = asyncio.create_task(service.deploy(ctx, spec_path, version, on_progress=ProgressPrinter(console, 2.0)))
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        console.print(f"[bold red]{version} has not finished after {limit:g}s: aborting it[/]")
        await service.send_command(ctx, SERVICE, "abort")
    st = await task
    ProgressPrinter(console).summary(st)
    return st


async def _tour(console: Console, root: Path, spec_path: Path, port: int, fast: bool) -> int:
    ctx = service.new_context(root)
    ctx.actor = "releasegate demo"
    results: list[tuple[RolloutState, dict[str, list[int]]]] = []
    traffic = Traffic(f"http://127.0.0.1:{port}")
    task: asyncio.Task[None] | None = None
    limit = 120.0 if fast else 300.0
    try:
        for version, note in STORY:
            console.rule(f"{version}")
            console.print(note)
            before = {v: list(c) for v, c in traffic.by_version.items()}
            st = await _deploy(ctx, console, spec_path, version, limit)
            if task is None and st.status == "promoted":
                task = asyncio.create_task(traffic.run())
                with contextlib.suppress(TimeoutError):  # users are shopping before the canary starts
                    await asyncio.wait_for(traffic.flowing.wait(), 30.0)
            seen = {v: [c[0] - before.get(v, [0, 0])[0], c[1] - before.get(v, [0, 0])[1]]
                    for v, c in traffic.by_version.items()}
            results.append((st, seen))
    finally:
        traffic.stop()
        if task is not None:
            await task
    _report(console, results, traffic)
    problems = _differences(ctx, results)
    from releasegate.teardown import take_down

    down = await take_down(ctx, SERVICE)
    console.print(f"[dim]{down.lines[0]}[/dim]")
    if problems:
        console.print("[bold red]the demo did not go as designed:[/] " + "; ".join(problems))
        return 1
    console.print("[bold green]demo finished as designed[/]: 1.0.0 deployed, 2.0.0 promoted under traffic, 3.0.0 "
                  "passed health and smoke and was rolled back by analysis of real traffic")
    return 0


def _differences(ctx: service.Context, results: list[tuple[RolloutState, dict[str, list[int]]]]) -> list[str]:
    """What differs from the designed story (empty when it happened as designed)."""
    statuses = tuple(st.status for st, _ in results)
    problems = [] if statuses == EXPECTED else [f"outcomes {', '.join(statuses)}, expected {', '.join(EXPECTED)}"]
    if len(results) == len(EXPECTED):
        bad, seen = results[2]
        kinds = [e["kind"] for e in service.history(ctx, SERVICE, 1)[0]["events"]]
        first_rollback = next((e["message"] for e in service.history(ctx, SERVICE, 1)[0]["events"]
                               if e["kind"] == "rollback"), "")
        if "smoke_passed" not in kinds or "step" not in kinds:
            problems.append("3.0.0 did not pass its smoke test and reach user traffic")
        elif "error_rate" not in first_rollback:
            problems.append(f"3.0.0 was not rolled back by the error-rate analysis ({first_rollback or bad.reason})")
        if not seen.get("3.0.0", [0, 0])[0]:
            problems.append("no user request reached 3.0.0")
    return problems


def _report(console: Console, results: list[tuple[RolloutState, dict[str, list[int]]]], traffic: Traffic) -> None:
    table = Table(title="What happened", title_justify="left")
    for col in ("version", "outcome", "took", "user requests (failed) by version", "why"):
        table.add_column(col)
    for st, seen in results:
        took = format_duration(round((st.finished_at or st.updated_at) - st.created_at))
        per = ", ".join(f"{v}: {n} ({e})" for v, (n, e) in sorted(seen.items()) if n) or "- (before the users)"
        table.add_row(st.version, st.status.replace("_", " "), took, per, st.reason or "")
    console.print(table)
    failed = {v: e for v, (_, e) in traffic.by_version.items() if e}
    console.print(f"{traffic.visits} user visits, {traffic.requests()} requests: failed ones came from "
                  + (", ".join(f"{v} ({e})" for v, e in sorted(failed.items())) or "no version")
                  + ("" if not traffic.unreachable else f"; {traffic.unreachable} could not reach the router"))


def _follow_up(console: Console, root: Path) -> None:
    rg = f"{program()} --state-dir {shlex.quote(str(root))}"
    tries = ((f"status {SERVICE}", "down now; it was 2.0.0"),
             (f"history {SERVICE}", "every decision, with the metric values behind it"),
             ("audit verify", "the hash-chained audit log"))
    console.print(f"\nThe demo's state is kept in {root}. Look at it with:", markup=False)
    for command, what in tries:
        console.print(f"  {rg} {command:<14}  # {what}", markup=False)
    console.print("Run the demo again to start over (it replaces this state).", markup=False)


async def cleanup(root: Path) -> None:
    """Stop what a demo started in ``root`` (app instances and the router), whatever state it was left in."""
    from releasegate.providers.platforms import make_platform
    from releasegate.providers.routers.builtin import stop_router
    from releasegate.spec import load_spec

    spec_path = root / "demo.yaml"
    if not spec_path.exists():
        return
    try:
        spec = load_spec(spec_path)
    except UserError:
        return
    platform = make_platform(spec.platform, root, root)
    for inst in await platform.instances(spec.service):
        await platform.stop(inst, 2.0)
    await asyncio.to_thread(stop_router, root, spec.service, 5.0)
