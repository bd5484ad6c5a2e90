"""``releasegate server``: the REST API and every active rollout in one long-lived process (docs/server.md).

Loopback by default. Any other address needs TLS (``--tls-cert``/``--tls-key``) or an explicit ``--insecure-http``
that is warned about at start: bearer tokens must not cross a network in clear text by accident.

Uvicorn's limits that keep one client from stalling the others: every connection is its own task on the event
loop (a slow sender only holds its own), ``--request-timeout`` (10 s) closes a connection whose request head has
not arrived (releasegate.server.protocol) and answers 408 to a body that has not, ``timeout_keep_alive`` closes
idle keep-alive connections after 5 s,
``h11_max_incomplete_event_size`` bounds a request head at 64 KiB, ``limit_concurrency`` answers 503 past 1000
connections, and the app refuses bodies past 1 MiB (413) however they are sent.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from releasegate.commands import listen_address, reported
from releasegate.commands.alerts_receiver import is_loopback
from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.durations import parse_duration
from releasegate.errors import UserError
from releasegate.store import pg
from releasegate.store.db import open_db, store_url, use_store

err = Console(stderr=True, highlight=False, soft_wrap=True)


def store_dir(store: str | None, state_dir: Path | None, option: str = "--store") -> Path:
    """``--store sqlite:///PATH/releasegate.db`` as the state dir holding it (or ``--state-dir``);
    ``--store postgresql://...`` chooses that database for every store this process opens (``use_store``) and
    leaves the state dir (local files: router configs, logs, the audit head file) to ``--state-dir``."""
    if store is None:
        return state_dir_of(state_dir)
    if pg.is_url(store):
        choose_store(store)
        return state_dir_of(state_dir)
    prefix = "sqlite:///"
    if not store.startswith(prefix):
        raise UserError(f"{option} {pg.redact(store)}: expected sqlite:///PATH/releasegate.db (e.g. "
                        "sqlite:///.releasegate/releasegate.db) or postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE")
    path = Path(store[len(prefix):])
    if path.name != "releasegate.db":
        raise UserError(f"{option} {store}: the database file is named releasegate.db; give sqlite:///"
                        f"{path.parent / 'releasegate.db'} (its directory is the state dir)")
    if state_dir is not None and state_dir.resolve() != path.parent.resolve():
        raise UserError(f"{option} {store} and --state-dir {state_dir} name two places; give one")
    choose_store(None)
    return path.parent


def choose_store(url: str | None) -> None:
    """``use_store`` for this command; ``releasegate.cli`` forgets it when the command ends (which matters when
    commands run in-process, as under typer's CliRunner)."""
    use_store(url)


def check_store(state_dir: Path) -> None:
    """Open the store once (a PostgreSQL one: connect and bring its schema up to date), so a wrong URL, an
    unreachable server or a failed login is one line at start rather than an error per request."""
    if store_url() is None:
        return
    open_db(state_dir).close()


Store = Annotated[str | None, typer.Option("--store", metavar="URL", show_default=False,
                                           help="sqlite:///PATH/releasegate.db (default: the state dir's) or "
                                                "postgresql://USER@HOST:PORT/DATABASE; also RELEASEGATE_STORE.")]


def server(listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT",
                                               help="Where the API listens.")] = "127.0.0.1:8700",
           store: Store = None, state_dir: StateDir = None,
           spec_root: Annotated[Path | None, typer.Option(
               "--spec-root", metavar="DIR", show_default=False,
               help="Specs named by path in requests must lie under DIR (default: the current directory).")]
           = None,
           tls_cert: Annotated[Path | None, typer.Option("--tls-cert", metavar="FILE", show_default=False,
                                                         help="Serve HTTPS with this certificate (PEM).")] = None,
           tls_key: Annotated[Path | None, typer.Option("--tls-key", metavar="FILE", show_default=False,
                                                        help="The certificate's private key (PEM).")] = None,
           insecure_http: Annotated[bool, typer.Option(
               "--insecure-http", show_default=False,
               help="Allow plain HTTP on a non-loopback address (tokens cross the network in clear).")] = False,
           request_timeout: Annotated[float, typer.Option(
               "--request-timeout", metavar="SECONDS", min=0.1, max=3600,
               help="A request's head, then its body, must arrive within SECONDS (slow clients are cut off).")]
           = 10.0,
           lease_ttl: Annotated[str, typer.Option(
               "--lease-ttl", metavar="DURATION",
               help="How long a rollout's lease lasts unrenewed: the longest a rollout pauses when its server "
                    "dies.")] = "10s",
           public_url: Annotated[str | None, typer.Option(
               "--public-url", metavar="URL", show_default=False,
               help="The address browsers use when a reverse proxy serves the dashboard (e.g. "
                    "https://releases.example.com): its forms' Origin is checked against it, and its session "
                    "cookie is Secure when it is https.")] = None
           ) -> None:
    """Serve the REST API and the browser dashboard (at /), and drive every active rollout in this one process
    (docs/server.md, docs/dashboard.md)."""
    with reported():
        host, port = listen_address(listen)
        where = store_dir(store, state_dir)
        if (tls_cert is None) != (tls_key is None):
            raise UserError("--tls-cert and --tls-key go together; give both (or neither, on loopback)")
        for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if path is not None and not path.is_file():
                raise UserError(f"{option} {path}: no such file")
        if not is_loopback(host) and tls_cert is None and not insecure_http:
            raise UserError(f"--listen {listen}: not a loopback address; serve TLS with --tls-cert FILE --tls-key "
                            "FILE, or pass --insecure-http to send tokens in clear text")
        try:
            ttl = parse_duration(lease_ttl)
        except ValueError as exc:
            raise UserError(f"--lease-ttl {lease_ttl}: {exc}") from None
        if not 1.0 <= ttl <= 3600.0:
            raise UserError(f"--lease-ttl {lease_ttl}: give between 1s and 1h (e.g. 10s)")
        public = public_origin(public_url) if public_url is not None else None
        root = (spec_root or Path.cwd())
        if not root.is_dir():
            raise UserError(f"--spec-root {root}: no such directory")
        check_store(where)
    if not is_loopback(host) and tls_cert is None:
        err.print(f"warning: serving plain HTTP on {listen}: bearer tokens cross the network in clear text "
                  "(--insecure-http)", markup=False)
    asyncio.run(_serve(where, host, port, root, tls_cert, tls_key, request_timeout, ttl, public))


