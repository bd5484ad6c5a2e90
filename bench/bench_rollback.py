"""Rollback reaction: from the moment a canary starts failing to 0 % canary traffic in the router.

Setup (all real, on 127.0.0.1): the built-in router, two instances each of the demo app for the stable and the
canary version, client traffic at about 200 rps, analysis every 1 s with `error_rate > 5 % for 2s`, immediate
rollback. The canary sits at 50 % (a step without pause, so analysis runs until the fault). Then every canary
instance is switched to failing through the demo app's control endpoint; the clock starts at that moment and
stops when the router's admin API reports the canary at 0 %. Three rounds; the median is the key figure.

    python3 bench/bench_rollback.py        # last line: reaction_s: X
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from releasegate import service
from releasegate.providers.platforms import make_platform
from releasegate.providers.routers.builtin import read_router_state, router_client, stop_router
from releasegate.spec import load_spec

SPEC = """\
service: bench
tier: critical
platform:
  command: "{python} -m releasegate.demoapp --port {{port}}"
  instances: 2
  env: {{DEMO_CONTROL: "1"}}
  stop_grace: 2s
router: {{listen: "127.0.0.1:{port}"}}
health: {{path: /health, interval: 100ms, attempts: 50}}
smoke: [{{path: /health}}]
strategy: {{canary: {{steps: [{{weight: 50}}]}}}}
analysis:
  interval: 1s
  post_promotion: 0s
  rules: [{{metric: error_rate, max: 0.05, for: 2s}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def traffic(url: str, stop: asyncio.Event) -> None:
    """Many users: no cookie jar, so sticky buckets are drawn per request."""
    async with httpx.AsyncClient(timeout=5.0, cookies=None) as client:
        while not stop.is_set():
            client.cookies.clear()
            started = time.monotonic()
            await asyncio.gather(*(client.get(url) for _ in range(4)), return_exceptions=True)
            await asyncio.sleep(max(0.0, 0.02 - (time.monotonic() - started)))


async def one_round(ctx: service.Context, spec_path: Path, version: str, admin: str) -> float:
    spec = load_spec(spec_path)
    platform = make_platform(spec.platform, ctx.state_dir, spec_path.parent)
    router = router_client(ctx.state_dir, "bench", admin)
    rollout = asyncio.create_task(service.deploy(ctx, spec_path, version))
    while True:  # canary at 50 % and analysed for a few intervals
        rec = service.status(ctx, "bench")[0]["rollout"]
        if rec and rec["weight"] == 50 and rec["waiting"] and rec["latest"].get("error_rate") is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(3)
    canaries = [i for i in await platform.instances("bench") if i.version == version]
    async with httpx.AsyncClient() as client:
        t0 = time.monotonic()
        await asyncio.gather(*(client.put(f"http://{i.address}/_faults", content="error_rate=1") for i in canaries))
    while (await router.get_routes("bench")).weight_of(version) > 0:
        await asyncio.sleep(0.01)
    reaction = time.monotonic() - t0
    st = await rollout
    assert st.status == "rolled_back", st.reason
    return reaction


async def main() -> float:
    root = Path(tempfile.mkdtemp(prefix="rg-bench-rollback-"))
    port = free_port()
    spec_path = root / "bench.yaml"
    spec_path.write_text(SPEC.format(python=sys.executable, port=port))
    ctx = service.new_context(root / "state")
    stop = asyncio.Event()
    try:
        await service.deploy(ctx, spec_path, "1.0.0")
        info = read_router_state(ctx.state_dir, "bench")
        assert info is not None
        load = asyncio.create_task(traffic(f"http://127.0.0.1:{port}/api/items", stop))
        reactions = []
        for n in range(3):
            r = await one_round(ctx, spec_path, f"2.0.{n}", str(info["admin"]))
            reactions.append(r)
            print(f"round {n + 1}: canary failing -> 0 % in {r:.2f} s", flush=True)
        stop.set()
        await load
        return statistics.median(reactions)
    finally:
        spec = load_spec(spec_path)
        platform = make_platform(spec.platform, ctx.state_dir, root)
        for inst in await platform.instances("bench"):
            await platform.stop(inst, 1.0)
        stop_router(ctx.state_dir, "bench", 5.0)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    median = asyncio.run(main())
    print("interval 1s, for 2s, immediate rollback; target <= 3 s")
    print(f"reaction_s: {median:.2f}")
