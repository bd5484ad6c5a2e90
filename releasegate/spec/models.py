"""The release spec: what a runbook says, as validated data with the seeds' numbers as defaults.

Every default here is a number from the seed runbooks (shared/reference/seeds): canary 5 -> 25 -> 50 % with 10/10/30
minute watches, health polled 60 times 5 s apart, smoke requests under 500 ms, roll back when the error rate is above
5 % or p95 above 2.5 s for 5 minutes, staircase 100 -> 50 -> 10 -> 0 %, watch 30 minutes after promotion, keep the
previous version 24 hours. docs/spec-reference.md is generated from these models and a test keeps it in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from releasegate.spec import placeholders, secrets
from releasegate.spec.analysis import Analysis, Rule, _threshold
from releasegate.spec.checks import Health, SmokeTest
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
    host_port,
)
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError
from releasegate.spec.migrations import Migrations
from releasegate.spec.notify import NotifyTarget
from releasegate.spec.platforms import DockerPlatform, SshPlatform
from releasegate.spec.rollback import Rollback
from releasegate.spec.routers_haproxy import HaproxyRouter
from releasegate.spec.routers_nginx import NginxRouter
from releasegate.spec.sources import MetricSources
from releasegate.spec.strategy import BlueGreen, Canary, Rolling, Step, Strategy

__all__ = [
    "DURATION_JSON_SCHEMA",
    "DURATION_PATTERN",
    "LATENCY_METRICS",
    "METRICS",
    "PROCESS_METRICS",
    "ROUTER_METRICS",
    "SERVICE_NAME",
    "THRESHOLD_JSON_SCHEMA",
    "THRESHOLD_PATTERN",
    "VERSION_NAME",
    "Analysis",
    "BlueGreen",
    "Canary",
    "DockerPlatform",
    "Duration",
    "Health",
    "Rollback",
    "Rolling",
    "Rule",
    "SmokeTest",
    "SshPlatform",
    "Step",
    "Strategy",
    "Threshold",
    "_threshold",
]

_host_port = host_port


# --- platform -----------------------------------------------------------------------------------------------------


class LocalPlatform(_Model):
    """Each version runs as local processes on free loopback ports; they outlive the controller."""

    kind: Literal["local"] = Field("local", description="Which platform runs the versions.")
    command: str = Field(description="Shell command; {port} (required), {version}, {service} and {host} are "
                         "substituted per instance.")
    instances: int = Field(1, ge=1, le=64, description="Processes per version.")
    cwd: str = Field(".", description="Working directory, relative to the spec file; {version} and {service} are "
                     "substituted.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment; in values, {port}, "
                                "{version}, {service} and {host} are substituted per instance. PORT, "
                                "RELEASEGATE_VERSION and RELEASEGATE_SERVICE are always set. A secret may be "
                                "written ${env:NAME}: resolved from releasegate's environment as the instance "
                                "starts, so the stored spec never holds it.")
    stop_grace: Duration = Field(10.0, description="SIGTERM, then SIGKILL after this long.")

    @field_validator("command")
    @classmethod
    def _needs_port(cls, v: str) -> str:
        placeholders.check(v, placeholders.PROCESS, "platform.command")
        if "port" not in placeholders.used(v):
            raise ValueError("the command must contain {port} so each instance can listen on its own port, "
                             "e.g. 'python3 app.py --port {port}'")
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str) -> str:
        placeholders.check(v, placeholders.VERSION, "platform.cwd (every instance of a version shares it)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        placeholders.check(v, placeholders.PROCESS, "platform.env")
        for key, value in v.items():
            problem = secrets.env_form_problem(value)
            if problem:
                raise LocatedValueError(problem, (key,))
        return v

    def cwd_for(self, service: str, version: str) -> str:
        return placeholders.substitute_text(self.cwd, {"service": service, "version": version})

    def command_for(self, service: str, version: str, port: int, host: str) -> str:
        return placeholders.substitute_text(self.command, _process(service, version, port, host))

    def env_for(self, service: str, version: str, port: int, host: str) -> dict[str, str]:
        """The extra environment of one instance: ``{port}`` is that instance's port; ``${env:NAME}`` is resolved
        last, so a secret's own text is never taken for a placeholder."""
        values = _process(service, version, port, host)
        return {key: secrets.resolve(placeholders.substitute_text(value, values), f"platform.env.{key}")
                for key, value in self.env.items()}


def _process(service: str, version: str, port: int, host: str) -> dict[str, object]:
    return {"service": service, "version": version, "port": port, "host": host}


def _kind(default: str) -> Callable[[Any], str]:
    """The discriminator of a block picked by ``kind``, which may be left out for the default (local processes,
    the built-in router)."""

    def kind_of(value: Any) -> str:
        kind = value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default)
        return kind if isinstance(kind, str) else "?"

    return kind_of


