"""``router: {kind: nginx}``: weights rendered into an nginx upstream file releasegate owns, then reloaded."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from releasegate.spec.common import Duration, SpecModel, host_port


class NginxRouter(SpecModel):
    """A system nginx (or one started by releasegate for tests) whose upstreams releasegate renders."""

    kind: Literal["nginx"] = Field(description="Which router splits the traffic.")
    listen: str = Field("127.0.0.1:8080", description="Where users connect, HOST:PORT (the server block's listen).")
    config_file: str = Field("/etc/nginx/conf.d/releasegate-{service}.conf",
                             description="The file releasegate owns and rewrites; {service} is substituted.")
    nginx: str = Field("nginx", description="The nginx binary.")
    main_config: str | None = Field(None, description="nginx.conf to validate with `nginx -t -c`; default: "
                                    "nginx's own.")
    sticky_cookie: str = Field("rg_bucket", description="Cookie that keeps a user on one version.")
    drain_timeout: Duration = Field(30.0, description="How long a removed backend may finish in-flight requests.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return host_port(v)
