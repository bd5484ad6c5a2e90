"""Several real ``releasegate server`` processes on one store, with services of real local processes behind real
built-in routers: the failover test's and bench's fleet (tests/test_server_failover.py, bench/bench_failover.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from releasegate.providers.routers.builtin import read_router_state, router_client
from releasegate.store.db import forget_store, use_store
from releasegate.store.sqlite import Store
from tests.support.rollouts import PY, cleanup
from tests.support.server import ServerProc
from tests.support.wait import eventually


def spec_text(service: str, port: int, steps: str) -> str:
    return f"""\
service: {service}
platform:
  command: "{PY} -m releasegate.demoapp --port {{port}}"
  instances: 1
  env: {{DEMO_CONTROL: "1"}}
  stop_grace: 2s
router: {{listen: "127.0.0.1:{port}", drain_timeout: 1s}}
health: {{path: /health, interval: 200ms, timeout: 5s, attempts: 100, failure_threshold: 2}}
smoke:
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 10s, timeout: 30s}}
strategy: {{canary: {{steps: {steps}, keep_previous: 1h}}}}
analysis: {{interval: 1s, post_promotion: 1s, rules: []}}
"""


@dataclass
class Fleet:
    """The servers, the services' specs, and what the test saw of the routers."""

    root: Path
    state: Path
    servers: list[ServerProc]
    specs: dict[str, Path] = field(default_factory=dict)
    token: str = ""
    admins: dict[str, str] = field(default_factory=dict)
    store: Store | None = None
    ports: set[int] = field(default_factory=set)
    url: str | None = None  # the servers' --store (a PostgreSQL database); None: the state dir's SQLite

    def service(self, name: str, steps: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(spec_text(name, self.port(), steps))
        self.specs[name] = path
        return path

    def port(self) -> int:
        """A free port below the ephemeral range, for a router or a server: the instances' ports (bound to 0 by the
        platform) come from that range, and with thirty routers starting among sixty instances (and servers
        restarted on their port) one of them took a port meant for a router."""
        while True:
            port = random.randrange(20000, 32000)
            if port in self.ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            self.ports.add(port)
            return port

    async def deploy(self, server: ServerProc, name: str, version: str) -> str:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {self.token}"},
                                     timeout=60) as c:
            answer = await c.post("/api/v1/rollouts", json={"spec_path": f"{name}.yaml", "version": version})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def look(self) -> Store:
        """One connection for all the test's reads: opening a store takes the write lock (its schema), which
        the servers need."""
        if self.store is None:
            use_store(self.url)
            self.store = Store(self.state)
        return self.store

    def env(self) -> dict[str, str]:
        """The environment for a CLI command on the fleet's store."""
        env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_STORE"}
        return {**env, "RELEASEGATE_STORE": self.url} if self.url else env

    def rollout(self, rollout_id: str) -> Any:
        return self.look().rollout(rollout_id)

    def events(self, name: str, rollout_id: str) -> list[dict[str, Any]]:
        return self.look().events(name, rollout_id)

    async def routes(self, name: str) -> dict[str, tuple[int, tuple[str, ...]]]:
        """What ``name``'s router routes (its admin address looked up once: the lookup blocks)."""
        if name not in self.admins:
            info = read_router_state(self.state, name)
            assert info is not None, f"the router of {name} is not running"
            self.admins[name] = str(info["admin"])
        got = await router_client(self.state, name, self.admins[name]).get_routes(name)
        return {v.version: (v.weight, v.backends) for v in got.versions}

    async def ended(self, rollout_id: str, within: float) -> str:
        def over() -> str | None:
            rec = self.rollout(rollout_id)
            return None if rec is None or rec.state.active else str(rec.state.status)
        found: str = await eventually(over, within, f"rollout {rollout_id} to end", every=0.2)
        return found


@contextmanager
def fleet_of(root: Path, servers: int = 3, ttl: str = "3s", url: str | None = None) -> Iterator[Fleet]:
    """``servers`` servers on one state dir under ``root`` (``--lease-ttl ttl``), on the store at ``url`` (a
    PostgreSQL database; None: the state dir's SQLite), stopped (and every process the services started) at the
    end. The servers share the state dir for the routers' and instances' files, as servers on one host do."""
    state = root / "state"
    made = Fleet(root, state, [], url=url)
    try:
        made.servers += [ServerProc(state, root, port=made.port(), extra=("--lease-ttl", ttl), store=url)
                         for _ in range(servers)]
        for server in made.servers:
            server.start()
        made.token = made.servers[0].token("dora", "deployer")
        yield made
    finally:
        for server in made.servers:
            if server.proc is not None and server.proc.poll() is None:
                os.kill(server.proc.pid, signal.SIGCONT)  # one left stopped by a test that failed
            server.stop()
        if made.store is not None:
            made.store.close()
        forget_store()
        for path in made.specs.values():
            asyncio.run(cleanup(state, path))
