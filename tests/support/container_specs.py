"""Specs and helpers for the container platform's end-to-end tests (tests/test_platform_docker_rollouts.py and
tests/test_platform_docker_operations.py) and bench/bench_container_bluegreen.py: the demo shop as containers of a
locally built image on a private Podman (tests/support/podman.py), and a look at the engine's labelled containers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker

from releasegate import service
from releasegate.engine.state import RolloutState
from releasegate.providers.platforms import container_engine as engine
from tests.support.podman import DEMOAPP, HOST_VOLUMES, PYTHON, PrivatePodman, private_podman
from tests.support.registry import LocalRegistry
from tests.support.rollouts import RolloutEnv, free_port

IMAGE = "localhost/rg-demo"
BLUEGREEN = "{bluegreen: {keep_previous: 1h}}"
CANARY = "{canary: {steps: [{weight: 20, pause: 500ms}, {weight: 50, pause: 500ms}]}}"


@contextlib.contextmanager
def engine_with_images(root: Path, versions: tuple[str, ...] = ("1.0.0", "2.0.0", "3.0.0")) -> Iterator[PrivatePodman]:
    """A private Podman with the demo image tagged as each version, and a port it trusts for ``registry``."""
    with private_podman(root, [f"127.0.0.1:{free_port()}"]) as pm:
        base = pm.base_image(f"{IMAGE}:{versions[0]}")
        for version in versions[1:]:
            pm.podman("tag", base, f"{IMAGE}:{version}")
        yield pm


@contextlib.contextmanager
def registry_of(podman: PrivatePodman) -> Iterator[str]:
    """A registry with shop:1.0.0 (the base image), on the port the engine trusts over plain HTTP."""
    layout = podman.root / "layout"
    podman.podman("push", f"{IMAGE}:1.0.0", f"oci:{layout}:1.0.0")
    with LocalRegistry(layout, int(podman.insecure_registries[0].rsplit(":", 1)[1])) as reg:
        yield reg.address


def builtin(env: RolloutEnv) -> str:
    return f'router: {{listen: "127.0.0.1:{env.port}", drain_timeout: 5s}}'


def docker_spec(directory: Path, podman: PrivatePodman, router: str, strategy: str, *, faults: str = "",
                keep: str = "") -> Path:
    """The demo shop as containers: two per version, the demo app (mounted from this checkout) on port 8000."""
    volumes = ", ".join(f'"{v}"' for v in [*HOST_VOLUMES, f"{DEMOAPP}:/app/demoapp.py:ro"])
    args = ", ".join(f'"{a}"' for a in [PYTHON, "/app/demoapp.py", "--host", "0.0.0.0", "--port", "8000"])
    text = f"""\
service: shop
platform:
  kind: docker
  image: "{IMAGE}:{{version}}"
  port: 8000
  instances: 2
  engine: "{podman.url}"
  pull: never
  volumes: [{volumes}]
  args: [{args}]
  env: {{FAULTS: "{faults}"}}
  stop_grace: 3s
{router}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 50}}
smoke:
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 1s}}
strategy: {strategy.replace("1h", keep) if keep else strategy}
analysis:
  interval: 500ms
  post_promotion: 1s
  rules: [{{metric: error_rate, max: 0.05, for: 1s}}]
rollback: {{staircase: [10, 0], step_wait: 1s}}
"""
    path = directory / "shop.yaml"
    path.write_text(text)
    return path


async def deploy(env: RolloutEnv, spec: Path, version: str) -> RolloutState:
    return await asyncio.wait_for(service.deploy(env.ctx, spec, version), 90)


def labelled(podman: PrivatePodman, state: Path) -> dict[str, str]:
    """Running containers of this state dir: name -> version."""
    client = docker.DockerClient(base_url=podman.url)
    found = client.containers.list(filters={"label": f"{engine.STATE_DIR}={state.resolve()}"})
    return {str(c.name): c.labels[engine.VERSION] for c in found}


def rg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"})
