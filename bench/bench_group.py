#!/usr/bin/env python3
"""Benchmark: a six-service release as one group versus six single deploys in a row.

The same six specs (examples/judgify-release/services/, each on a free router port): the demo app, one instance
per version, blue-green, health polled every 200 ms, one smoke request, no post-promotion watch. Each round first
deploys ``N.0.0`` everywhere (setup, not timed), then times from the start of the deploy until every service
serves the next version at 100 %: once as the release group (``switch: together``: all start, pass health and
smoke and hold in parallel, then switch), once as six ``deploy`` calls one after the other. Rounds alternate the
two, best of each is reported (a shared machine only ever slows a run down).

The last line is the key figure: ``group/sequential time ratio: X`` (below 1: the group is faster).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from releasegate import group_service, service  # noqa: E402
from releasegate.teardown import take_down  # noqa: E402
from tests.support.rollouts import free_port  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
EXAMPLE = ROOT / "examples" / "judgify-release"


def copy_example(tmp: Path) -> tuple[Path, list[str]]:
    """The example release with each router on a free port; the services' names."""
    (tmp / "services").mkdir()
    names = []
    for spec in sorted((EXAMPLE / "services").glob("*.yaml")):
        text = re.sub(r'listen: "127\.0\.0\.1:\d+"', f'listen: "127.0.0.1:{free_port()}"', spec.read_text())
        (tmp / "services" / spec.name).write_text(text)
        names.append(spec.stem)
    release = tmp / "release.yaml"
    release.write_text((EXAMPLE / "release.yaml").read_text())
    return release, names


async def timed_group(ctx: service.Context, release: Path, version: str) -> float:
    start = time.monotonic()
    gs = await group_service.deploy(ctx, release, [version])
    took = time.monotonic() - start
    assert gs.status == "promoted", gs.reason
    return took


async def timed_sequential(ctx: service.Context, release: Path, names: list[str], version: str) -> float:
    start = time.monotonic()
    for name in names:
        st = await service.deploy(ctx, release.parent / "services" / f"{name}.yaml", version)
        assert st.status == "promoted", st.reason
    return time.monotonic() - start


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-group-") as tmp_name:
        tmp = Path(tmp_name)
        release, names = copy_example(tmp)
        ctx = service.new_context(tmp / "state")
        group_times: list[float] = []
        seq_times: list[float] = []
        try:
            await timed_group(ctx, release, "1.0.0")  # first deploy: setup
            version = 1
            for r in range(ROUNDS):
                version += 1
                group_times.append(await timed_group(ctx, release, f"{version}.0.0"))
                version += 1
                seq_times.append(await timed_sequential(ctx, release, names, f"{version}.0.0"))
                print(f"round {r + 1}: group {group_times[-1]:.2f} s, six in a row {seq_times[-1]:.2f} s",
                      flush=True)
        finally:
            for name in names:
                await take_down(ctx, name, force=True)
        g, s = min(group_times), min(seq_times)
        print(f"best: group {g:.2f} s, six single deploys in a row {s:.2f} s ({len(names)} services)")
        print(f"group/sequential time ratio: {g / s:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
