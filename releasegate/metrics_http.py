"""The controller metrics exporter's HTTP side (``releasegate metrics``, releasegate/commands/metrics.py): a small
threaded WSGI server with ``/metrics`` and ``/healthz``. Apart from the command so that wsgiref's server loads only
when the exporter runs, not at every ``releasegate`` start.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from releasegate.errors import UserError
from releasegate.router.config import join_host_port

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


__all__ = ["bind", "exporter_app"]
