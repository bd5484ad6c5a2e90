"""``router: {kind: haproxy}``: weights through HAProxy's runtime API on its stats socket."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from releasegate.spec import placeholders
from releasegate.spec.common import Duration, HostPort, SpecModel


class HaproxyRouter(SpecModel):
    """An HAProxy whose backend releasegate renders once and then steers through the runtime API."""

    kind: Literal["haproxy"] = Field(description="Which router splits the traffic.")
    listen: HostPort = Field("127.0.0.1:8080", description="Where users connect, HOST:PORT (the frontend's bind).")
    config_file: str = Field("/etc/haproxy/haproxy.cfg", description="The configuration releasegate renders "
                             "the initial frontend and backend into.")
    stats_socket: str = Field("/run/haproxy/admin.sock", description="The runtime API socket (level admin).")
    haproxy: str = Field("haproxy", description="The haproxy binary.")
    backend: str = Field("{service}", description="Backend name; {service} is substituted.")
    slots: int = Field(8, ge=1, le=256, description="Server slots per version in the backend (runtime API "
                       "servers are enabled and disabled, not added).")
    drain_timeout: Duration = Field(30.0, description="How long a removed backend may finish in-flight requests.")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        placeholders.check(v, placeholders.SERVICE, "router.backend")
        return v
