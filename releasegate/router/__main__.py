"""``python -m releasegate.router``: the router process as the controller starts it (detached, no Typer).

Why not only the Typer command: the controller spawns routers with ``sys.executable -m releasegate.router`` so
the child imports nothing but the data plane and starts in a fraction of the CLI's import time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from releasegate.errors import UserError
from releasegate.router.config import STICKY_MODES, RouterConfig


def parse_args(argv: list[str] | None = None) -> RouterConfig:
    p = argparse.ArgumentParser(prog="python -m releasegate.router",
                                description="releasegate's built-in router (one service's data plane).")
    p.add_argument("--service", required=True)
    p.add_argument("--listen", required=True, help="HOST:PORT where users connect")
    p.add_argument("--admin", default="127.0.0.1:0",
                   help="loopback HOST:PORT of the admin API (port 0 = a free port)")
    p.add_argument("--routes-file", required=True, type=Path)
    p.add_argument("--state-file", required=True, type=Path)
    p.add_argument("--admin-token-file", type=Path, default=None,
                   help="the admin API's secret (created 0600 when missing; default: SERVICE.admin-token beside "
                        "the routes file); the token itself is never taken on the command line")
    p.add_argument("--changes-file", type=Path, default=None,
                   help="append-only log of route changes (default: SERVICE.changes.jsonl beside the routes file)")
    p.add_argument("--sticky", choices=STICKY_MODES, default="cookie")
    p.add_argument("--sticky-cookie", default="rg_bucket")
    p.add_argument("--sticky-header", default="X-User-Id")
    p.add_argument("--connect-timeout", type=float, default=2.0)
    p.add_argument("--response-timeout", type=float, default=60.0)
    p.add_argument("--client-idle-timeout", type=float, default=75.0,
                   help="seconds a keep-alive client may stay silent between requests")
    p.add_argument("--header-timeout", type=float, default=60.0,
                   help="seconds a client may take to send a request head (408 and close after)")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a request body may stall (408 and close after)")
    p.add_argument("--backend-idle-timeout", type=float, default=60.0,
                   help="seconds an unused pooled backend connection is kept")
    p.add_argument("--max-idle-per-backend", type=int, default=64,
                   help="pooled idle connections kept per backend")
    a = p.parse_args(argv)
    try:
        return RouterConfig(service=a.service, listen=a.listen, admin=a.admin, routes_file=a.routes_file,
                            state_file=a.state_file, sticky=a.sticky, sticky_cookie=a.sticky_cookie,
                            sticky_header=a.sticky_header, connect_timeout=a.connect_timeout,
                            response_timeout=a.response_timeout, client_idle_timeout=a.client_idle_timeout,
                            header_timeout=a.header_timeout, body_timeout=a.body_timeout,
                            backend_idle_timeout=a.backend_idle_timeout,
                            max_idle_per_backend=a.max_idle_per_backend, admin_token_file=a.admin_token_file,
                            changes_file=a.changes_file)
    except ValueError as exc:
        p.error(str(exc))
        raise  # pragma: no cover - p.error exits


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from releasegate.router.server import run_router

    try:
        run_router(config)
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
