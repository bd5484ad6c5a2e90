"""The provider contracts: small on purpose, like Flagger's SetRoutes/GetRoutes and RunQuery -> float.

The engine never talks to a process, a proxy or a metrics store; the controller does, through these. A provider
that cannot answer raises ``ProviderError`` (or returns ``None`` for a metric): it never invents a value.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Instance:
    """One running copy of one version, reachable at ``host:port``."""

    service: str
    version: str
    id: str
    host: str
    port: int
    pid: int | None = None
    log: str | None = None
    started_at: float = 0.0
    ref: str | None = None  # the platform's own name for it: a container's name, "host:pid" on an SSH host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DeadInstance:
    """An instance that ended without ``stop()``. Platforms keep reporting it (``dead_instances``) until ``stop``
    is called for it, so a controller that crashes between noticing and acting loses nothing.

    ``exit_code`` is None when the platform cannot know it (a local process we were not the parent of); a negative
    one is the signal that killed it. ``cause`` is what the platform knows beyond the code (``was OOM-killed``)."""

    instance: Instance
    exit_code: int | None
    log_tail: str
    exited_at: float
    cause: str | None = None

    def describe(self) -> str:
        i = self.instance
        if self.cause is not None:
            how = self.cause
        elif self.exit_code is None:
            how = "exited"
        elif self.exit_code < 0:
            how = f"was killed by {_signal_name(-self.exit_code)}"
        else:
            how = f"exited with code {self.exit_code}"
        tail = f": {self.log_tail}" if self.log_tail else ""
        where = f", pid {i.pid}" if i.pid else f", {i.ref}" if i.ref else ""
        log = f" (log: {i.log})" if i.log else ""
        return f"instance {i.service} {i.version} {i.id} ({i.address}{where}) {how}{tail}{log}"

    def evidence(self) -> dict[str, object]:
        """What it left, for the decision that restarts it or gives up (stored with the rollout's events)."""
        i = self.instance
        return {"instance": i.id, "address": i.address, "pid": i.pid, "ref": i.ref, "exit_code": self.exit_code,
                "log_tail": self.log_tail, "log": i.log, "message": self.describe()}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class VersionRoute:
    """A version's share of traffic and the backends that serve it."""

    version: str
    weight: int
    backends: tuple[str, ...] = ()


@dataclass(frozen=True)
class Routes:
    """What the data plane applies for one service.

    Order matters: a sticky user's bucket (0-99) falls into the versions' weight ranges in this order, so the new
    version goes first and a user who landed on the canary at 5 % stays on it at 25 % and 50 %.
    """

    versions: tuple[VersionRoute, ...] = ()
    # (rollout id, lease token) of the controller that sets these routes: a router that keeps fences (the built-in
    # one) refuses a lower token for the same rollout, so a controller that lost its lease cannot move traffic.
    fence: tuple[str, int] | None = field(default=None, compare=False)

    def weight_of(self, version: str) -> int:
        return next((v.weight for v in self.versions if v.version == version), 0)

    def weights(self) -> dict[str, int]:
        return {v.version: v.weight for v in self.versions}

    def to_json(self) -> dict[str, object]:
        return {"versions": [{"version": v.version, "weight": v.weight, "backends": list(v.backends)}
                             for v in self.versions]}

    @classmethod
    def from_json(cls, data: object) -> Routes:
        """Parse the router's JSON form; raises ValueError naming the bad field."""
        if not isinstance(data, dict) or not isinstance(data.get("versions"), list):
            raise ValueError("routes must be an object with a 'versions' list")
        out = []
        for i, item in enumerate(data["versions"]):
            if not isinstance(item, dict):
                raise ValueError(f"versions[{i}] must be an object")
            version, weight, backends = item.get("version"), item.get("weight"), item.get("backends", [])
            if not isinstance(version, str) or not version:
                raise ValueError(f"versions[{i}].version must be a non-empty string")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise ValueError(f"versions[{i}].weight must be an integer 0-100")
            if not isinstance(backends, list) or not all(isinstance(b, str) and ":" in b for b in backends):
                raise ValueError(f"versions[{i}].backends must be a list of 'host:port' strings")
            out.append(VersionRoute(version, weight, tuple(backends)))
        if sum(v.weight for v in out) > 100:
            raise ValueError("the weights add up to more than 100")
        return cls(tuple(out))


@dataclass(frozen=True)
class MetricQuery:
    """One number about one version over the last ``window`` seconds."""

    service: str
    version: str
    metric: str
    window: float
    baseline_version: str | None = None
    query: str | None = None  # provider-specific text, e.g. PromQL (issue 4)


class AtLeast(float):
    """A metric value known only as a lower bound: the true value is this or more.

    The built-in router returns one for a latency window in which no request completed but some have been
    waiting longer than the window: they are slow, but how slow is not known yet. The engine takes it as
    evidence only where a lower bound decides (above a rule's max); otherwise it is no data, so an unfinished
    request can make a rule breach but can never make a step pass."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AtLeast({float(self)!r})"


@dataclass(frozen=True)
class Event:
    """Something a person may want to hear about: started, step, paused, promoted, rolled back, refused."""

    service: str
    kind: str
    message: str
    data: dict[str, object] = field(default_factory=dict)


class Platform(Protocol):
    """Runs versions: local processes, containers through a Docker Engine API, SSH hosts; Kubernetes later."""

    async def start(self, service: str, version: str, count: int) -> list[Instance]:
        """Ensure ``count`` live instances of ``version``; idempotent (returns existing live ones first)."""
        ...

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM (or the platform's equivalent), then force after ``grace`` seconds; idempotent."""
        ...

    async def instances(self, service: str) -> list[Instance]:
        """Live instances of every version, read back from the platform itself (after a restart too)."""
        ...

    async def alive(self, instance: Instance) -> bool:
        ...


class ManagedPlatform(Platform, Protocol):
    """What the rest of releasegate (status, down, gc, preflight, a resumed controller) asks every platform beyond
    the controller's four calls. ``releasegate.providers.platforms.make_platform`` builds one for a spec."""

    def running(self, service: str) -> list[Instance]:
        """``instances()`` for callers without an event loop (``status``); may block briefly on the platform, and
        raises ProviderError when the platform cannot be reached (status then says so instead of guessing)."""
        ...

    async def reconcile(self, service: str) -> list[str]:
        """Match what the platform records with what really runs (adopt the unrecorded, stop duplicates); one line
        per thing done. A platform whose records are the truth (container labels) returns []."""
        ...

    async def dead_instances(self, service: str) -> list[DeadInstance]:
        """Instances that ended without ``stop()``, oldest first, until ``stop`` is called for them."""
        ...

    async def exit_info(self, instance: Instance) -> DeadInstance | None:
        """Why ``instance`` no longer runs; None while it runs or when nothing is known about it."""
        ...

    async def preflight(self, service: str, version: str) -> list[tuple[str, bool, str]]:
        """(check name, ok, detail) for ``preflight``/``deploy``: can ``version`` start here? (command found, image
        present or pullable, every host reachable with a trusted key). Starts nothing."""
        ...


class Router(Protocol):
    """Moves traffic: the built-in router today; nginx, HAProxy and Kubernetes later."""

    async def set_routes(self, service: str, routes: Routes) -> None:
        ...

    async def get_routes(self, service: str) -> Routes:
        """What the data plane really applies now, not what was last asked for."""
        ...

    async def inflight(self, service: str, backend: str) -> int:
        """Requests still in progress on ``backend``; the controller drains to 0 before stopping it."""
        ...


@runtime_checkable
class MetricSource(Protocol):
    async def query(self, q: MetricQuery) -> float | None:
        """The value, or None when there is no data (never 0 for 'no data'); an ``AtLeast`` when only a lower
        bound is known."""
        ...


class Notifier(Protocol):
    async def post(self, event: Event) -> None:
        ...
