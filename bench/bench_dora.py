#!/usr/bin/env python3
"""Benchmark: the DORA metrics over 1,000 services, each with a month of finished rollouts.

A store in a temporary state dir gets ``SERVICES`` services x ``PER_SERVICE`` promoted canary rollouts spread over
the last 30 days, written through ``Store`` (each state holding 60 analysis samples per rule, as a 10-minute step
measured every 10 s leaves it; its decisions as events), one in ten followed by a hotfix. Then it times:

- ``releasegate dora`` over 90 days (read + compute + JSON), best of 3;
- the server's ``/metrics`` DORA part (``DoraCollector.render``): the first scrape (every state's marks read once),
  a scrape within a minute of the last computation (the kept text), and a recomputation a minute later after one
  more rollout finished (only that state's marks read), best of 3 each.

The last line is the key figure: ``dora at N services: cli X ms, scrape cold/kept/recomputed A/B/C ms``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from releasegate.dora import read_deploys, report  # noqa: E402
from releasegate.dora_metrics import REFRESH, DoraCollector  # noqa: E402
from releasegate.engine.state import RolloutState, Sample  # noqa: E402
from releasegate.store.sqlite import Store  # noqa: E402

SERVICES = 1000
PER_SERVICE = 8
DAY = 86400.0


def _rollout(store: Store, service: str, version: str, previous: str, start: float, hotfix: bool) -> None:
    samples = {rule: [Sample(at=start + 10 * i, start=start + 10 * i - 60, value=0.01) for i in range(60)]
               for rule in ("0:error_rate", "1:latency_p99")}
    st = RolloutState(id=f"{service}-{version}", service=service, version=version, previous=previous,
                      strategy="canary", phase_started=start, created_at=start, updated_at=start,
                      change="hotfix" if hotfix else "minor", samples=samples)
    store.create_rollout(st, "spec.yaml", "{}", {})
    done = st.model_copy(update={"status": "promoted", "phase": "done", "weight": 100, "updated_at": start + 3000,
                                 "finished_at": start + 3000})
    events = [("step", "step 1/2", {"weight": 20}), ("step", "step 2/2", {"weight": 50}),
              ("switched", "at 100%", {"weight": 100}), ("promoted", "promoted", {})]
    store.save(done, events)


def _fill(state: Path, now: float) -> Store:
    store = Store(state)
    for s in range(SERVICES):
        service = f"svc-{s:04d}"
        for r in range(PER_SERVICE):
            start = now - 29 * DAY + r * (28 * DAY / PER_SERVICE) + s
            _rollout(store, service, f"1.{r}.0", f"1.{r - 1}.0", start, hotfix=(r % 10 == 9))
    return store


def _best(run: object, times: int = 3) -> float:
    assert callable(run)
    best = float("inf")
    for _ in range(times):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        now = time.time()
        t = time.perf_counter()
        store = _fill(state, now)
        print(f"filled {SERVICES * PER_SERVICE} rollouts in {time.perf_counter() - t:.1f} s", flush=True)
        cli = _best(lambda: report(read_deploys(state, now - 90 * DAY), now - 90 * DAY, now))
        print(f"dora over 90 days (read + compute): {cli:.0f} ms", flush=True)
        cold = []
        for _ in range(3):
            fresh = DoraCollector(state)
            t = time.perf_counter()
            fresh.render()
            cold.append((time.perf_counter() - t) * 1000)
        clock = [time.time()]
        collector = DoraCollector(state, clock=lambda: clock[0])
        collector.render()
        unchanged = _best(collector.render)
        after = []
        for i in range(3):
            _rollout(store, "svc-0000", f"2.{i}.0", "1.7.0", time.time() - 3000, hotfix=False)
            clock[0] += REFRESH  # the kept text is a minute old: computed again
            t = time.perf_counter()
            text = collector.render()
            after.append((time.perf_counter() - t) * 1000)
        assert b'releasegate_dora_deployments{service="svc-0000",env="prod"} 11.0' in text, collector.last_error
        store.close()
        print(f"scrape: cold {min(cold):.0f} ms, kept {unchanged:.2f} ms, recomputed {min(after):.0f} ms")
        print(f"dora at {SERVICES} services: cli {cli:.0f} ms, scrape cold/kept/recomputed "
              f"{min(cold):.0f}/{unchanged:.2f}/{min(after):.0f} ms")


if __name__ == "__main__":
    main()
