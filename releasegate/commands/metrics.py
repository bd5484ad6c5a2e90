"""``releasegate metrics``: the controller metrics exporter in the foreground.

It serves ``GET /metrics`` (the Prometheus text format) from releasegate.metrics_exporter, which reads the state
dir's store on every scrape; it never writes anything, so it can run beside any number of controllers, or none,
and be restarted at will. The router's own ``/metrics`` (traffic per version) is separate: it lives on the
router's admin address.

What it serves names every service, version and rollout: on an address other than loopback it refuses to start
without a secret (``--secret-env``/``--secret-file``), which scrapes then send as ``Authorization: Bearer``
(Prometheus: ``authorization: {credentials_file: ...}``). ``/healthz`` stays open for probes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Annotated, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import typer
from rich.console import Console

from releasegate.commands import listen_address, reported
from releasegate.commands.alerts_receiver import SecretEnv, SecretFile, read_secret, require_secret_off_loopback
from releasegate.commands.approvals import StateDir, state_dir_of
from releasegate.errors import UserError
from releasegate.router.config import join_host_port
from releasegate.store.db import has_store

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per scrape (a slow scrape does not hold up a probe); threads die with the process."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per scrape would drown the terminal
        pass


def exporter_app(state_dir: Path, secret: str | None = None) -> WSGIApp:
    """``/metrics`` from the store collector and the 30-day DORA gauges (with ``secret``, only for
    ``Authorization: Bearer <secret>``), ``/healthz`` for probes, 404 elsewhere."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from releasegate.alert_receiver import authorized
    from releasegate.dora_metrics import DoraCollector
    from releasegate.metrics_exporter import registry_for

    registry, dora = registry_for(state_dir), DoraCollector(state_dir)

    def metrics(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = generate_latest(registry) + dora.render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            if not authorized(environ.get("HTTP_AUTHORIZATION"), secret):
                start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                    ("WWW-Authenticate", "Bearer")])
                return [b"unauthorized: scrape with Authorization: Bearer <secret>\n"]
            return metrics(environ, start_response)
        ok = path == "/healthz"
        start_response("200 OK" if ok else "404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"ok\n" if ok else b"not found; try /metrics\n"]
    return app


def bind(state_dir: Path, host: str, port: int, secret: str | None = None) -> WSGIServer:
    """The exporter's server, bound and listening; a ``UserError`` when it cannot listen there."""
    server_class = _Server6 if ":" in host else _Server
    try:
        return make_server(host, port, exporter_app(state_dir, secret), server_class=server_class,
                           handler_class=_QuietHandler)
    except (OSError, OverflowError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"--listen {join_host_port(host, port)}: cannot listen there ({why}); "
                        "choose a free port") from None


def metrics(
        listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT",
                                            help="Where Prometheus scrapes /metrics.")] = "127.0.0.1:9108",
        secret_env: SecretEnv = None,
        secret_file: SecretFile = None,
        state_dir: StateDir = None) -> None:
    """Serve the controllers' metrics for Prometheus: rollout phases, weights, decisions, rollbacks, outcomes.

    Runs in the foreground until interrupted.

    Each scrape reads the state dir's store (read-only): every rollout there shows, whichever process drives it.
    A --listen address other than loopback needs --secret-env or --secret-file."""
    with reported():
        where = state_dir_of(state_dir)
        host, port = listen_address(listen)
        secret = read_secret(secret_env, secret_file, "metrics")
        require_secret_off_loopback("metrics (read every rollout)", listen, host, secret)
        server = bind(where, host, port, secret)
        bound = join_host_port(host, int(server.server_address[1]))
        if not has_store(where):
            err.print(f"releasegate: warning: no store in {where} yet (releasegate_store_up is 0 until a deploy "
                      "creates it); is --state-dir right?", markup=False)
        auth = "; bearer secret required" if secret else ""
        out.print(f"serving controller metrics on http://{bound}/metrics (state {where}{auth}); Ctrl-C stops",
                  markup=False)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            out.print("metrics stopped", markup=False)
        finally:
            server.server_close()
