"""``router: {kind: nginx}``: weights rendered into an nginx upstream file releasegate owns, then reloaded; a JSON
access log releasegate also owns gives per-version requests, errors and latency."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from releasegate.spec import placeholders
from releasegate.spec.common import Duration, HostPort, SpecModel

_UNSAFE = re.compile(r"[\"'$;{}\\\x00-\x1f\x7f]")
"""Characters that would end or change an nginx directive (or interpolate a variable) in a path."""
_DIRECTIVE_END = re.compile(r"[;{}#\x00-\x1f\x7f]")


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

    access_log: str | None = Field(
        None, description="The JSON access log releasegate renders into its server block and reads for each "
        "version's requests, 5xx answers and latency (the error_rate, rps and latency_p50/p95/p99 rules); "
        "{service} is substituted. nginx's master opens it, so nginx must be able to create and write it, and "
        "releasegate must read it. Default: next to config_file, `<config_file without .conf>.access.log`. "
        "`off` renders no log: nginx then measures nothing, and only metric: prometheus rules can be used (the "
        "judge can count from Prometheus counters: analysis.judge.counts).")
    access_log_max_mb: int = Field(
        64, ge=1, le=65536, description="Past this size (MiB) the log is renamed to `.1` (replacing the previous "
        "one) and nginx reopens it (`nginx -s reopen`, or the reload of the next route change): checked while "
        "releasegate reads it (during analysis) and on every route change. Between rollouts nothing reads it; "
        "see docs/integrations.md for a logrotate rule.")
    other_access_logs: list[str] = Field(
        default_factory=list, description="More `access_log` directives for the server block, as PATH [FORMAT "
        "[options]], e.g. `/var/log/nginx/access.log combined`: nginx does not inherit the http-level "
        "access_log into a server block that has its own, so list here the logs this service should still "
        "write to.")

    @field_validator("config_file")
    @classmethod
    def _config_file(cls, v: str) -> str:
        placeholders.check(v, placeholders.SERVICE, "router.config_file")
        return v

    @field_validator("access_log")
    @classmethod
    def _log_path(cls, v: str | None) -> str | None:
        if v is not None:
            placeholders.check(v, placeholders.SERVICE, "router.access_log", literals=False)
        if v is not None and v != "off" and (not v.strip() or _UNSAFE.search(v.replace("{service}", "s"))):
            raise ValueError("access_log must be a file path (or off) without quotes, '$', ';', '{', '}' or "
                             "control characters, since it is written into nginx's configuration")
        return v

    @field_validator("other_access_logs")
    @classmethod
    def _other_logs(cls, v: list[str]) -> list[str]:
        for item in v:
            if not item.strip() or _DIRECTIVE_END.search(item):
                raise ValueError(f"{item!r}: write an access_log directive's arguments without ';', '{{', '}}', "
                                 "'#' or control characters, e.g. '/var/log/nginx/access.log combined'")
        return v

    def access_log_file(self, service: str) -> str | None:
        """The log's path for ``service`` (absolute when config_file is), None when it is off."""
        if self.access_log == "off":
            return None
        if self.access_log is not None:
            return placeholders.substitute_text(self.access_log, {"service": service})
        config = placeholders.substitute_text(self.config_file, {"service": service})
        return config.removesuffix(".conf") + ".access.log"

    @field_validator("sticky_cookie")
    @classmethod
    def _cookie(cls, v: str) -> str:
        # nginx reads the cookie as $cookie_<name>: a variable name allows letters, digits and '_' only.
        if not re.fullmatch(r"[A-Za-z0-9_]+", v):
            raise ValueError("sticky_cookie must be letters, digits and '_' (nginx reads it as $cookie_<name>)")
        return v
