"""``releasegate demo``: the whole loop on this machine in about a minute.

Starts the built-in router and the demo app, deploys 1.0.0, canaries 2.0.0 to 100 % under traffic the demo
generates itself, then canaries 3.0.0, which fails 30 % of its requests, and watches it roll back on its own.
Everything runs for real: processes, HTTP on 127.0.0.1, the SQLite store. Only the pauses are short.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from releasegate import service
from releasegate.durations import format_duration
from releasegate.engine.state import RolloutState
from releasegate.progress import ProgressPrinter

SPEC = """\
# Written by `releasegate demo`. Try: releasegate --state-dir {state} history demo
service: demo
tier: important
platform:
  kind: local
  command: "{python} -m releasegate.demoapp --port {{port}}"
  instances: 2
  env: {{FAULTS: "3.0.0:error_rate=0.3"}}
  stop_grace: 2s
router: {{kind: builtin, listen: "127.0.0.1:{port}"}}
health: {{path: /health, interval: 200ms, timeout: 1s, attempts: 50}}
smoke:
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 500ms}}
strategy:
  canary:
    steps:
      - {{weight: 20, pause: {pause}}}
      - {{weight: 50, pause: {pause}}}
    keep_previous: 24h
analysis:
  interval: 1s
  post_promotion: {watch}
  rules:
    - {{metric: error_rate, max: 0.05, for: 2s}}
    - {{metric: latency_p95, max: 500ms, for: 3s}}
rollback: {{mode: staircase, staircase: [10, 0], step_wait: 2s}}
"""


@dataclass
class Traffic:
    """A steady trickle of user requests through the router, counted by the version that answered."""

    url: str
    rate: float = 40.0
    by_version: dict[str, list[int]] = field(default_factory=dict)  # version -> [requests, failures]
    failed_unrouted: int = 0
    _stop: bool = False

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while not self._stop:
                started = time.monotonic()
                await asyncio.gather(*(self._one(client) for _ in range(4)))
                await asyncio.sleep(max(0.0, 4 / self.rate - (time.monotonic() - started)))

    async def _one(self, client: httpx.AsyncClient) -> None:
        try:
            r = await client.get(self.url)
        except httpx.HTTPError:
            self.failed_unrouted += 1
            return
        client.cookies.clear()  # each request a new user, so the canary gets its share of traffic
        version = r.headers.get("x-version") or "?"
        counts = self.by_version.setdefault(version, [0, 0])
        counts[0] += 1
        counts[1] += r.status_code >= 500

    def stop(self) -> None:
        self._stop = True


def run_demo(console: Console, state_dir: Path | None, port: int, fast: bool) -> int:
    temp = state_dir is None
    root = Path(tempfile.mkdtemp(prefix="releasegate-demo-")) if state_dir is None else state_dir
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "demo.yaml"
    spec_path.write_text(SPEC.format(state=root, python=sys.executable, port=port,
                                     pause="3s" if fast else "8s", watch="2s" if fast else "5s"))
    console.print(f"[bold]releasegate demo[/bold]: spec {spec_path}, state in {root}, router on 127.0.0.1:{port}")
    try:
        return asyncio.run(_tour(console, root, spec_path, port))
    finally:
        asyncio.run(_cleanup(root))
        if temp:
            shutil.rmtree(root, ignore_errors=True)


async def _tour(console: Console, root: Path, spec_path: Path, port: int) -> int:
    ctx = service.new_context(root)
    results: list[tuple[RolloutState, dict[str, list[int]]]] = []
    traffic = Traffic(f"http://127.0.0.1:{port}/api/items")
    task: asyncio.Task[None] | None = None
    try:
        for version, note in (("1.0.0", "first deploy: start, health, smoke, 100 %"),
                              ("2.0.0", "canary 20 % -> 50 % -> 100 % under traffic"),
                              ("3.0.0", "canary of a version that fails 30 % of requests")):
            console.rule(f"{version}: {note}")
            before = {v: list(c) for v, c in traffic.by_version.items()}
            st = await service.deploy(ctx, spec_path, version, on_progress=ProgressPrinter(console, 2.0))
            ProgressPrinter(console).summary(st)
            if task is None:
                task = asyncio.create_task(traffic.run())
            seen = {v: [c[0] - before.get(v, [0, 0])[0], c[1] - before.get(v, [0, 0])[1]]
                    for v, c in traffic.by_version.items()}
            results.append((st, seen))
    finally:
        traffic.stop()
        if task is not None:
            await task
    _report(console, results, traffic)
    statuses = [st.status for st, _ in results]
    ok = statuses == ["promoted", "promoted", "rolled_back"]
    console.print("[bold green]demo finished as expected[/]" if ok else f"[bold red]unexpected: {statuses}[/]")
    return 0 if ok else 1


def _report(console: Console, results: list[tuple[RolloutState, dict[str, list[int]]]], traffic: Traffic) -> None:
    table = Table(title="What happened", title_justify="left")
    for col in ("version", "outcome", "took", "requests seen (errors) by version", "why"):
        table.add_column(col)
    for st, seen in results:
        took = format_duration(round((st.finished_at or st.updated_at) - st.created_at))
        per = ", ".join(f"{v}: {n} ({e / n:.0%})" for v, (n, e) in sorted(seen.items()) if n) or "-"
        table.add_row(st.version, st.status.replace("_", " "), took, per, st.reason or "")
    console.print(table)
    if traffic.failed_unrouted:
        console.print(f"[red]{traffic.failed_unrouted} request(s) could not reach the router[/red]")


async def _cleanup(root: Path) -> None:
    """Stop what the demo started: the app instances and the router."""
    from releasegate.providers.platforms.local import LocalPlatform
    from releasegate.providers.routers.builtin import stop_router
    from releasegate.spec import load_spec

    spec_path = root / "demo.yaml"
    if not spec_path.exists():
        return
    spec = load_spec(spec_path)
    platform = LocalPlatform(spec.platform, root, root)
    for inst in await platform.instances(spec.service):
        await platform.stop(inst, 2.0)
    stop_router(root, spec.service, 5.0)