def public_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``--public-url``, or a one-line error saying what it must look like."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or \
            parts.query or parts.fragment or parts.username or parts.password:
        raise UserError(f"--public-url {url}: give the address browsers open, scheme and host only, e.g. "
                        "https://releases.example.com")
    return f"{parts.scheme}://{parts.netloc.lower()}"


async def _serve(state_dir: Path, host: str, port: int, spec_root: Path, cert: Path | None,
                 key: Path | None, request_timeout: float, lease_ttl: float, public: str | None = None) -> None:
    import uvicorn

    from releasegate.server.app import create_app
    from releasegate.server.protocol import with_head_timeout

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore", "apprise"):  # their INFO lines carry URLs, which may carry secrets
        logging.getLogger(chatty).setLevel(logging.WARNING)
    app = create_app(state_dir, spec_root=spec_root, request_timeout=request_timeout, lease_ttl=lease_ttl)
    app.state.public_origin = public  # the dashboard's forms (releasegate/server/dashboard/sessions.py)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=True, lifespan="on",
                            http=with_head_timeout(request_timeout),
                            timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024,
                            limit_concurrency=1000, timeout_graceful_shutdown=10,
                            ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
    served = uvicorn.Server(config)
    app.state.closing = lambda: served.should_exit  # the dashboard's live streams end at once on SIGTERM
    await served.serve()


__all__ = ["check_store", "choose_store", "server", "store_dir"]
