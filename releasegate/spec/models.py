"""The release spec: what a runbook says, as validated data with the seeds' numbers as defaults.

Every default here is a number from the seed runbooks (shared/reference/seeds): canary 5 -> 25 -> 50 % with 10/10/30
minute watches, health polled 60 times 5 s apart, smoke requests under 500 ms, roll back when the error rate is above
5 % or p95 above 2.5 s for 5 minutes, staircase 100 -> 50 -> 10 -> 0 %, watch 30 minutes after promotion, keep the
previous version 24 hours. docs/spec-reference.md is generated from these models and a test keeps it in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from releasegate.durations import duration_text
from releasegate.spec.common import (
    DURATION_JSON_SCHEMA,
    DURATION_PATTERN,
    LATENCY_METRICS,
    METRICS,
    PROCESS_METRICS,
    ROUTER_METRICS,
    SERVICE_NAME,
    THRESHOLD_JSON_SCHEMA,
    THRESHOLD_PATTERN,
    VERSION_NAME,
    Duration,
    HostPort,
    Threshold,
    _duration,
    host_port,
)
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError
from releasegate.spec.migrations import Migrations
from releasegate.spec.notify import NotifyTarget
from releasegate.spec.routers_haproxy import HaproxyRouter
from releasegate.spec.routers_nginx import NginxRouter
from releasegate.spec.sources import MetricSources

__all__ = ["DURATION_JSON_SCHEMA", "DURATION_PATTERN", "LATENCY_METRICS", "METRICS", "PROCESS_METRICS",
           "ROUTER_METRICS", "SERVICE_NAME", "THRESHOLD_JSON_SCHEMA", "THRESHOLD_PATTERN", "VERSION_NAME",
           "Duration", "Threshold"]

_host_port = host_port


# --- platform -----------------------------------------------------------------------------------------------------


class LocalPlatform(_Model):
    """Each version runs as local processes on free loopback ports; they outlive the controller."""

    kind: Literal["local"] = Field("local", description="Which platform runs the versions.")
    command: str = Field(description="Shell command; {port} and {version} are substituted. Must contain {port}.")
    instances: int = Field(1, ge=1, le=64, description="Processes per version.")
    cwd: str = Field(".", description="Working directory, relative to the spec file; {version} is substituted.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment; PORT and "
                                "RELEASEGATE_VERSION are always set.")
    stop_grace: Duration = Field(10.0, description="SIGTERM, then SIGKILL after this long.")

    @field_validator("command")
    @classmethod
    def _needs_port(cls, v: str) -> str:
        if "{port}" not in v:
            raise ValueError("the command must contain {port} so each instance can listen on its own port, "
                             "e.g. 'python3 app.py --port {port}'")
        try:
            v.format(port=0, version="v")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{port}} and {{version}} may be substituted in the command ({exc}); "
                             "write a literal brace as {{ or }}") from None
        return v


Platform = LocalPlatform


# --- router -------------------------------------------------------------------------------------------------------


class BuiltinRouter(_Model):
    """releasegate's own reverse proxy, a separate process so traffic survives controller restarts."""

    kind: Literal["builtin"] = Field("builtin", description="Which router splits the traffic.")
    listen: HostPort = Field("127.0.0.1:8080", description="Where users connect, HOST:PORT.")
    admin: str | None = Field(None, description="Admin API address, loopback only; default: a free port.")
    sticky: Literal["cookie", "header", "none"] = Field(
        "cookie", description="Keep a user on one version during a split: by cookie, by a header's value, or not.")
    sticky_cookie: str = Field("rg_bucket", description="Cookie that holds the user's traffic bucket.")
    sticky_header: str = Field("X-User-Id", description="Header whose value picks the bucket when sticky: header.")
    drain_timeout: Duration = Field(30.0, description="How long a removed backend may finish in-flight requests.")

    @field_validator("admin")
    @classmethod
    def _admin(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v, loopback_only=True)


def _router_kind(value: Any) -> str:
    """``kind`` may be left out: the built-in router is the default."""
    kind = value.get("kind", "builtin") if isinstance(value, dict) else getattr(value, "kind", "builtin")
    return kind if isinstance(kind, str) else "?"


Router = Annotated[
    Annotated[BuiltinRouter, Tag("builtin")] | Annotated[NginxRouter, Tag("nginx")]
    | Annotated[HaproxyRouter, Tag("haproxy")],
    Discriminator(_router_kind, custom_error_type="router_kind",
                  custom_error_message="router kind must be builtin, nginx or haproxy")]


# --- checks -------------------------------------------------------------------------------------------------------


