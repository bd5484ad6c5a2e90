"""The router process: listeners, state file, signals, graceful stop.

The state file is how the controller and ``releasegate router status`` find a running router (its pid and the
admin port it really bound, which may have been chosen by the OS); it exists exactly while the router serves.
The admin API's token is read (or created, 0600) from its file before anything listens: there is no way to run the
router with an admin API that answers without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from releasegate.errors import UserError
from releasegate.fileio import write_json_atomic
from releasegate.router.admin import Admin
from releasegate.router.adminauth import AdminTokenError, ensure_admin_token
from releasegate.router.config import RouterConfig, join_host_port, split_host_port
from releasegate.router.core import Core
from releasegate.router.proxy import ClientProtocol
from releasegate.router.routes_file import RoutesFileError, load_routes
from releasegate.router.stats import Stats

LISTEN_BACKLOG = 2048


def _bound(server: asyncio.Server) -> str:
    name = server.sockets[0].getsockname()
    return join_host_port(str(name[0]), int(name[1]))


def _listen_error(what: str, address: str, exc: OSError) -> UserError:
    if exc.errno == errno.EADDRINUSE:
        hint = " (is another router running? see 'releasegate router status')" if what == "listen" else ""
        return UserError(f"router: cannot listen on {address}: address already in use{hint}")
    return UserError(f"router: cannot listen on {address}: {exc.strerror or exc}")


async def serve(config: RouterConfig, ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; raises UserError for what the user can fix (busy port, corrupt file)."""
    loop = asyncio.get_running_loop()
    # Signals first: the state file announces "ready", and a SIGTERM after that must mean a clean stop.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        saved = load_routes(config.routes_file, config.service)
    except RoutesFileError as exc:
        raise UserError(str(exc)) from None
    try:
        token = ensure_admin_token(config.token_path)
    except (AdminTokenError, OSError) as exc:
        detail = str(exc) if isinstance(exc, AdminTokenError) else \
            f"router: cannot create the admin token file {config.token_path}: {exc.strerror or exc}"
        raise UserError(detail) from None
    core = Core(config, Stats())
    if saved is not None:
        core.apply(saved.routes, saved.generation)

    host, port = split_host_port(config.listen)
    try:
        server = await loop.create_server(lambda: ClientProtocol(core), host, port, reuse_address=True,
                                          backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise _listen_error("listen", config.listen, exc) from None
    listen = _bound(server)
    for sock in server.sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    admin = Admin(core, token, listen)
    ahost, aport = split_host_port(config.admin)
    try:
        admin_server = await asyncio.start_server(admin.handle, ahost, aport, reuse_address=True,
                                                  limit=65536)
    except OSError as exc:
        server.close()
        raise _listen_error("admin", config.admin, exc) from None
    admin.admin = _bound(admin_server)

    state = {"pid": os.getpid(), "service": config.service, "listen": listen, "admin": admin.admin,
             "admin_auth": "bearer", "admin_token_file": str(config.token_path),
             "routes_file": str(config.routes_file), "changes_file": str(config.changes_path),
             "started_at": time.time()}
    try:
        write_json_atomic(config.state_file, state)
    except OSError as exc:
        server.close()
        admin_server.close()
        raise UserError(f"router: cannot write the state file {config.state_file}: {exc.strerror or exc}") \
            from None

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(1.0)
            core.sweep()

    sweep_task = loop.create_task(sweeper())
    versions = ", ".join(f"{v.version} {v.weight}%" for v in core.table.routes.versions) or "no routes yet"
    print(f"router: serving {config.service} on {listen} (admin {admin.admin}; {versions})", file=sys.stderr,
          flush=True)
    if ready is not None:
        ready(state)
    try:
        await stop.wait()
    finally:
        # Stop accepting, let in-flight requests finish (bounded), then drop whatever is left.
        server.close()
        core.draining = True
        core.close_idle_clients()
        deadline = loop.time() + config.shutdown_grace
        # A bounded poll, once per shutdown: cheaper than signalling "drained" from the hot path.
        while core.active_requests() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        sweep_task.cancel()
        admin_server.close()
        core.close_all()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        _remove_state_file(config, os.getpid())
        print(f"router: stopped ({config.service} on {listen})", file=sys.stderr, flush=True)


def _remove_state_file(config: RouterConfig, pid: int) -> None:
    """Only our own: a second router that took over the file must not lose it when we exit."""
    try:
        data = json.loads(config.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("pid") == pid:
        with contextlib.suppress(OSError):
            config.state_file.unlink()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_router(config: RouterConfig) -> None:
    """Run the router in the foreground until SIGTERM/SIGINT (uvloop when available).

    Raises ``releasegate.errors.UserError`` (exit code 2, one-line message) for a busy port, a corrupt routes
    file or an unwritable state file; the CLI prints it without a traceback.
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config))
