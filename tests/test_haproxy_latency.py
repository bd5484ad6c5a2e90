"""Per-version latency through a real HAProxy: the ring log of the configuration releasegate renders, followed over
the stats socket, and the seeds' default rules (error_rate > 5 %, latency_p95 > 2.5 s for 5 m) gating a canary.

Before the ring, HAProxy measured only error_rate and rps (``show stat``), ``validate`` refused the default spec
with ``router: {kind: haproxy}``, and a latency rule had nothing to read. A configuration the operator owns
(rendered by an older releasegate, or written by hand) has no ring: the wait reason and ``preflight`` must say
what to add, never just "no data".
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import httpx
import pytest

from releasegate import service
from releasegate.errors import UserError
from releasegate.preflight import preflight
from releasegate.providers.base import MetricQuery, Routes, VersionRoute
from releasegate.providers.metrics.haproxy import HaproxyStatsMetrics
from releasegate.providers.routers.haproxy import HaproxyRouter, render_config
from releasegate.providers.routers.haproxy_config import LOG_FORMAT, missing_ring
from releasegate.spec import load_spec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from tests.support.haproxy import HAPROXY, DemoApp, Haproxy, free_port
from tests.support.rollouts import Load, cleanup, write_spec
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which(HAPROXY) is None, reason="haproxy is not installed")]

SERVICE = "shop"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A unix socket path must stay under 108 bytes; pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="rg-hl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_spec(tmp_path: Path, sock_dir: Path) -> HaproxyRouterSpec:
    return HaproxyRouterSpec(kind="haproxy", listen=f"127.0.0.1:{free_port()}", config_file=str(tmp_path / "h.cfg"),
                             stats_socket=str(sock_dir / "admin.sock"), slots=2)


def operator_config(spec: HaproxyRouterSpec, *, ring_section: bool = False, log: str = "") -> str:
    """The configuration an older releasegate rendered (no ring): what an operator's file looks like today."""
    lines = [line for line in render_config(spec, SERVICE).splitlines()
             if "ring@" not in line and "log-format" not in line]
    text = "\n".join(lines) + "\n"
    if not ring_section:
        start = text.index("\nring ")
        text = text[:start] + text[text.index("\ndefaults"):]
    return text.replace(f"    bind {spec.listen}\n", f"    bind {spec.listen}\n{log}")


@pytest.fixture
async def slow_and_fast() -> AsyncIterator[tuple[DemoApp, DemoApp]]:
    fast, slow = DemoApp("1.0.0").start(), DemoApp("2.0.0", faults="2.0.0:latency=0.3").start()
    yield fast, slow
    fast.stop()
    slow.stop()


def q(version: str, metric: str, window: float = 60.0) -> MetricQuery:
    return MetricQuery(SERVICE, version, metric, window)


async def send(listen: str, n: int, concurrency: int = 8) -> None:
    """``n`` requests without cookies (many users), ``concurrency`` at a time."""
    async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=10, trust_env=False) as client:
        async def one() -> None:
            resp = await client.get("/api/items")
            assert resp.status_code == 200
            client.cookies.clear()

        for start in range(0, n, concurrency):
            await asyncio.gather(*(one() for _ in range(min(concurrency, n - start))))


@contextlib.asynccontextmanager
async def running(router: HaproxyRouter, sock_dir: Path,
                  tmp_path: Path) -> AsyncIterator[tuple[Haproxy, HaproxyStatsMetrics]]:
    """A private haproxy on the router's configuration and the metric source following its ring; both stopped
    whatever happens (the haproxy is started first, as an operator's supervisor would)."""
    proc = Haproxy(router.config_file, sock_dir / "admin.sock", tmp_path / "haproxy.pid").start()
    metrics: HaproxyStatsMetrics | None = None
    try:
        metrics = HaproxyStatsMetrics(router, ring=True)
        metrics.start()
        yield proc, metrics
    finally:
        if metrics is not None:
            await metrics.close()
        proc.stop()


