"""Latency rules see slow requests while they are slow, not only when they finally complete.

A request is counted when its response completes, so a version whose requests take longer than the analysis
interval used to leave most windows without any latency ("no data"): the unbroken run of breaching samples a
rule needs never formed, and a p95 far above its bound was only caught by the check at the end of the step.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.engine import decide
from releasegate.engine.analysis import evaluate, gate, record_samples
from releasegate.engine.state import Observation, RolloutState
from releasegate.providers.base import AtLeast, MetricQuery, Routes, VersionRoute
from releasegate.providers.metrics.builtin import RouterMetrics
from releasegate.providers.routers.builtin import ensure_router, stop_router
from releasegate.spec.models import BuiltinRouter, Spec
from tests.support.rollouts import Load, cleanup, free_port, write_spec
from tests.support.router_helpers import KeepAliveBackend
from tests.support.wait import eventually

RULE = "[{metric: latency_p95, max: 2s, for: 2s}]"


def make_spec(rules: list[dict[str, Any]]) -> Spec:
    return Spec.model_validate({"service": "shop", "platform": {"command": "app --port {port}"},
                                "analysis": {"interval": "1s", "rules": rules}})


def test_a_lower_bound_breaches_a_max_but_never_passes_one() -> None:
    spec = make_spec([{"metric": "latency_p95", "max": "2s", "for": "2s"}])
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0)
    # Requests waiting 1.5 s: slower than that, but maybe under 2 s or maybe not: no data, never "fine".
    st = record_samples(st, spec, Observation(at=1.0, values={"0:latency_p95": AtLeast(1.5)}))
    assert evaluate(spec.analysis.rules, st.samples, 1.0, 1.0).inconclusive == ["0:latency_p95"]
    assert gate(spec.analysis.rules, Observation(at=1.0, whole={"0:latency_p95": AtLeast(1.5)}), 1.0)[0] == "wait"
    # Waiting 2.4 s and 3.4 s: certainly above 2 s; held for the rule's 2 s, it breaches.
    for at, waited in ((2.0, 2.4), (3.0, 3.4)):
        st = record_samples(st, spec, Observation(at=at, values={"0:latency_p95": AtLeast(waited)}))
    assert evaluate(spec.analysis.rules, st.samples, 3.0, 1.0).breached == [("0:latency_p95", 3.4)]
    assert gate(spec.analysis.rules, Observation(at=3.0, whole={"0:latency_p95": AtLeast(3.4)}), 3.0)[0] == "fail"
    # A min bound is kept for certain by a lower bound at or above it, and unknown below it.
    low = make_spec([{"metric": "latency_p50", "min": "10ms", "for": "1s"}])
    assert gate(low.analysis.rules, Observation(at=1.0, whole={"0:latency_p50": AtLeast(0.5)}), 1.0)[0] == "pass"
    assert gate(low.analysis.rules, Observation(at=1.0, whole={"0:latency_p50": AtLeast(0.001)}), 1.0)[0] == "wait"


@pytest.mark.slow
async def test_the_router_reports_a_request_while_it_waits(tmp_path: Path) -> None:
    backend = KeepAliveBackend("v1").start()
    client = await ensure_router(tmp_path, "shop", BuiltinRouter(listen="127.0.0.1:0", sticky="none"))
    try:
        await client.set_routes("shop", Routes((VersionRoute("v1", 100, (backend.address,)),)))
        listen = (await client.health())["listen"]
        metrics = RouterMetrics(client)
        p95 = MetricQuery("shop", "v1", "latency_p95", 0.5)
        assert await metrics.query(p95) is None  # nothing sent yet: no data

        reader, writer = await asyncio.open_connection(*str(listen).rsplit(":", 1))
        writer.write(b"GET /gate HTTP/1.1\r\nHost: x\r\n\r\n")  # the backend answers when released
        await writer.drain()

        async def waited_long() -> float | None:
            value = await metrics.query(p95)
            return value if value is not None and value >= 1.0 else None

        seen = await eventually(waited_long, within=15, what="the waiting request in the router's latency")
        assert isinstance(seen, AtLeast)  # nothing completed: only a lower bound
        assert await metrics.query(MetricQuery("shop", "v1", "error_rate", 0.5)) is None  # no answers: no rate

        backend.release()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        done = await metrics.query(MetricQuery("shop", "v1", "latency_p95", 60))
        assert done is not None and not isinstance(done, AtLeast) and done >= 1.0  # now a completed request
        writer.close()
    finally:
        await client.aclose()
        stop_router(tmp_path, "shop", timeout=10)
        backend.stop()


async def _canary(tmp_path: Path, faults: str, pause: str) -> tuple[RolloutState, list[dict[str, Any]]]:
    """1.0.0, then a canary of 2.0.0 (20 % for ``pause``, 50 % for 2 s) under load: its outcome and events."""
    port = free_port()
    spec = write_spec(tmp_path, port, f"{{canary: {{steps: [{{weight: 20, pause: {pause}}}, "
                                      "{weight: 50, pause: 2s}]}}",
                      faults=faults, smoke_path="/health", rules=RULE)
    spec.write_text(spec.read_text().replace("interval: 500ms", "interval: 1s"))
    ctx = service.new_context(tmp_path / "state")
    try:
        assert (await asyncio.wait_for(service.deploy(ctx, spec, "1.0.0"), 60)).status == "promoted"
        async with Load(f"http://127.0.0.1:{port}/api/items") as load:
            await load.wait_for(20)
            st = await asyncio.wait_for(service.deploy(ctx, spec, "2.0.0"), 90)
        return st, service.history(ctx, "shop", 1)[0]["events"]
    finally:
        await cleanup(tmp_path / "state", spec)


@pytest.mark.slow
async def test_a_slow_canary_rolls_back_within_the_rules_window(tmp_path: Path) -> None:
    st, events = await _canary(tmp_path, "2.0.0:latency=2.5", "30s")
    assert st.status == "rolled_back", st.reason
    # Caught by the rule itself while the step ran, not by the whole-step check when its 30 s were up (which says
    # "latency_p95 over the step (30s) was ..."). Without the waiting requests, it took until the step's end.
    rollback = next(e for e in events if e["kind"] == "rollback")
    assert "latency_p95 > 2s for 2s held" in rollback["message"], rollback["message"]
    assert rollback["data"]["rule"] == "0:latency_p95"
    assert "analysis_passed" not in [e["kind"] for e in events]


@pytest.mark.slow
async def test_requests_slower_than_the_interval_but_within_the_bound_do_not_breach(tmp_path: Path) -> None:
    st, events = await _canary(tmp_path, "2.0.0:latency=1.4", "5s")
    assert st.status == "promoted", st.reason
    values = [e["data"]["values"]["0:latency_p95"] for e in events
              if e["kind"] == "analysis" and e["data"].get("values")]
    assert any(v is not None and 1.0 <= v < 2.0 for v in values), values  # it was measured, and slow
