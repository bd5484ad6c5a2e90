"""Health and smoke checks: how a new instance proves itself before (and while) it takes user traffic.

The health path, expectations, smoke requests and smoke commands may name the instance they check: ``{url}``,
``{host}``, ``{port}``, ``{version}`` and ``{service}`` are substituted per instance (PrivateTrade checks that
/health reports ``"version": "2.0.0"``).
The rules (what is a placeholder, what stays as written) are the whole spec's: ``releasegate.spec.placeholders``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from releasegate.spec import placeholders
from releasegate.spec.common import Duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError

SMOKE_COMMAND_TIMEOUT = 300.0


def _located(value: Any) -> Any:
    """Every placeholder of a check names the instance checked (placeholders.INSTANCE)."""
    placeholders.check(value, placeholders.INSTANCE)
    return value


def _http_path(v: str) -> str:
    """A request path as an HTTP client sends it (health and smoke checks)."""
    if not v.startswith("/"):
        raise ValueError(f"the path must start with '/', e.g. '/{v}'")
    return _located(v)  # type: ignore[no-any-return]


class Health(_Model):
    """Polled on each new instance directly (not through the router) until it answers or attempts run out, then
    once per analysis interval while the new version takes traffic: failures then roll back."""

    path: str = Field("/health", description="HTTP path polled on each instance; {version}, {service}, {port}, "
                      "{host} and {url} are the instance's.")
    interval: Duration = Field(5.0, description="Time between attempts.")
    timeout: Duration = Field(2.0, description="Per-request timeout.")
    attempts: int = Field(60, ge=1, description="Attempts before the instance counts as unhealthy.")
    expect_status: list[int] = Field(default_factory=list, description="Accepted statuses; empty means any 2xx.")
    expect: dict[str, Any] = Field(default_factory=dict,
                                   description="JSON subset the body must contain, e.g. {status: healthy, version: "
                                   "\"{version}\"}; {version}, {service}, {port}, {host} and {url} are the "
                                   "instance's.")
    failure_threshold: int = Field(3, ge=1, description="During the rollout (from the first traffic to the end of "
                                   "the watch), this many failed checks in a row of any new instance roll back, "
                                   "straight to 0 %.")
    down_after: Duration = Field(30.0, description="During the rollout, every new instance failing or unreachable "
                                 "for this long rolls back, straight to 0 %.")

    _path = field_validator("path")(_http_path)

    def path_for(self, values: Mapping[str, object]) -> str:
        """The path requested from the instance ``values`` describe (``placeholders.INSTANCE``)."""
        return placeholders.substitute_text(self.path, values)

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _located(v)  # type: ignore[no-any-return]


_HTTP_KEYS = ("method", "path", "headers", "body", "expect_status", "max_latency", "expect_body", "expect_json")
_COMMAND_KEYS = ("cwd", "env")


class SmokeTest(_Model):
    """One check of the new version before any user traffic reaches it: an HTTP request sent straight to every new
    instance, or a command (the team's own smoke-test suite) run against one new instance."""

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = Field(
        "GET", description="HTTP method; lower case is accepted.")
    path: str = Field("/", description="HTTP path requested on each new instance. In path, headers, body, "
                      "expect_body and expect_json, {version}, {service}, {port}, {host} and {url} are the "
                      "instance's.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    body: str | None = Field(None, description="Request body, sent as is (after placeholders).")
    expect_status: list[int] = Field(default_factory=lambda: [200],
                                     description="Accepted statuses; empty means any 2xx.")
    max_latency: Duration = Field(0.5, description="Slower answers fail the test.")
    expect_body: str | None = Field(None, description="Text the body must contain.")
    expect_json: dict[str, Any] = Field(default_factory=dict, description="JSON subset the body must contain, "
                                        "e.g. {version: \"{version}\"}.")
    command: str | None = Field(None, description="Instead of a request: a shell command run against one new "
                                "instance, e.g. 'pytest tests/smoke --base-url {url}'; exit status 0 passes. "
                                "{url} (http://HOST:PORT), {host}, {port}, {version} and {service} are "
                                "substituted, and RELEASEGATE_URL, RELEASEGATE_HOST, RELEASEGATE_PORT, "
                                "RELEASEGATE_VERSION and RELEASEGATE_SERVICE set. The end of its output is kept "
                                "with the decision.")
    cwd: str | None = Field(None, description="A command's working directory, relative to the spec file; "
                            "default: the spec file's directory.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for a command.")
    timeout: Duration | None = Field(None, description="A command's time limit (default 5m; then its whole process "
                                     "group is killed and the test fails); for a request, the per-request timeout "
                                     "(default: health.timeout, at least 5s).")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    _path = field_validator("path")(_http_path)

    @field_validator("headers", "body", "expect_body", "expect_json", "cwd", "env")
    @classmethod
    def _placeholders(cls, v: Any) -> Any:
        return _located(v)

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the command is empty: write the command that runs your smoke tests, e.g. "
                             "'pytest tests/smoke --base-url {url}'")
        return _located(v)  # type: ignore[no-any-return]

    @model_validator(mode="after")
    def _one_kind(self) -> SmokeTest:
        # By value, not by the keys written: a stored spec (JSON with every key) must validate again.
        fields = type(self).model_fields
        given = {k for k in (*_HTTP_KEYS, *_COMMAND_KEYS)
                 if getattr(self, k) != fields[k].get_default(call_default_factory=True, validated_data={})}
        if self.command is not None:
            both = [k for k in _HTTP_KEYS if k in given]
            if both:
                raise LocatedValueError(f"a smoke entry is either an HTTP request or a command, not both: remove "
                                        f"'{both[0]}' here, or put the request in a smoke entry of its own",
                                        (both[0],))
        else:
            stray = [k for k in _COMMAND_KEYS if k in given]
            if stray:
                raise LocatedValueError(f"'{stray[0]}' applies to smoke commands only: add 'command: ...' to this "
                                        f"entry or remove '{stray[0]}'", (stray[0],))
        return self

    @property
    def is_command(self) -> bool:
        return self.command is not None

    def describe(self) -> str:
        return f"`{self.command}`" if self.command is not None else f"{self.method} {self.path}"
