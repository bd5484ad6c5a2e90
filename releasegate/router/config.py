"""The router's settings, kept free of pydantic so the data-plane process starts fast and imports little."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Sticky = Literal["cookie", "header", "none"]
STICKY_MODES: tuple[Sticky, ...] = ("cookie", "header", "none")


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:80`` too); raises ValueError with the expected form."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8080, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class RouterConfig:
    """Everything one router process needs; one router serves one service.

    The timeouts are the data plane's, not the rollout's: ``connect_timeout`` bounds how long a user waits for a
    dead backend before getting a 502, ``response_timeout`` how long for the response head before a 504.
    ``header_timeout`` and ``body_timeout`` bound how long a client may take to send a request head (from its
    connection or its first byte) and how long its body may stall (nginx's client_header_timeout and
    client_body_timeout, 60 s too): without them a few hundred slow sockets hold every file descriptor.
    ``backend_idle_timeout`` closes pooled backend connections nobody reused, ``max_idle_per_backend`` caps the pool.

    ``admin_token_file`` holds the admin API's secret and ``changes_file`` records every route change; unset, both
    sit beside the routes file (``<service>.admin-token``, ``<service>.changes.jsonl``).
    """

    service: str
    listen: str
    routes_file: Path
    state_file: Path
    admin: str = "127.0.0.1:0"
    sticky: Sticky = "cookie"
    sticky_cookie: str = "rg_bucket"
    sticky_header: str = "X-User-Id"
    connect_timeout: float = 2.0
    response_timeout: float = 60.0
    client_idle_timeout: float = 75.0
    header_timeout: float = 60.0
    body_timeout: float = 60.0
    backend_idle_timeout: float = 60.0
    shutdown_grace: float = 5.0
    max_header_bytes: int = 65536
    max_idle_per_backend: int = 64
    admin_token_file: Path | None = None
    changes_file: Path | None = None

    def __post_init__(self) -> None:
        split_host_port(self.listen)
        host, _ = split_host_port(self.admin)
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"the admin API must listen on loopback (127.0.0.1:PORT), got {self.admin!r}")
        if self.sticky not in STICKY_MODES:
            raise ValueError(f"sticky must be one of {', '.join(STICKY_MODES)}, got {self.sticky!r}")
        for name in ("connect_timeout", "response_timeout", "client_idle_timeout", "header_timeout", "body_timeout",
                     "backend_idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.max_idle_per_backend < 0:
            raise ValueError("max-idle-per-backend must be 0 or more")
        if not self.sticky_cookie or not self.sticky_header:
            raise ValueError("the sticky cookie and header names must not be empty")

    @property
    def token_path(self) -> Path:
        from releasegate.router.adminauth import default_token_file

        return self.admin_token_file or default_token_file(self.routes_file, self.service)

    @property
    def changes_path(self) -> Path:
        from releasegate.router.routes_file import default_changes_file

        return self.changes_file or default_changes_file(self.routes_file, self.service)
