"""Zero downtime with containers: failed client requests during a blue-green switch of a container under load.

A private Podman serving the Docker Engine API (tests/support/podman.py, as the tests start it), the demo app in
containers of a locally built image published on 127.0.0.1 (bridge network), two per version, and the built-in
router. 1.0.0 is deployed first; then, under continuous load from 6 keep-alive-capable httpx clients (``Load`` from
tests/support/rollouts.py, no retries), ``rounds`` blue-green switches run one after the other (1.0.0 -> 2.0.0 ->
3.0.0 ...), each through the whole rollout: start the green containers, health, smoke, switch, watch, promote. It
prints per switch the requests and failures, then the total.

    python3 bench/bench_container_bluegreen.py [rounds]   # about 10 s per round; last line:
    container blue-green failed requests: 0 of N

Exit code 0 when nothing failed, 1 when a request failed or a rollout did not promote, 2 when podman is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support, like a test run from the checkout

from releasegate import service  # noqa: E402
from tests.support.container_specs import BLUEGREEN, IMAGE, docker_spec  # noqa: E402
from tests.support.podman import PODMAN, private_podman  # noqa: E402
from tests.support.rollouts import Load, RolloutEnv  # noqa: E402

CONCURRENCY = 6


async def run(root: Path, rounds: int) -> int:
    with private_podman(root / "podman") as podman:
        base = podman.base_image(f"{IMAGE}:1.0.0")
        versions = [f"{n}.0.0" for n in range(1, rounds + 2)]
        for version in versions[1:]:
            podman.podman("tag", base, f"{IMAGE}:{version}")
        env = RolloutEnv(root / "rollout")
        env.tmp_path.mkdir()
        spec = docker_spec(env.tmp_path, podman, f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}',
                           BLUEGREEN.replace("1h", "0s"))
        env.made.append(spec)
        failed = total = 0
        try:
            first = await service.deploy(env.ctx, spec, versions[0])
            assert first.status == "promoted", first.reason
            for old, new in itertools.pairwise(versions):
                async with Load(env.url, concurrency=CONCURRENCY) as load:
                    await load.wait_for(30)
                    started = time.monotonic()
                    st = await service.deploy(env.ctx, spec, new)
                    took = time.monotonic() - started
                    await load.wait_for(30)
                print(f"{old} -> {new}: {st.status} in {took:.1f}s; {load.requests} requests "
                      f"({', '.join(f'{v}: {n}' for v, n in sorted(load.by_version.items()))}), "
                      f"{len(load.failures)} failed")
                for failure in load.failures[:5]:
                    print(f"    failed: {failure}")
                if st.status != "promoted":
                    print(f"    not promoted: {st.reason}")
                    failed += 1
                failed += len(load.failures)
                total += load.requests
        finally:
            await asyncio.to_thread(env.close)
    print(f"{rounds} switch(es), 2 containers per version, {CONCURRENCY} clients; cpus: {os.cpu_count()}")
    print(f"container blue-green failed requests: {failed} of {total}")
    return 0 if failed == 0 else 1


def main() -> int:
    if PODMAN is None:
        print("bench: podman not found; install it (apt-get install -y podman runc)", file=sys.stderr)
        return 2
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    root = Path(tempfile.mkdtemp(prefix="rg-bench-containers-"))
    try:
        return asyncio.run(run(root, rounds))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