class Health(_Model):
    """Polled on each new instance directly (not through the router) until it answers or attempts run out."""

    path: str = Field("/health", description="HTTP path polled on each instance.")
    interval: Duration = Field(5.0, description="Time between attempts.")
    timeout: Duration = Field(2.0, description="Per-request timeout.")
    attempts: int = Field(60, ge=1, description="Attempts before the instance counts as unhealthy.")
    expect_status: list[int] = Field(default_factory=list, description="Accepted statuses; empty means any 2xx.")
    expect: dict[str, Any] = Field(default_factory=dict,
                                   description="JSON subset the body must contain, e.g. {status: healthy}.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"the path must start with '/', e.g. '/{v}'")
        return v


class SmokeTest(_Model):
    """One request sent straight to every new instance before any user traffic reaches it."""

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = Field(
        "GET", description="HTTP method; lower case is accepted.")
    path: str = Field("/", description="HTTP path requested on each new instance.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    body: str | None = Field(None, description="Request body, sent as is.")
    expect_status: list[int] = Field(default_factory=lambda: [200],
                                     description="Accepted statuses; empty means any 2xx.")
    max_latency: Duration = Field(0.5, description="Slower answers fail the test.")
    expect_body: str | None = Field(None, description="Text the body must contain.")
    expect_json: dict[str, Any] = Field(default_factory=dict, description="JSON subset the body must contain.")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"the path must start with '/', e.g. '/{v}'")
        return v


# --- strategy -----------------------------------------------------------------------------------------------------


class Step(_Model):
    """One traffic split: the new version gets `weight` percent, then analysis runs for `pause`."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic on the new version during this step.")
    pause: Duration | None = Field(None, description="Analysis time at this weight; omitted: wait for "
                                   "`releasegate promote`.")


def _increasing(steps: list[Step]) -> list[Step]:
    for i in range(1, len(steps)):
        if steps[i].weight <= steps[i - 1].weight:
            raise LocatedValueError(f"step weights must increase: step {i + 1} ({steps[i].weight}%) is not "
                                    f"above step {i} ({steps[i - 1].weight}%)", at=(i, "weight"))
    return steps


def _seed_canary_steps() -> list[Step]:
    return [Step.model_validate({"weight": w, "pause": p}) for w, p in ((5, "10m"), (25, "10m"), (50, "30m"))]


class Canary(_Model):
    """Shift a growing share of traffic to the new version, analysing each step before the next."""

    steps: list[Step] = Field(default_factory=_seed_canary_steps, description="Weights and pauses before 100 %.")
    keep_previous: Duration = Field(86400.0, description="Keep the previous version up this long after promotion.")

    _check = field_validator("steps")(classmethod(lambda cls, v: _increasing(v)))


class BlueGreen(_Model):
    """Bring up the full new version beside the old, then switch traffic (optionally through a short ramp)."""

    ramp: list[Step] = Field(default_factory=list, description="Optional steps before the switch to 100 %.")
    keep_previous: Duration = Field(86400.0, description="Keep blue up this long; `rollback` switches back.")

    _check = field_validator("ramp")(classmethod(lambda cls, v: _increasing(v)))


class Rolling(_Model):
    """Replace instances in batches; traffic follows the instance counts."""

    max_unavailable: int = Field(1, ge=0, description="Instances that may be out of service at once.")
    max_surge: int = Field(1, ge=0, description="Extra instances that may run above the target count.")
    pause: Duration = Field(0.0, description="Analysis time after each batch.")

    @model_validator(mode="after")
    def _progress(self) -> Rolling:
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise LocatedValueError("max_unavailable and max_surge cannot both be 0: the rollout could never "
                                    "replace an instance; set max_surge: 1", at=("max_surge",))
        return self


class Strategy(_Model):
    """Exactly one of canary, bluegreen or rolling."""

    canary: Canary | None = Field(None, description="Progressive traffic shift in steps.")
    bluegreen: BlueGreen | None = Field(None, description="Full new version beside the old, then a switch.")
    rolling: Rolling | None = Field(None, description="Instance-by-instance replacement.")

    @model_validator(mode="before")
    @classmethod
    def _empty_choice(cls, data: object) -> object:
        """`canary:` with nothing after it reads as null, which would otherwise look like no strategy."""
        names = ("canary", "bluegreen", "rolling")
        if isinstance(data, dict) and all(data.get(n) is None for n in names):
            for name in names:
                if name in data:
                    raise LocatedValueError(
                        f"{name} has no settings; write '{name}: {{}}' to use its defaults", at=(name,))
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Strategy:
        chosen = [n for n in ("canary", "bluegreen", "rolling") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise LocatedValueError("choose exactly one strategy: canary, bluegreen or rolling"
                                    + (f" (found {', '.join(chosen)})" if chosen else ""),
                                    at=(chosen[1],) if len(chosen) > 1 else ())
        return self

    @property
    def kind(self) -> Literal["canary", "bluegreen", "rolling"]:
        if self.canary is not None:
            return "canary"
        return "bluegreen" if self.bluegreen is not None else "rolling"

    @property
    def steps(self) -> list[Step]:
        """The traffic steps before 100 % (empty for rolling, whose traffic follows instance counts)."""
        if self.canary is not None:
            return list(self.canary.steps)
        if self.bluegreen is not None:
            return list(self.bluegreen.ramp)
        return []

    @property
    def keep_previous(self) -> float:
        if self.canary is not None:
            return self.canary.keep_previous
        return self.bluegreen.keep_previous if self.bluegreen is not None else 0.0


# --- analysis -----------------------------------------------------------------------------------------------------


def _threshold(metric: str, value: object) -> float:
    """Latency thresholds are durations (2.5s); error_rate takes 0.05 or '5%'; the rest plain numbers."""
    if metric in LATENCY_METRICS:
        return _duration(value)
    if isinstance(value, str) and value.strip().endswith("%") and metric == "error_rate":
        return float(value.strip()[:-1]) / 100.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number for {metric}, got {value!r}")
    return float(value)


class Rule(_Model):
    """Breaches when the metric stays beyond its bound for the whole `for` window."""

    metric: Literal["error_rate", "rps", "latency_p50", "latency_p95", "latency_p99", "cpu", "memory_mb",
                    "prometheus"] = Field(description="What to watch, per version; prometheus runs `query`.")
    query: str | None = Field(None, description="PromQL for metric: prometheus; {{service}}, {{version}} and "
                              "{{baseline_version}} are substituted. An empty result is no data.")
    max: Threshold | None = Field(
        None, description="Upper bound (latency as a duration, error_rate as 0.05 or 5%).")
    min: Threshold | None = Field(None, description="Lower bound, written like max.")
    for_: Duration = Field(300.0, alias="for", description="How long the bound must be broken to breach.")

    @field_validator("max", "min", mode="before")
    @classmethod
    def _threshold(cls, value: object, info: ValidationInfo) -> object:
        metric = info.data.get("metric")
        if value is None:
            return value
        if metric is None:  # the metric is invalid and already reported: do not pile a second error on it
            for kind in ("error_rate", "latency_p95"):
                try:
                    return _threshold(kind, value)
                except ValueError:
                    pass
            return value
        return _threshold(str(metric), value)

    @model_validator(mode="after")
    def _bounded(self) -> Rule:
        if self.max is None and self.min is None:
            raise ValueError(f"the rule on {self.metric} needs a bound: max or min")
        if (self.metric == "prometheus") != (self.query is not None):
            raise ValueError("metric: prometheus needs a query (PromQL), and only it takes one"
                             if self.metric == "prometheus" else f"query is only for metric: prometheus, "
                             f"not {self.metric}")
        return self

    @field_serializer("max", "min", when_used="json")
    def _threshold_text(self, value: float | None) -> float | str | None:
        """Latency bounds are stored as durations, as written, so a stored spec validates again."""
        return duration_text(value) if value is not None and self.metric in LATENCY_METRICS else value

    def broken_by(self, value: float) -> bool:
        return (self.max is not None and value > self.max) or (self.min is not None and value < self.min)

    def describe(self) -> str:
        from releasegate.durations import format_duration

        def show(v: float) -> str:
            return format_duration(v) if self.metric in LATENCY_METRICS else f"{v:g}"

        bounds = []
        if self.max is not None:
            bounds.append(f"> {show(self.max)}")
        if self.min is not None:
            bounds.append(f"< {show(self.min)}")
        return f"{self.metric} {' or '.join(bounds)} for {format_duration(self.for_)}"


def _seed_rules() -> list[Rule]:
    return [Rule.model_validate({"metric": "error_rate", "max": 0.05, "for": "5m"}),
            Rule.model_validate({"metric": "latency_p95", "max": "2.5s", "for": "5m"})]


class Analysis(_Model):
    """Rules evaluated against the new version's metrics while it takes traffic; a breach rolls back."""

    interval: Duration = Field(10.0, gt=0, description="How often rules are evaluated.")
    post_promotion: Duration = Field(1800.0, description="Keep evaluating at 100 % this long while the previous "
                                     "version is kept (the seeds' 30-minute watch).")
    rules: list[Rule] = Field(default_factory=_seed_rules, description="Any rule breached rolls the release "
                              "back; the defaults are the seeds' error-rate and p95 latency limits.")


# --- rollback -----------------------------------------------------------------------------------------------------


class Rollback(_Model):
    """How traffic leaves a failed version: at once, or down a staircase that lets caches and pools adjust."""

    mode: Literal["staircase", "immediate"] | None = Field(
        None, description="staircase or immediate; default: immediate for tier critical, else staircase.")
    staircase: list[int] = Field(default_factory=lambda: [50, 10, 0],
                                 description="Weights the new version steps down through, ending at 0.")
    step_wait: Duration = Field(300.0, description="Time between staircase steps.")
    on_alerts: list[str] = Field(default_factory=list, description="Alertmanager alert names that roll the rollout "
                                 "back (releasegate receive-alerts).")

    @field_validator("staircase")
    @classmethod
    def _staircase(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 0:
            raise LocatedValueError("the staircase must end at 0, e.g. [50, 10, 0]",
                                    at=(len(v) - 1,) if v else ())
        for i, w in enumerate(v):
            if not 0 <= w <= 100:
                raise LocatedValueError(f"staircase weight {w} is outside 0-100", at=(i,))
            if i and w >= v[i - 1]:
                raise LocatedValueError(f"staircase weights must decrease: {w} follows {v[i - 1]}", at=(i,))
        return v


# --- the whole spec -----------------------------------------------------------------------------------------------


class Governance(_Model):
    """Where the release policy and the change calendar live; paths are relative to the spec file."""

    policy: str | None = Field(None, description="Policy file: users, roles, approval stages per environment.")
    calendar: str | None = Field(None, description="Calendar file: deploy windows and change freezes.")
    release: str | None = Field(None, description="Name releases are approved under (NAME@VERSION); default: "
                                "the service. Lets the specs of several environments (shop-stage, shop) share "
                                "approvals and the dev -> stage -> prod pipeline.")

    @field_validator("release")
    @classmethod
    def _release(cls, v: str | None) -> str | None:
        if v is not None and not SERVICE_NAME.match(v):
            raise ValueError(f"release {v!r} must be lower-case letters, digits, '-' or '_' (at most 63)")
        return v


class Spec(_Model):
    """One service's release spec."""

    service: str = Field(description="Service name: lower-case letters, digits, - and _.")
    tier: Literal["critical", "important", "supporting"] = Field(
        "important", description="critical implies immediate rollback unless rollback.mode says otherwise.")
    platform: Platform = Field(description="Where and how the versions run.")
    router: Router = Field(default_factory=lambda: BuiltinRouter(), description="What splits traffic between "
                           "the versions.")
    health: Health = Field(default_factory=lambda: Health(), description="When a new instance counts as up.")
    smoke: list[SmokeTest] | None = Field(None, description="Requests sent to each new instance; default: GET "
                                          "on the health path.")
    strategy: Strategy = Field(default_factory=lambda: Strategy(canary=Canary()), description="How traffic "
                               "moves to the new version; default: the seeds' canary.")
    analysis: Analysis = Field(default_factory=lambda: Analysis(), description="When to roll back.")
    rollback: Rollback = Field(default_factory=lambda: Rollback(), description="How to roll back.")
    governance: Governance = Field(default_factory=lambda: Governance(), description="Approvals and change "
                                   "freezes `deploy` enforces.")
    metrics: MetricSources = Field(default_factory=lambda: MetricSources(), description="External metric "
                                   "sources for analysis rules.")
    notify: list[NotifyTarget] = Field(default_factory=list, description="Where rollout events are posted.")
    migrations: Migrations | None = Field(None, description="Database migrations applied before the new "
                                          "version gets traffic.")

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if not SERVICE_NAME.match(v):
            raise ValueError(f"service {v!r} must be lower-case letters, digits, '-' or '_' (at most 63), e.g. 'shop'")
        return v

    @model_validator(mode="after")
    def _sources(self) -> Spec:
        for i, rule in enumerate(self.analysis.rules):
            if rule.metric == "prometheus" and self.metrics.prometheus is None:
                raise LocatedValueError("a rule with metric: prometheus needs a source: add "
                                        "metrics: {prometheus: {url: http://127.0.0.1:9090}}",
                                        ("analysis", "rules", i, "metric"))
        return self

    @model_validator(mode="after")
    def _defaults(self) -> Spec:
        if self.smoke is None:
            object.__setattr__(self, "smoke", [SmokeTest(path=self.health.path, expect_status=[])])
        return self

    @property
    def release_name(self) -> str:
        """What approvals and environment successes are recorded under."""
        return self.governance.release or self.service

    @property
    def smoke_tests(self) -> list[SmokeTest]:
        return list(self.smoke or [])

    @property
    def rollback_mode(self) -> Literal["staircase", "immediate"]:
        if self.rollback.mode is not None:
            return self.rollback.mode
        return "immediate" if self.tier == "critical" else "staircase"


def check_version(version: str) -> str:
    """A version names directories and appears in commands, so it is kept to a safe alphabet."""
    if not VERSION_NAME.match(version):
        from releasegate.errors import UserError

        raise UserError(f"--version {version!r}: use letters, digits, '.', '_', '+' or '-' (e.g. 1.4.2), at most 64")
    return version
