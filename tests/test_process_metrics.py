"""Process metrics of real local instances: numbers while they run, None when there is nothing to measure;
per instance, in the units runbooks write (cpu in percent of one core, memory in MB or percent of the limit)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from releasegate.engine import decide
from releasegate.engine.analysis import Verdict, evaluate, record_samples, rule_key
from releasegate.engine.state import Observation
from releasegate.providers.base import Instance, MetricQuery, MetricSource
from releasegate.providers.metrics import process
from releasegate.providers.metrics.cgroups import memory_limit
from releasegate.providers.metrics.process import ProcessMetrics
from releasegate.providers.platforms.local import LocalPlatform
from releasegate.spec.models import LocalPlatform as LocalSpec
from releasegate.spec.models import Spec

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


# --- per instance, in the runbooks' units ---------------------------------------------------------------------


def _rule_spec(rule: dict[str, object]) -> Spec:
    return Spec.model_validate({"service": "svc", "platform": {"command": "app --port {port}"},
                                "analysis": {"interval": "1s", "rules": [rule]}})


async def _evaluations(metrics: ProcessMetrics, spec: Spec, version: str) -> AsyncIterator[Verdict]:
    """The rule evaluated as the controller does: every interval, over the last interval, on real readings."""
    rule = spec.analysis.rules[0]
    st = decide.new_rollout("r", spec, version, None, time.monotonic())
    while True:
        value = await metrics.query(q(rule.metric, version, window=spec.analysis.interval))
        now = time.monotonic()
        st = record_samples(st, spec, Observation(at=now, values={rule_key(0, rule): value}))
        yield evaluate(spec.analysis.rules, st.samples, now, spec.analysis.interval)
        await asyncio.sleep(spec.analysis.interval)  # the evaluation pace, as analysis.interval sets it


@pytest.mark.slow
async def test_cpu_is_the_average_instance_in_percent_of_one_core(platform: LocalPlatform) -> None:
    """The ai-model runbook's "CPU > 90 %": two instances at about half a core each are a healthy version (a
    sum made them 100 % and rolled it back); one instance keeping a core busy is not."""
    spec = _rule_spec({"metric": "cpu", "max": "90%", "for": "1s"})
    halves = await platform.start("svc", "burn-half", 2)
    metrics = ProcessMetrics(platform, first_sample=0.5)
    seen = []
    async for verdict in _evaluations(metrics, spec, "burn-half"):
        assert not verdict.breached, f"two instances at about 50 % breached cpu > 90 %: {verdict.latest}"
        seen.append(verdict.latest["0:cpu"])
        if len([v for v in seen if v is not None]) >= 5:
            break
    assert all(v is None or v > 0 for v in seen)
    for inst in halves:  # so the busy loop below can have a whole core on a 2-core machine
        await platform.stop(inst, grace=1)

    [busy] = await platform.start("svc", "burn", 1)
    assert busy.pid is not None
    started, used = time.monotonic(), _cpu_seconds(busy.pid)
    async for verdict in _evaluations(metrics, spec, "burn"):
        if verdict.breached:
            break
        if time.monotonic() - started > 15:
            share = (_cpu_seconds(busy.pid) - used) / (time.monotonic() - started) * 100
            if share < 95:  # the premise failed, not the rule: other work took most of the machine's cores
                pytest.skip(f"the busy loop got only {share:.0f} % of a core: the machine is too loaded to check "
                            "that a whole core breaches cpu > 90 %")
            raise AssertionError(f"one instance busy on a whole core ({share:.0f} %) never breached cpu > 90 %: "
                                 f"{verdict.latest}")


def _cpu_seconds(pid: int) -> float:
    """The test's own reading of a process tree's cpu time, to know what it really got."""
    root = psutil.Process(pid)
    times = [p.cpu_times() for p in (root, *root.children(recursive=True))]
    return sum(t.user + t.system for t in times)


async def test_memory_is_per_instance_and_in_percent_of_the_limit(platform: LocalPlatform) -> None:
    await platform.start("svc", "serve", 1)
    await platform.start("svc", "burn", 2)
    metrics = ProcessMetrics(platform)
    one = await metrics.query(q("memory_mb", "serve"))
    two = await metrics.query(q("memory_mb", "burn"))
    assert one is not None and two is not None and one > 1
    assert two < 1.5 * one  # the same small program twice: about one instance's memory, not the sum of both

    host = await metrics.query(q("memory_percent", "burn"))
    total = psutil.virtual_memory().total
    assert host is not None and host == pytest.approx(two * process.MB * 100 / total, rel=0.3)
    # An instance without a cgroup limit is measured against the host's memory; with 4x its RSS as the whole
    # memory it may use, it is at about 25 %.
    tight = ProcessMetrics(platform, host_memory=int(4 * two * process.MB))
    value = await tight.query(q("memory_percent", "burn"))
    assert value is not None and 15 < value < 40


def _fake_cgroups(tmp_path: Path, pid: int, proc_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(proc_lines)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return proc, root


def test_the_tightest_cgroup_limit_up_the_hierarchy(tmp_path: Path) -> None:
    # cgroup v2: systemd-run -p MemoryMax=512M puts the app in a scope whose parent slice has 2G.
    proc, root = _fake_cgroups(tmp_path / "v2", 42, "0::/app.slice/run-1.scope\n", {
        "app.slice/run-1.scope/memory.max": "536870912\n", "app.slice/memory.max": "2147483648\n"})
    assert memory_limit(42, proc, root) == 512 * 1024 * 1024
    # No limit anywhere ("max") and an unreadable level: none.
    proc, root = _fake_cgroups(tmp_path / "none", 42, "0::/user.slice\n", {"user.slice/memory.max": "max\n"})
    assert memory_limit(42, proc, root) is None
    # cgroup v1 (and hybrid systems): the memory controller's hierarchy; a container sees its own cgroup at the
    # mount's root, with the host-side path not visible inside it.
    proc, root = _fake_cgroups(tmp_path / "v1", 42, "4:memory:/docker/abc\n0::/\n", {
        "memory/memory.limit_in_bytes": "268435456\n"})
    assert memory_limit(42, proc, root) == 256 * 1024 * 1024
    assert memory_limit(43, proc, root) is None  # no such process
