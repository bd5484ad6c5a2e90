"""Process metrics of real local instances: numbers while they run, None when there is nothing to measure."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from releasegate.providers.base import Instance, MetricQuery, MetricSource
from releasegate.providers.metrics import process
from releasegate.providers.metrics.process import ProcessMetrics
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.spec.models import LocalPlatform as LocalSpec

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "support" / "apps.py"
PY = sys.executable


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[LocalPlatform]:
    spec = LocalSpec(command=f"{PY} {APPS} {{version}} --port {{port}} --pidfile {tmp_path}/child.pid")
    platform = LocalPlatform(spec, tmp_path / "state", tmp_path)
    yield platform
    for inst in await platform.instances("svc"):
        await platform.stop(inst, grace=1)


def q(metric: str, version: str = "burn", window: float = 60.0) -> MetricQuery:
    return MetricQuery("svc", version, metric, window)


async def test_cpu_and_memory_of_a_running_version(platform: LocalPlatform) -> None:
    await platform.start("svc", "burn", 1)
    metrics = ProcessMetrics(platform, first_sample=0.2)
    assert isinstance(metrics, MetricSource)

    cpu = await metrics.query(q("cpu"))
    assert cpu is not None and cpu > 0  # a busy loop accrues cpu time in any 0.2 s
    memory = await metrics.query(q("memory_mb"))
    assert memory is not None and memory > 1

    again = await metrics.query(q("cpu"))  # from the kept history, without another first sample
    assert again is not None and again >= 0


async def test_instances_are_summed_with_their_children(platform: LocalPlatform, tmp_path: Path) -> None:
    [inst] = await platform.start("svc", "spawn-child", 1)
    child = await _eventually_read_pid(tmp_path / "child.pid")
    assert child in {pid for pid, _ in process._processes([inst])}

    metrics = ProcessMetrics(platform, first_sample=0.05)
    assert (await metrics.query(q("memory_mb", "spawn-child"))) is not None
    assert (await metrics.query(q("cpu", "spawn-child"))) is not None


def _read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def _eventually_read_pid(path: Path) -> int:
    deadline = time.monotonic() + 10
    while (pid := _read_pid(path)) is None:
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)
    return pid


async def test_a_callable_source_works_too(platform: LocalPlatform) -> None:
    [inst] = await platform.start("svc", "burn", 1)
    asked: list[tuple[str, str]] = []

    async def instances_of(service: str, version: str) -> list[Instance]:
        asked.append((service, version))
        return [inst]

    assert (await ProcessMetrics(instances_of).query(q("memory_mb"))) is not None
    assert asked == [("svc", "burn")]


async def test_no_instances_means_no_data(platform: LocalPlatform) -> None:
    metrics = ProcessMetrics(platform)
    assert await metrics.query(q("cpu", "9.9.9")) is None
    assert await metrics.query(q("memory_mb", "9.9.9")) is None

    async def none(service: str, version: str) -> list[Instance]:
        return []

    assert await ProcessMetrics(none).query(q("cpu")) is None
    gone = Instance("svc", "burn", "0001", "127.0.0.1", 1, pid=2**22 + 12345)  # above any pid_max default

    async def dead(service: str, version: str) -> list[Instance]:
        return [gone]

    assert await ProcessMetrics(dead).query(q("memory_mb")) is None


async def test_other_metrics_have_no_data_here(platform: LocalPlatform) -> None:
    await platform.start("svc", "burn", 1)
    assert await ProcessMetrics(platform).query(q("error_rate")) is None
