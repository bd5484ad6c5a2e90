"""Release groups for tests: a release file and one small spec per member (the demo app, one instance, its own
router on a free port, short steps), and cleanup that stops every member's processes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from releasegate import service
from releasegate.providers.routers.builtin import read_router_state, router_client
from tests.support.rollouts import PY, cleanup, free_port

# The seed's six services and tiers (judgify-core-deployment-runbook.md); the gateway needs judgment and workflow.
JUDGIFY: list[tuple[str, str, list[str]]] = [
    ("api-gateway", "critical", ["judgment", "workflow"]),
    ("judgment", "critical", []),
    ("workflow", "important", []),
    ("dashboard", "important", []),
    ("action", "supporting", []),
    ("logging", "supporting", []),
]
BROKEN = "2.0.0:error_rate=1,paths=/api/items"  # 2.0.0 fails its smoke test: no user traffic ever reaches it


def member_spec(directory: Path, name: str, port: int, *, faults: str = "", post_promotion: str = "0s",
                strategy: str = "{bluegreen: {keep_previous: 1h}}") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"""\
service: {name}
platform:
  command: "{PY} -m releasegate.demoapp --port {{port}}"
  instances: 1
  env: {{FAULTS: "{faults}"}}
  stop_grace: 3s
router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}
health: {{path: /health, interval: 50ms, timeout: 5s, attempts: 100}}
smoke:
  - {{method: GET, path: /api/items, expect_status: [200], max_latency: 5s}}
strategy: {strategy}
analysis:
  interval: 200ms
  post_promotion: {post_promotion}
  rules: [{{metric: error_rate, max: 0.05, for: 1s}}]
""")
    return path


@dataclass
class GroupEnv:
    """A state dir, the members' specs and their routers' ports; ``close`` stops everything they started."""

    tmp_path: Path
    state: Path = field(init=False)
    ctx: service.Context = field(init=False)
    ports: dict[str, int] = field(default_factory=dict)
    specs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = self.tmp_path / "state"
        self.ctx = service.new_context(self.state)

    def release(self, members: list[tuple[str, str, list[str]]] = JUDGIFY, *, switch: str = "together",
                faults: dict[str, str] | None = None, name: str = "judgify-core",
                watch: dict[str, str] | None = None, **kw: str) -> Path:
        """The release file (and its members' specs, in services/); ``faults`` and ``watch`` (post_promotion) by
        member name."""
        services = self.tmp_path / "services"
        services.mkdir(exist_ok=True)
        lines = [f"release: {name}", "services:"]
        for member, tier, deps in members:
            self.ports.setdefault(member, free_port())
            more = {"post_promotion": (watch or {})[member]} if member in (watch or {}) else {}
            self.specs[member] = member_spec(services, member, self.ports[member],
                                             faults=(faults or {}).get(member, ""), **kw, **more)
            lines.append(f"  - {{spec: services/{member}.yaml, tier: {tier}, depends_on: [{', '.join(deps)}]}}")
        lines.append(f"switch: {switch}")
        path = self.tmp_path / "release.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def url(self, member: str) -> str:
        return f"http://127.0.0.1:{self.ports[member]}/api/items"

    async def routes(self, member: str) -> dict[str, int]:
        info = read_router_state(self.state, member)
        assert info is not None, f"{member}'s router is not running"
        return (await router_client(self.state, member, str(info["admin"])).get_routes(member)).weights()

    def current(self) -> dict[str, str | None]:
        """What each member's service record says runs."""
        store = self.ctx.store()
        try:
            return {m: (rec.current if (rec := store.service(m)) else None) for m in self.specs}
        finally:
            store.close()

    def close(self) -> None:
        async def stop_all() -> None:
            for spec in self.specs.values():
                await cleanup(self.state, spec)
        asyncio.run(stop_all())