Platform = Annotated[
    Annotated[LocalPlatform, Tag("local")] | Annotated[DockerPlatform, Tag("docker")]
    | Annotated[SshPlatform, Tag("ssh")],
    Discriminator(_kind("local"), custom_error_type="platform_kind",
                  custom_error_message="platform kind must be local, docker or ssh",
                  custom_error_context={"key": "kind"})]
AnyPlatform = LocalPlatform | DockerPlatform | SshPlatform


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


Router = Annotated[
    Annotated[BuiltinRouter, Tag("builtin")] | Annotated[NginxRouter, Tag("nginx")]
    | Annotated[HaproxyRouter, Tag("haproxy")],
    Discriminator(_kind("builtin"), custom_error_type="router_kind",
                  custom_error_message="router kind must be builtin, nginx or haproxy",
                  custom_error_context={"key": "kind"})]  # the loader reports a bad kind at this key


# --- the whole spec -----------------------------------------------------------------------------------------------


class Governance(_Model):
    """The release name approvals are recorded under, and the policy and calendar files this service expects.

    Deploys are judged by the policy and calendar stored in the state (``releasegate policy apply``, ``calendar
    apply``), never by these files: naming one only refuses a deploy while the stored copy says something else."""

    policy: str | None = Field(None, description="Policy file this service expects (relative to the spec). Deploys "
                               "are judged by the stored policy (`releasegate policy apply FILE`); a deploy is refused "
                               "while none is stored or it differs from this file.")
    calendar: str | None = Field(None, description="Calendar file this service expects (relative to the spec). "
                                 "Deploys are judged by the stored calendar (`releasegate calendar apply FILE`); a "
                                 "deploy is refused while none is stored or it differs from this file.")
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
    smoke: list[SmokeTest] | None = Field(None, description="Checks of the new version before any traffic: "
                                          "requests sent to each new instance and commands run against one; "
                                          "default: GET on the health path.")
    strategy: Strategy = Field(default_factory=lambda: Strategy(canary=Canary()), description="How traffic "
                               "moves to the new version; default: the seeds' canary.")
    analysis: Analysis = Field(default_factory=lambda: Analysis(), description="When to roll back.")
    rollback: Rollback = Field(default_factory=lambda: Rollback(), description="How to roll back.")
    governance: Governance = Field(default_factory=lambda: Governance(), description="The release name for "
                                   "approvals; the policy and calendar deploy enforces are the state's "
                                   "(`releasegate policy apply`).")
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
        judged = self.analysis.judge.metrics if self.analysis.judge is not None else []
        for i, m in enumerate(judged):
            if m.metric == "prometheus" and self.metrics.prometheus is None:
                raise LocatedValueError("a judge metric with metric: prometheus needs a source: add "
                                        "metrics: {prometheus: {url: http://127.0.0.1:9090}}",
                                        ("analysis", "judge", "metrics", i, "metric"))
        if self.analysis.judge is not None and self.analysis.judge.counts is not None \
                and self.metrics.prometheus is None:
            raise LocatedValueError("the judge's counts from Prometheus need a source: add "
                                    "metrics: {prometheus: {url: http://127.0.0.1:9090}}",
                                    ("analysis", "judge", "counts"))
        return self

    @model_validator(mode="after")
    def _baseline_fits(self) -> Spec:
        """A baseline is compared with a canary's steps: bluegreen and rolling have none."""
        if not self.analysis.baseline:
            return self
        if self.strategy.canary is None:
            raise LocatedValueError("baseline: true needs strategy: canary (bluegreen and rolling have no canary "
                                    "to compare it with); remove it or use a canary", ("analysis", "baseline"))
        return self

    @model_validator(mode="after")
    def _staircase_used(self) -> Spec:
        """A staircase that would never run is a mistake, not a preference: refuse it rather than ignore it."""
        if self.rollback_mode != "immediate":
            return self
        unused = ["staircase"] if self.rollback.custom_staircase() else []
        unused += self.rollback.staircase_only_settings()
        if not unused:
            return self
        key = unused[0]
        what = "a staircase" if key == "staircase" else key
        if self.rollback.mode == "immediate":
            message = (f"{what} has no effect with mode: immediate (traffic goes to 0 % at once); remove "
                       f"one: mode: immediate, or {'the staircase' if key == 'staircase' else key}")
        else:
            what = "this staircase" if key == "staircase" else key
            message = (f"tier critical rolls back at once (rollback.mode defaults to immediate), so {what} "
                       "has no effect; add mode: staircase to use it, or remove it")
        raise LocatedValueError(message, ("rollback", key))

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
