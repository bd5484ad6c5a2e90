"""``router: {kind: nginx}``: weights rendered into an nginx upstream file releasegate owns, then reloaded."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from releasegate.spec.common import Duration, HostPort, SpecModel


class NginxRouter(SpecModel):
    """A system nginx (or one started by releasegate for tests) whose upstreams releasegate renders."""

    kind: Literal["nginx"] = Field(description="Which router splits the traffic.")
    listen: HostPort = Field("127.0.0.1:8080",
                             description="Where users connect, HOST:PORT (the server block's listen).")
    config_file: str = Field("/etc/nginx/conf.d/releasegate-{service}.conf",
                             description="The file releasegate owns and rewrites; {service} is substituted.")
    nginx: str = Field("nginx", description="The nginx binary.")
    main_config: str | None = Field(None, description="nginx.conf to validate with `nginx -t -c`; default: "
                                    "nginx's own.")
    prefix: str | None = Field(None, description="nginx's prefix directory (`nginx -p`) for validation and "
                               "reload; default: nginx's own.")
    pid_file: str = Field("/run/nginx.pid", description="nginx's pid file (its `pid` directive): releasegate "
                          "waits until the master's workers of the previous configuration stop accepting.")
    sticky_cookie: str = Field("rg_bucket", description="Cookie that keeps a user on one version.")
    drain_timeout: Duration = Field(30.0, description="How long a removed backend may finish in-flight requests.")
    drain_grace: Duration = Field(5.0, description="nginx cannot count in-flight requests: a backend removed from "
                                  "the routes counts as busy for this long, then as drained.")
    reload_timeout: Duration = Field(10.0, description="How long to wait for nginx to serve a reloaded file.")
    client_keepalive: Duration = Field(
        0.0, description="keepalive_timeout of the server block users connect to. releasegate changes routes by "
        "reloading nginx, and on every reload nginx's old workers close their idle keep-alive client connections: a "
        "client that sends a request on such a connection at that moment gets a reset. 0 (the default) renders "
        "`keepalive_timeout 0;`, so every response closes its connection and route changes lose no request with any "
        "client. A positive value renders `keepalive_timeout <seconds>s;` for setups whose clients retry an "
        "idempotent request on a closed persistent connection (browsers, curl and Go's net/http do; Python httpx "
        "does not), and accepts the race for the others. Keep-alive from nginx to the backends is not affected.")

    @field_validator("sticky_cookie")
    @classmethod
    def _cookie(cls, v: str) -> str:
        # nginx reads the cookie as $cookie_<name>: a variable name allows letters, digits and '_' only.
        if not re.fullmatch(r"[A-Za-z0-9_]+", v):
            raise ValueError("sticky_cookie must be letters, digits and '_' (nginx reads it as $cookie_<name>)")
        return v
