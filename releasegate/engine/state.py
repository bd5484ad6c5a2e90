"""A rollout's persisted state, the actions the engine asks for, and what performing them returned.

The state holds everything needed to compute the next action, and nothing the providers can tell us better
(which instances run, which routes apply): that is read back from them, so a resumed controller never trusts a
stale copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["running", "promoted", "rolled_back", "aborted", "failed"]
StrategyKind = Literal["initial", "canary", "bluegreen", "rolling"]
ACTIVE_STATUSES = ("running",)


class Sample(BaseModel):
    """One evaluation of one rule: the metric over [start, at]; None means no data."""

    at: float
    start: float
    value: float | None


class RollingProgress(BaseModel):
    """Instance counts in service during a rolling replacement; ``src`` is being replaced by ``dst``."""

    src: str
    dst: str
    target: int
    src_in: int
    dst_in: int = 0
    stage: Literal["shrink", "trim", "stop", "clean", "start", "health", "smoke", "route", "pause", "done"] = "start"
    batch: int = 0
    smoked: bool = False


class Pause(BaseModel):
    """The rollout waits for an operator: nothing advances on its own, but analysis goes on and a breach or a
    dead instance still rolls back. ``no_data``: a step, batch or watch had no evidence for
    ``analysis.no_data_timeout``; ``stair``: the rollback staircase holds at a stair where errors stopped."""

    kind: Literal["no_data", "stair", "judge"]
    reason: str  # what happened, with the numbers, and what `promote` and `rollback` would do
    since: float


class RolloutState(BaseModel):
    id: str
    service: str
    version: str
    previous: str | None
    strategy: StrategyKind
    status: Status = "running"
    phase: str = "prepare"
    step: int = 0
    weight: int = 0
    routed: bool = False
    phase_started: float
    created_at: float
    updated_at: float = 0.0
    last_tick: float | None = None
    samples: dict[str, list[Sample]] = Field(default_factory=dict)
    promote_requested: bool = False
    waiting: str | None = None
    reason: str | None = None
    staircase: list[int] = Field(default_factory=list)
    breach_rule: str | None = None
    breach_value: float | None = None  # the breaching metric over the window that started the rollback
    staircase_from: int | None = None  # the weight an automatic staircase started at; reaching 0 is an incident
    paused: Pause | None = None
    no_data_since: float | None = None  # start of the current run of evaluation windows without data
    rolling: RollingProgress | None = None
    outcome: Status | None = None  # decided when a rollback/abort starts or the rollout succeeds
    finished_at: float | None = None
    # What admission decided (governance), kept so a resumed controller enforces the same freezes.
    env: str = "prod"
    change: str | None = None
    actor: str = "cli"
    emergency: bool = False
    calendar_path: str | None = None
    allow_breaking_migration: bool = False
    migrations_applied: list[str] = Field(default_factory=list)  # in the database; never rolled back
    migrated: bool = False  # the migrate phase has run (a state from before start -> migrate -> health may not)
    # Health during the rollout: failed checks in a row per new instance, and since when every one is down.
    health_failures: dict[str, int] = Field(default_factory=dict)
    health_down_since: float | None = None
    # Instances of the new version found dead before any traffic reached them and restarted (engine/instances.py).
    restarts: int = 0
    # A canary on a fleet of hosts (engine/hosts.py): new-version instances started and checked so far, and whether
    # the ones a traffic increase needs are started and wait for their health check.
    grown: int = 0
    growing: bool = False
    # A member of a multi-service release with `switch: together` (engine/group.py): once health and smoke pass,
    # it holds in phase "held" with no traffic until the group releases it with `promote` (all switch at once).
    hold: bool = False
    # A baseline beside the canary (analysis.baseline, engine/baseline.py): its version name once it is started,
    # and whether its instances may run, so a resumed controller still removes them when the rollout ends.
    baseline: str | None = None
    baseline_up: bool = False
    baseline_lost: bool = False  # an instance of it died or kept failing its health check during the steps: its
    # traffic went back to the previous version
    # The sequential judge's state (analysis.judge, engine/judging.py): kept across steps and restarts, so its
    # guarantee holds over the whole rollout.
    judge: dict[str, Any] | None = None
    # Its latest verdict as recorded with the decisions (judging.shown: per metric the estimate, the interval, the
    # evidence), so `status` shows the judge's figures from the state alone (judging.figures), without the events.
    judged: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def schema_note(self) -> str:
        """Said on every rollback or abort after migrations: expand/contract means the schema stays."""
        if not self.migrations_applied:
            return ""
        return f" (the schema is not rolled back; migrations that remain applied: {', '.join(self.migrations_applied)})"


# --- actions: what the engine asks the controller to do -------------------------------------------------------


@dataclass(frozen=True)
class Start:
    version: str
    count: int


@dataclass(frozen=True)
class Health:
    """Health-check the live instances of ``version``; ``count`` of them must run (a dead one fails the check)."""

    version: str
    count: int | None = None


@dataclass(frozen=True)
class Smoke:
    version: str
    count: int | None = None


@dataclass(frozen=True)
class Share:
    """A version's weight and how many of its instances (oldest first) serve it; None = all live ones."""

    version: str
    weight: int
    instances: int | None = None


