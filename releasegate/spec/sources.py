"""``metrics:``: where analysis rules with ``metric: prometheus`` get their numbers."""

from __future__ import annotations

from pydantic import Field, field_validator

from releasegate.spec import secrets
from releasegate.spec.common import Duration, SpecModel


class Prometheus(SpecModel):
    """A Prometheus server to run rule queries against (its HTTP API)."""

    url: str = Field(description="Prometheus base URL, e.g. http://127.0.0.1:9090; credentials in "
                     "it may be written ${env:NAME}, resolved when it is queried.")
    timeout: Duration = Field(5.0, description="Per-query timeout; a timeout is no data, never 0.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        secrets.check(v)
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:9090, got {v!r}")
        return v.rstrip("/")


class MetricSources(SpecModel):
    """External metric sources; the built-in router and the platform need no entry."""

    prometheus: Prometheus | None = Field(None, description="Needed by rules with metric: prometheus.")