async def test_p95_per_version_tells_the_slow_version_from_the_fast_one(tmp_path: Path, short_dir: Path,
                                                                     slow_and_fast: tuple[DemoApp, DemoApp]) -> None:
    fast, slow = slow_and_fast
    spec = make_spec(tmp_path, short_dir)
    router = HaproxyRouter(spec, SERVICE)
    assert router.ensure_config() is True
    assert f"ring {router.ring}\n" in router.config_file.read_text()
    async with running(router, short_dir, tmp_path) as (_, metrics):
        await router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 50, (slow.backend,)),
                                                 VersionRoute("1.0.0", 50, (fast.backend,)))))
        await send(spec.listen, 40)

        async def both_counted() -> bool:
            ring = metrics.ring
            assert ring is not None
            return ring.lines >= 40

        await eventually(both_counted, what="40 requests read from the ring")
        for metric in ("latency_p50", "latency_p95", "latency_p99"):  # 0.3 s, within a histogram bucket (25 %)
            slow_value = await metrics.query(q("2.0.0", metric))
            fast_value = await metrics.query(q("1.0.0", metric))
            assert slow_value is not None and 0.3 / 1.25 <= slow_value <= 0.3 * 1.25 + 0.1, (metric, slow_value)
            assert fast_value is not None and fast_value < 0.15, (metric, fast_value)
        assert await metrics.query(q("3.0.0", "latency_p95")) is None
        assert metrics.explain(q("3.0.0", "latency_p95")) == "no traffic to 3.0.0 in the last 1m"


async def test_an_operator_config_without_the_ring_says_what_to_add_and_fails_preflight(
        tmp_path: Path, short_dir: Path, slow_and_fast: tuple[DemoApp, DemoApp]) -> None:
    fast, _ = slow_and_fast
    spec_path = write_spec(tmp_path, free_port(), "{canary: {steps: [{weight: 50, pause: 2s}]}}", rules=None)
    router_yaml = (f'router: {{kind: haproxy, listen: "127.0.0.1:{free_port()}", config_file: '
                   f'"{tmp_path / "h.cfg"}", stats_socket: "{short_dir / "admin.sock"}", slots: 2}}')
    text = spec_path.read_text()
    text = "\n".join(router_yaml if line.startswith("router:") else line for line in text.splitlines()
                     if not line.startswith("  rules:")) + "\n"  # the default rules: error_rate and latency_p95
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    assert isinstance(spec.router, HaproxyRouterSpec)
    router = HaproxyRouter(spec.router, SERVICE)
    router.config_file.write_text(operator_config(spec.router))  # the operator's file: releasegate leaves it
    assert router.ensure_config() is False
    async with running(router, short_dir, tmp_path) as (proc, metrics):
        await router.set_routes(SERVICE, Routes((VersionRoute("1.0.0", 100, (fast.backend,)),)))
        await metrics.baseline(["1.0.0"])
        await send(spec.router.listen, 5)
        why = missing_ring(spec.router, SERVICE)
        assert why == (
            f"HAProxy has no ring rg_shop for per-request latency ({router.config_file} does not declare it): add "
            f"the section 'ring rg_shop / description \"releasegate: one line per request of shop\" / format raw / "
            f"maxlen 512 / size 1048576' and, in the frontend that uses backend shop, 'log ring@rg_shop format raw "
            f"daemon / log-format \"{LOG_FORMAT}\"' (or end its own log-format with those fields), then reload "
            "haproxy")

        async def explained() -> bool:
            assert await metrics.query(q("1.0.0", "latency_p95")) is None
            return metrics.explain(q("1.0.0", "latency_p95")) == why

        await eventually(explained, what="the reason naming the lines to add")
        await eventually(lambda: _equals(metrics.query(q("1.0.0", "error_rate")), 0.0),
                         what="error_rate from the counters: they need no ring")

        checks = {c.name: c for c in await preflight(spec, spec_path, "2.0.0", tmp_path / "state")}
        assert not checks["haproxy ring"].ok and checks["haproxy ring"].detail == (
            f"{why} (latency_p95 cannot be measured without it)")
        ctx = service.new_context(tmp_path / "state")
        with pytest.raises(UserError, match="preflight failed, nothing was started") as err:
            await service.deploy(ctx, spec_path, "2.0.0")
        assert f"haproxy ring: {why}" in str(err.value)

        # The section is in the file but the running haproxy was not reloaded: the fix is the reload.
        router.config_file.write_text(operator_config(spec.router, ring_section=True))
        checks = {c.name: c for c in await preflight(spec, spec_path, "2.0.0", tmp_path / "state")}
        assert checks["haproxy ring"].detail.startswith(
            f"HAProxy has no ring rg_shop for per-request latency, though {router.config_file} declares it: reload "
            "haproxy with that file")

        # Reloaded with the ring, but the frontend does not log to it: HAProxy's counters saw the requests, so
        # the reason is not "no traffic".
        await router.save_server_state()
        proc.reload()
        assert {c.name: c for c in await preflight(spec, spec_path, "2.0.0", tmp_path / "state")}["haproxy ring"].ok
        await send(spec.router.listen, 5)

        async def not_logged() -> str | None:
            assert await metrics.query(q("1.0.0", "latency_p95", 5.0)) is None
            why = metrics.explain(q("1.0.0", "latency_p95", 5.0)) or ""
            return why if "requests/s to 1.0.0" in why else None

        why = await eventually(not_logged, what="the reason naming the frontend's log lines")
        assert why.endswith("but logged none of them to its ring rg_shop: they take longer than that, or the "
                            "frontend does not log to the ring (it needs 'log ring@rg_shop format raw daemon / "
                            f"log-format \"{LOG_FORMAT}\"')"), why

        # Logging to the ring, but in the frontend's own format: that is said too.
        router.config_file.write_text(operator_config(spec.router, ring_section=True,
                                                      log="    log ring@rg_shop format raw daemon\n"
                                                          "    option httplog\n"))
        await router.save_server_state()
        proc.reload()
        await send(spec.router.listen, 5)

        async def wrong_format() -> bool:
            await metrics.query(q("1.0.0", "latency_p95"))
            return (metrics.explain(q("1.0.0", "latency_p95")) or "").startswith(
                "HAProxy's ring rg_shop gets lines, but none in releasegate's format for backend shop: add the "
                "section")

        await eventually(wrong_format, what="the reason naming the log-format")


