#!/usr/bin/env python3
"""Benchmark: how long a rollout goes undriven when its server dies, with the default 10 s lease (issue 11, §5).

Three real servers share one SQLite state dir (tests/support/failover.py); ``--rollouts`` canaries of real local
processes are held at 20 % (so they are all active), spread over the servers by where they were posted. Then:

- SIGKILL the server driving the most of them, and measure, per rollout, the time until another live server holds
  its lease. On one host a holder whose process is gone frees its lease at once, so this is the scan interval
  (TTL/2) plus the adoption; on several hosts it is the SIGSTOP figure below.
- SIGSTOP the server now driving the most (alive but silent, as a host cut off the network), and measure the same:
  its leases must expire first (TTL), then the next scan (TTL/2) adopts them: at most about 1.5 x TTL.

The last line is the key figure: ``failover_s sigkill_max: X, sigstop_max: Y (ttl 10s)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.failover import Fleet, fleet_of
from tests.support.wait import eventually

HELD = "[{weight: 20, pause: 1h}]"


def holders(fleet: Fleet, ids: list[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for rid in ids:
        rec = fleet.rollout(rid)
        out[rid] = int(rec.owner["pid"]) if rec is not None and rec.owner else None
    return out


async def takeover(fleet: Fleet, ids: list[str], victim: int, sig: signal.Signals) -> list[float]:
    """Send ``sig`` to the server with pid ``victim``; per rollout it drove, seconds until another server holds it."""
    mine = [rid for rid, pid in holders(fleet, ids).items() if pid == victim]
    os.kill(victim, sig)
    began, took = time.monotonic(), dict[str, float]()
    while len(took) < len(mine):
        now = holders(fleet, mine)
        for rid in mine:
            if rid not in took and now[rid] not in (None, victim):
                took[rid] = time.monotonic() - began
        assert time.monotonic() - began < 120, f"not taken over within 120 s: {set(mine) - set(took)}"
        await asyncio.sleep(0.1)
    return sorted(took.values())


async def run(fleet: Fleet, rollouts: int, ttl: str) -> None:
    names = [f"svc{n:02d}" for n in range(rollouts)]
    for name in names:
        fleet.service(name, HELD)
    firsts = await asyncio.gather(*(fleet.deploy(fleet.servers[i % 3], n, "1.0.0") for i, n in enumerate(names)))
    for rid in firsts:
        assert await fleet.ended(rid, 120) == "promoted"
    ids = list(await asyncio.gather(*(fleet.deploy(fleet.servers[i % 3], n, "2.0.0")
                                      for i, n in enumerate(names))))
    await eventually(lambda: all(fleet.rollout(rid).state.weight == 20 for rid in ids), 120,
                     "every canary at 20 %", every=0.2)
    figures = {}
    for sig in (signal.SIGKILL, signal.SIGSTOP):
        counts: dict[int, int] = {}
        for pid in holders(fleet, ids).values():
            if pid is not None:
                counts[pid] = counts.get(pid, 0) + 1
        victim = max(counts, key=lambda p: counts[p])
        took = await takeover(fleet, ids, victim, sig)
        figures[sig.name] = took
        print(f"{sig.name}: {len(took)} rollouts taken over, min {took[0]:.1f} s, median "
              f"{took[len(took) // 2]:.1f} s, max {took[-1]:.1f} s")
        if sig == signal.SIGKILL:
            server = next(s for s in fleet.servers if s.proc is not None and s.proc.pid == victim)
            server.stop(kill=True)
            await asyncio.to_thread(server.start)
    print(f"failover_s sigkill_max: {figures['SIGKILL'][-1]:.1f}, sigstop_max: {figures['SIGSTOP'][-1]:.1f} "
          f"(ttl {ttl})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rollouts", type=int, default=12)
    parser.add_argument("--ttl", default="10s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fleet_of(Path(tmp), ttl=args.ttl) as fleet:
        asyncio.run(run(fleet, args.rollouts, args.ttl))


if __name__ == "__main__":
    main()