@dataclass(frozen=True)
class Route:
    shares: tuple[Share, ...]

    def weight_of(self, version: str) -> int:
        return next((s.weight for s in self.shares if s.version == version), 0)


@dataclass(frozen=True)
class Analyze:
    """Wait until ``at`` (or an operator command), then measure every rule over the last ``window`` seconds.

    ``whole`` is set on the evaluation that closes a step: each rule is then also measured over the last
    ``whole`` seconds (the step so far), and that is what decides whether the step passes.
    """

    at: float
    window: float
    version: str
    baseline: str | None
    whole: float | None = None


@dataclass(frozen=True)
class Migrate:
    """Apply pending database migrations (backup, verify, apply; restore on failure). Idempotent: applied
    migrations are recorded in the database itself."""

    allow_breaking: bool = False


@dataclass(frozen=True)
class Stop:
    """Drain and stop the instances of ``version`` beyond the oldest ``keep``."""

    version: str
    keep: int = 0


@dataclass(frozen=True)
class Hold:
    """Wait a moment (or until an operator command) with no traffic to ``version``; its ``count`` instances must
    still run (one that died is noticed as in health)."""

    version: str
    count: int


@dataclass(frozen=True)
class Finish:
    status: Status
    reason: str


Action = Start | Health | Smoke | Hold | Route | Analyze | Migrate | Stop | Finish


# --- results: what performing an action returned -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The result of Start, Health, Smoke, Route or Stop."""

    ok: bool
    reason: str = ""
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """The result of Analyze: each rule's value (by rule key), instances found dead, or an early wake-up."""

    at: float
    values: dict[str, float | None] = field(default_factory=dict)
    dead: tuple[str, ...] = ()
    interrupted: bool = False
    whole: dict[str, float | None] | None = None  # each rule over the whole step, when Analyze.whole was set
    held: str | None = None  # why traffic may not increase now (a change freeze); analysis goes on meanwhile
    # Why a rule has no value (rule key -> "no traffic to 2.0.0 in the last 10s", "prometheus unreachable: ..."),
    # for the latest window and for the whole step; a key absent here but None in values has no known reason.
    missing: dict[str, str] = field(default_factory=dict)
    whole_missing: dict[str, str] = field(default_factory=dict)
    # One health check of each live instance of the analysed version (address -> None if healthy, else why not,
    # with its answer); None when not probed.
    health: dict[str, str | None] | None = None
    # What the canary and its reference served since the controller's last look, for the judge (engine/judging.py):
    # {"canary": {requests, errors, hist}, "reference": {...}, "prometheus": [[canary, reference], ...]}; None:
    # nothing new could be read this interval (no judge, or the counts could not be read).
    judge: dict[str, Any] | None = None
    # Why the judge got no requests of the canary or its reference this interval (a count that could not be read,
    # a router that counts nothing), shown while a judged step waits; None when both sides were counted.
    judge_missing: str | None = None
    # The baseline's backends whose process is gone, or instances that failed health.failure_threshold checks in a
    # row, each with why (analysis.baseline, during steps; releasegate/observing.py).
    dead_baseline: tuple[str, ...] = ()


Result = Outcome | Observation


@dataclass(frozen=True)
class Decision:
    """A recorded reason for a state change, with the numbers that caused it (stored as an event)."""

    kind: str
    message: str
    data: dict[str, object] = field(default_factory=dict)


def describe_intent(action: Action) -> str | None:
    """A human line for actions that change the world; the controller records it before performing them."""
    if isinstance(action, Start):
        return f"start {action.count} instance(s) of {action.version}"
    if isinstance(action, Route):
        return "route " + ", ".join(f"{s.version} {s.weight}%" for s in action.shares) if action.shares else \
            "route nothing"
    if isinstance(action, Stop):
        return f"stop instances of {action.version}" + (f" beyond {action.keep}" if action.keep else "")
    return None
