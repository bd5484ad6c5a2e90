"""Health and smoke checks: how a new instance proves itself before (and while) it takes user traffic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from releasegate.spec.common import Duration
from releasegate.spec.common import SpecModel as _Model


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