async def _equals(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


async def rollout_env(tmp_path: Path, short_dir: Path, faults: str) -> tuple[Path, Haproxy, str]:
    """A spec with the default analysis rules through a private HAProxy (started on the file releasegate renders)."""
    port = free_port()
    path = write_spec(tmp_path, port, "{canary: {steps: [{weight: 50, pause: 6s}]}}", faults=faults,
                      rollback="{mode: immediate}", smoke_path="/health")  # smoke passes: only traffic tells
    router_yaml = (f'router: {{kind: haproxy, listen: "127.0.0.1:{port}", config_file: "{tmp_path / "h.cfg"}", '
                   f'stats_socket: "{short_dir / "admin.sock"}", slots: 4, drain_timeout: 5s}}')
    text = "\n".join(router_yaml if line.startswith("router:") else line
                     for line in path.read_text().splitlines() if not line.startswith("  rules:")) + "\n"
    path.write_text(text)
    spec = load_spec(path)
    assert [r.describe() for r in spec.analysis.rules] == ["error_rate > 5% for 5m", "latency_p95 > 2.5s for 5m"]
    assert isinstance(spec.router, HaproxyRouterSpec)
    router = HaproxyRouter(spec.router, SERVICE)
    assert router.ensure_config() is True
    proc = Haproxy(router.config_file, short_dir / "admin.sock", tmp_path / "haproxy.pid").start()
    return path, proc, f"http://127.0.0.1:{port}/api/items"


@pytest.mark.parametrize(("faults", "expected"), [("", "promoted"), ("2.0.0:latency=3", "rolled_back")])
async def test_the_default_rules_through_haproxy_promote_a_good_canary_and_roll_back_a_slow_one(
        tmp_path: Path, short_dir: Path, faults: str, expected: str) -> None:
    path, proc, url = await rollout_env(tmp_path, short_dir, faults)
    ctx = service.new_context(tmp_path / "state")
    try:
        st = await asyncio.wait_for(service.deploy(ctx, path, "1.0.0"), 60)
        assert st.status == "promoted", st.reason
        async with Load(url, concurrency=8) as load:
            await load.wait_for(20)
            st = await asyncio.wait_for(service.deploy(ctx, path, "2.0.0"), 90)
        assert st.status == expected, st.reason
        assert load.by_version.get("2.0.0", 0) > 0
        if expected == "rolled_back":
            assert "latency_p95" in (st.reason or ""), st.reason
            assert service.status(ctx, SERVICE)[0]["current"] == "1.0.0"
        else:
            assert service.status(ctx, SERVICE)[0]["current"] == "2.0.0"
            events = service.history(ctx, SERVICE, 1)[0]["events"]
            assert not any("cannot measure" in str(e) for e in events), events
    finally:
        await cleanup(tmp_path / "state", path)
        proc.stop()


async def test_the_reader_follows_a_reload_without_holding_the_old_process(
        tmp_path: Path, short_dir: Path, slow_and_fast: tuple[DemoApp, DemoApp]) -> None:
    """An open ``show events -w`` session keeps an old HAProxy process alive after a reload; the reader notices the
    new pid, leaves the old process (which then exits: ``Haproxy.reload`` waits for it) and follows the new ring."""
    fast, _ = slow_and_fast
    spec = make_spec(tmp_path, short_dir)
    router = HaproxyRouter(spec, SERVICE)
    router.ensure_config()
    async with running(router, short_dir, tmp_path) as (proc, metrics):
        ring = metrics.ring
        assert ring is not None
        await router.set_routes(SERVICE, Routes((VersionRoute("1.0.0", 100, (fast.backend,)),)))
        await send(spec.listen, 10)
        await eventually(lambda: ring.lines == 10, what="10 requests read from the ring")
        await router.save_server_state()
        await asyncio.to_thread(proc.reload)  # fails unless the old process exits
        await eventually(lambda: ring.sessions >= 2, what="the reader to follow the new process")
        await send(spec.listen, 10)
        await eventually(lambda: ring.lines == 20, what="10 more requests, from the new process's ring")
        window = ring.window("1.0.0", 60, metrics.wall())
        assert window is not None and window["requests"] == 20  # nothing counted twice


def test_a_replayed_ring_counts_only_what_it_had_not_counted() -> None:
    """After a session closes, the ring is read again from its start: lines up to the last one counted are
    skipped, and lines older than the reader never count (their slot may have served another version)."""
    from releasegate.providers.metrics.haproxy_ring import RingReader

    now = [1_000.0]
    reader = RingReader("/nonexistent", "rg_shop", "shop", lambda: {"v0_0": "1.0.0", "v1_0": "2.0.0"},
                        lambda: 1, lambda: "no ring", "lines", clock=lambda: now[0])
    reader._horizon = (int(now[0] * 1000), 0, 0)  # what start() sets: nothing older than the reader counts

    def line(ms: int, slot: str, req: int, took: int = 5, status: int = 200) -> bytes:
        return f"rg1 shop {slot} {status} {took} {ms} 77 {req}\n".encode()

    old = line(999_000, "v0_0", 1)  # written before the reader started
    first = line(1_000_100, "v0_0", 2) + line(1_000_200, "v1_0", 3, took=900) + b"Proxy rg_shop stopped.\n"
    data = old + first
    reader._count(data, len(data) - 1)
    assert (reader.lines, reader.skipped) == (2, 1)
    now[0] = 1_001.0
    reader._replay = True  # a new session: the whole ring again, plus what came since
    data = old + first + line(1_000_300, "v0_0", 4, status=503) + line(1_000_300, "other", 5) \
        + b"rg1 api v0_0 200 1 1000300 77 6\n"  # another backend's lines in the same ring
    reader._count(data, len(data) - 1)
    assert reader.lines == 3 and reader.unattributed == 1  # a slot no version was known for
    one = reader.window("1.0.0", 60, now[0])
    two = reader.window("2.0.0", 60, now[0])
    assert one is not None and (one["requests"], one["errors"]) == (2, 1)
    assert two is not None and two["requests"] == 1 and (two["latency_p95"] or 0) > 0.7
