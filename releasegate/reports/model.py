"""The report of one rollout, as data: built from what the store, the governance store and the audit log recorded.

Why a model and not text: the same report is printed as Markdown, served as HTML to the dashboard and dumped as
JSON for tools, and a number that is not recorded must stay "not recorded" (None) in all three, never a 0 the
renderer made up. Nothing here starts a provider or asks a router: a report can be written long after the fact,
on a machine where nothing runs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

Stage = str
"""The PrivateTrade runbook's phases: preflight, deployment, traffic, monitoring, rollback, finish, cleanup."""


class Entry(BaseModel):
    """One line of the timeline: when (absolute and relative to the rollout's start, T-0), what, and the numbers."""

    at: float
    t: str = Field(description="Relative to the rollout's start: T-2m10s, T+0s, T+1m05s.")
    stage: Stage
    kind: str
    message: str
    actor: str | None = None
    weight: int | None = Field(None, description="The new version's traffic share after this step, in percent.")
    values: dict[str, str] = Field(default_factory=dict, description="Metric -> value as shown (error_rate: 50%).")


class VersionTraffic(BaseModel):
    """Requests and 5xx answers one version served during the rollout, as the router counted them."""

    version: str
    requests: int
    errors: int


class Approval(BaseModel):
    user: str
    kind: str  # approve or reject
    env: str
    stage: str
    at: float
    reason: str | None = None
    void: str | None = None  # why it no longer counts (a new digest, withdrawn)


class Trigger(BaseModel):
    """What started the rollback: a rule and the value that broke it, or a health failure, or a person."""

    at: float
    t: str
    message: str
    rule: str | None = None  # the rule as written: "error_rate > 5% for 2s"
    metric: str | None = None
    value: float | None = None  # the breaching value over the rule's window (the mean, as the engine compares)
    shown: str | None = None  # the value as people read it: "48.1%"
    weight: int | None = None  # the new version's share when it triggered
    actor: str | None = None  # who asked, for an operator's rollback or abort


class Impact(BaseModel):
    """How many requests reached the bad version, how many failed, for how long. None: not recorded."""

    requests: int | None = None
    errors: int | None = None
    error_rate: float | None = None
    exposed_from: float | None = None  # first traffic to the new version
    exposed_until: float | None = None  # back at 0 % (or the rollout's end)
    exposed_seconds: float | None = None
    peak_weight: int = 0
    note: str = ""  # why a number is missing, or what the counts cover


class PostMortem(BaseModel):
    """The MegaCity post-mortem draft: filled where the records know, left to people where they do not."""

    title: str
    summary: str
    impact: Impact
    trigger: Trigger | None
    timeline: list[Entry]
    root_cause: str = "To be written: why did this version fail? (the trigger above is the symptom, not the cause)"
    action_items: list[str] = Field(default_factory=lambda: [
        "To be written: what prevents this from happening again (owner, due date)",
        "To be written: would an earlier or tighter analysis rule have caught it sooner?"])


class Report(BaseModel):
    """A deployment report (docs/reports.md): one rollout from preflight to the retirement of the previous version."""

    id: str
    service: str
    release: str
    version: str
    previous: str | None
    strategy: str
    status: str
    reason: str | None
    env: str
    change: str | None
    actor: str
    emergency: bool
    started_at: float
    finished_at: float | None
    duration: str | None
    commit: str | None = None
    digest: str | None = None
    author: str | None = None
    steps: list[str] = Field(default_factory=list, description="The strategy's planned traffic steps.")
    rules: list[str] = Field(default_factory=list, description="The analysis rules as written.")
    approvals: list[Approval] = Field(default_factory=list)
    freezes: list[str] = Field(default_factory=list, description="Change freezes and windows that applied.")
    timeline: list[Entry]
    traffic: list[VersionTraffic] | None = Field(None, description="None: not recorded (an older rollout, or a "
                                                                         "router that cannot count).")
    traffic_note: str = ""
    evaluations: int = Field(0, description="Analysis evaluations recorded (each tick; the timeline keeps the "
                                            "ones that decided something).")
    postmortem: PostMortem | None = None

    @property
    def outcome(self) -> str:
        """The status and its reason, without saying the status twice (a reason often starts with it)."""
        status = self.status.replace("_", " ")
        if not self.reason:
            return status
        return self.reason if self.reason.lower().startswith(f"{status}:") else f"{status}: {self.reason}"
