"""Zero downtime across an SSH fleet: failed client requests during a three-host rolling update under load.

Three hosts built as the tests build them (tests/support/ssh_hosts.py: a network namespace each, with a veth pair
to this namespace and its own sshd), the demo app on each host over SSH (``platform: {kind: ssh}``), the builtin
router on loopback here. 1.0.0 is deployed, then rolled to 2.0.0 host by host (``max_surge: 1``,
``max_unavailable: 0``, so one host at a time: a new instance beside the old one, then the old one drained and
stopped) under continuous load from 6 httpx clients (``Load`` from tests/support/rollouts.py: no retries), then
rolled back to 1.0.0 the same way. It prints, per rollout, the requests, the failed ones (status >= 500 or a
connection error), the time from deploy to promoted and the p50 / p99 / max latency of the requests.

    python3 bench/bench_ssh_rolling.py     # about 30 s, as root; last line: ssh rolling failed requests: 0 of N

Exit code 0 when nothing failed, 1 when a request failed, 2 when network namespaces are not available here.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support, like a test run from the checkout

from releasegate import service  # noqa: E402
from tests.support.rollouts import Load, free_port  # noqa: E402
from tests.support.ssh_hosts import Fleet, build, netns_allowed  # noqa: E402

APP = f"{sys.executable} -m releasegate.demoapp --host 0.0.0.0 --port {{port}}"


def spec_text(fleet: Fleet, port: int) -> str:
    return f"""\
service: shop
platform:
  kind: ssh
{fleet.spec_lines(APP)}  stop_grace: 2s
router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 50}}
strategy: {{rolling: {{max_surge: 1, max_unavailable: 0, pause: 1s}}}}
analysis:
  interval: 500ms
  rules: [{{metric: error_rate, max: 0.05, for: 2s}}]
"""


async def rollout(ctx: service.Context, spec: Path, url: str, version: str) -> tuple[int, int, float, list[float]]:
    async with Load(url, concurrency=6) as load:
        await load.wait_for(30)
        started = time.monotonic()
        st = await asyncio.wait_for(service.deploy(ctx, spec, version), 300)
        took = time.monotonic() - started
        await load.wait_for(30)
    if st.status != "promoted":
        raise SystemExit(f"the rollout to {version} ended {st.status}: {st.reason}")
    for failure in load.failures[:5]:
        print(f"  failed: {failure}")
    return load.requests, len(load.failures), took, [s for _, s in load.latencies[30:]]


async def main(root: Path) -> int:
    fleet = build(root / "fleet", 3)
    try:
        port = free_port()
        spec = root / "shop.yaml"
        spec.write_text(spec_text(fleet, port))
        ctx = service.new_context(root / "state")
        first = await service.deploy(ctx, spec, "1.0.0")
        assert first.status == "promoted", first.reason
        url = f"http://127.0.0.1:{port}/api/items"
        total = failed = 0
        for version in ("2.0.0", "1.0.0"):
            n, bad, took, latencies = await rollout(ctx, spec, url, version)
            q = statistics.quantiles(latencies, n=100)
            print(f"rolling to {version} across 3 hosts: {n} requests, {bad} failed, promoted after {took:.1f} s; "
                  f"latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
            total, failed = total + n, failed + bad
    finally:
        from releasegate.providers.routers.builtin import stop_router

        stop_router(root / "state", "shop", 5.0)
        fleet.close()
    print(f"ssh rolling failed requests: {failed} of {total}")
    return 1 if failed else 0


if __name__ == "__main__":
    why = netns_allowed()
    if why is not None:
        print(f"ssh rolling: cannot build hosts here: {why}")
        sys.exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(asyncio.run(main(Path(tmp))))
