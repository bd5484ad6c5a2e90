"""Alertmanager webhook receiver: a firing alert listed in a rollout's ``rollback.on_alerts`` rolls it back.

Why a receiver and not a metric rule: the alerts people already trust (SLO burn rates, synthetic checks, business
KPIs) live in Prometheus/Alertmanager. Pointing Alertmanager's webhook at ``releasegate receive-alerts`` lets those
alerts stop a rollout without restating them as analysis rules.

The receiver never drives a rollout itself: it queues a ``rollback`` command in the store, exactly as
``releasegate rollback`` does, and the controller running the rollout applies it at its next tick. So the HTTP
answer is immediate (Alertmanager times out and retries slow receivers) and a receiver crash cannot leave traffic
half-moved. Every alert, acted on or not, and every refused request leaves an audit entry (actor
``alertmanager``): ``alert.rollback``, ``alert.ignored`` (with why), ``alert.unauthorized``, ``alert.malformed``.
An entry keeps only what matters (name, status, start, fingerprint, a few labels and the summary, each cut to 200
characters), and a notification's ignored alerts past the 50th share one entry, so a flood of large or many-alert
bodies cannot grow the log much faster than it grows the network traffic.

``handle`` is the pure-ish core (it touches only the store and the audit log) shared by the server and the tests.
The server is a deliberately tiny HTTP/1.1 handler on asyncio streams: one request per connection, a bounded body,
a read deadline; no new dependency for what is a single POST endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from releasegate.errors import UserError
from releasegate.router.config import join_host_port
from releasegate.spec.models import Spec
from releasegate.store.audit import AuditLog
from releasegate.store.sqlite import Store

ACTOR = "alertmanager"
MAX_BODY = 1 << 20
"""Alertmanager batches alerts per group; a megabyte is far beyond any real notification (413 above it)."""
LABELS = ("alertname", "service", "severity", "env", "environment", "namespace", "job", "instance")
"""The labels an audit entry keeps: what the decision read, and what tells an auditor which alert it was."""
MAX_TEXT = 200
"""Each value kept in an audit entry is cut to this many characters: the log records, it does not archive."""
MAX_IGNORED = 50
"""Ignored alerts of one notification audited one by one; the rest go into one summary entry."""
READ_TIMEOUT = 10.0
"""A client that has not sent its whole request by then is dropped (a stuck peer must not hold a connection)."""


class PayloadError(ValueError):
    """The body is not an Alertmanager webhook notification; the message is one line, for the 400 answer."""


def _alerts(payload: Any) -> list[dict[str, Any]]:
    """The payload's alerts, after checking the shape Alertmanager documents (version 4)."""
    if not isinstance(payload, dict):
        raise PayloadError("expected a JSON object (an Alertmanager webhook notification)")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("expected an 'alerts' list (an Alertmanager webhook notification)")
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise PayloadError(f"alerts[{i}] is not an object")
        for key in ("labels", "annotations"):
            if not isinstance(alert.get(key, {}), dict):
                raise PayloadError(f"alerts[{i}].{key} is not an object")
    return alerts


def _text_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def handle(payload: dict[str, Any], state_dir: Path, now: float) -> list[str]:
    """Act on one webhook notification; one line per alert saying what was done and why.

    A firing alert whose ``service`` label names a service with an active rollout, and whose ``alertname`` is in
    that rollout's ``rollback.on_alerts``, queues a rollback (once: a rollback already pending is not queued
    again, since Alertmanager re-sends firing alerts every ``repeat_interval``). Everything else is recorded as
    ignored. Raises ``PayloadError`` when the payload is not a notification (nothing is changed then).
    """
    alerts = _alerts(payload)
    group_status = str(payload.get("status") or "firing")
    results: list[str] = []
    ignored, unrecorded = 0, set[str]()
    store = Store(state_dir)
    try:
        with AuditLog(state_dir) as audit:
            for alert in alerts:
                labels = _text_map(alert.get("labels"))
                name = labels.get("alertname", "")
                service = labels.get("service", "")
                status = str(alert.get("status") or group_status)
                evidence = _evidence(alert, labels, name, status)
                label = f"{name or '(no alertname)'} for {service or '(no service label)'}"
                release: str | None = None
                why = _ignore_reason(status, name, service)
                rollout_id: str | None = None
                if why is None:
                    rec = store.active_rollout(service)
                    if rec is None:
                        why = f"{service} has no rollout in progress"
                    else:
                        rollout_id = rec.state.id
                        release = f"{service}@{rec.state.version}"
                        evidence["rollout"] = rollout_id
                        why = _not_listed(rec.spec_json, name, rollout_id)
                        if why is None and any(c.kind == "rollback" for c in store.pending_commands(rollout_id)):
                            why = f"a rollback of rollout {rollout_id} is already queued"
                if why is not None or rollout_id is None:
                    said = f"{label}: ignored: {why}"
                    results.append(said)
                    ignored += 1
                    if ignored <= MAX_IGNORED:
                        audit.append(ACTOR, "alert.ignored", release=release, decision=_cut(said),
                                     evidence=evidence, at=now)
                    elif len(unrecorded) < MAX_IGNORED:
                        unrecorded.add(_cut(name or "(no alertname)"))
                    continue
                command = store.add_command(service, rollout_id, "rollback", ACTOR, now)
                evidence["command"] = command
                said = f"{label}: rollback of rollout {rollout_id} queued (command {command})"
                audit.append(ACTOR, "alert.rollback", release=release, decision=_cut(said), evidence=evidence,
                             at=now)
                results.append(said)
            if ignored > MAX_IGNORED:
                audit.append(ACTOR, "alert.ignored", decision=f"{ignored - MAX_IGNORED} more alerts of this "
                             f"notification ignored (over {MAX_IGNORED}: not recorded one by one)",
                             evidence={"alertnames": sorted(unrecorded)}, at=now)
    finally:
        store.close()
    return results


def _cut(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def _evidence(alert: Mapping[str, Any], labels: dict[str, str], name: str, status: str) -> dict[str, Any]:
    """What an audit entry keeps of an alert: its name, status, start, fingerprint, the labels of ``LABELS`` and
    the summary, each cut to ``MAX_TEXT`` (a body may be a megabyte; the log must not grow by that much)."""
    summary = _text_map(alert.get("annotations")).get("summary")
    evidence: dict[str, Any] = {"alertname": _cut(name), "status": _cut(status),
                                "labels": {k: _cut(labels[k]) for k in LABELS if k in labels},
                                "startsAt": None if alert.get("startsAt") is None else _cut(alert["startsAt"]),
                                "fingerprint": None if alert.get("fingerprint") is None else _cut(
                                    alert["fingerprint"]),
                                "annotations": {} if summary is None else {"summary": _cut(summary)}}
    return evidence


def _ignore_reason(status: str, name: str, service: str) -> str | None:
    if status != "firing":
        return f"status {status} (only firing alerts roll back)"
    if not name:
        return "the alert has no alertname label"
    if not service:
        return "the alert has no service label naming the service to roll back"
    return None


def _not_listed(spec_json: str, name: str, rollout_id: str) -> str | None:
    """None when ``name`` is in the rollout's ``rollback.on_alerts``; else why not (the spec stored with it)."""
    try:
        listed = Spec.model_validate_json(spec_json).rollback.on_alerts
    except ValidationError as exc:
        return f"the spec stored with rollout {rollout_id} no longer validates ({exc.error_count()} error(s))"
    if name not in listed:
        return (f"{name} is not in rollback.on_alerts of rollout {rollout_id} "
                f"({', '.join(listed) if listed else 'empty'})")
    return None


# --- the HTTP server -------------------------------------------------------------------------------------------


def authorized(header: str | None, secret: str | None) -> bool:
    """With a secret, the request must carry ``Authorization: Bearer <secret>`` (compared in constant time)."""
    if secret is None:
        return True
    scheme, _, token = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), secret.encode())


class AlertReceiver:
    """``await r.start("127.0.0.1", 0)`` returns the bound address; ``await r.close()`` stops it.

    Any path takes the POST (the URL is whatever Alertmanager's ``webhook_configs`` says); ``GET /healthz`` answers
    ``ok`` for probes; ``GET /metrics`` serves the controller metrics of the same state dir (what ``releasegate
    metrics`` serves; with a secret, the scrape must carry it too). ``clock`` is injectable so tests can pin the
    audit times.
    """

    def __init__(self, state_dir: Path, secret: str | None = None, clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] | None = None) -> None:
        self.state_dir = state_dir
        self.secret = secret
        self.clock = clock
        self.log = log or (lambda _line: None)
        self._server: asyncio.Server | None = None
        from releasegate.metrics_exporter import registry_for  # here: metrics_exporter imports this module

        self._metrics = registry_for(state_dir)  # one collector, so each scrape reads only the new events

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                status, body = await asyncio.wait_for(self._request(reader, peer), READ_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return  # the client went away or stalled: nobody to answer
            writer.write(_response(status, body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader, peer: Any) -> tuple[int, dict[str, Any] | bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, {"error": "malformed request line"}
        method, path = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        if method == "GET" and path.split("?")[0] == "/healthz":
            return 200, {"status": "ok"}
        if method == "GET" and path.split("?")[0] == "/metrics":
            if not authorized(headers.get("authorization"), self.secret):
                return 401, {"error": "unauthorized: scrape with Authorization: Bearer <secret>"}
            return 200, await asyncio.to_thread(self._exposition)
        if method != "POST":
            return 405, {"error": "POST an Alertmanager webhook notification"}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return 411, {"error": "send a Content-Length body"}
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return 400, {"error": "bad Content-Length"}
        if length < 0 or length > MAX_BODY:
            return 413, {"error": f"body over {MAX_BODY} bytes"}
        raw = await reader.readexactly(length)
        now = self.clock()
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        if not authorized(headers.get("authorization"), self.secret):
            denied = "missing Authorization header" if "authorization" not in headers else "wrong bearer token"
            await asyncio.to_thread(self._record, "alert.unauthorized", f"refused: {denied}",
                                    {"peer": where, "path": _cut(path)}, now)
            self.log(f"401 from {where}: {denied}")
            return 401, {"error": f"unauthorized: {denied} (Authorization: Bearer <secret>)"}
        why: str | None = None
        try:
            payload = json.loads(raw)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        except ValueError as exc:
            why = f"body is not JSON: {exc}"
        else:
            try:
                results = await asyncio.to_thread(handle, payload, self.state_dir, now)
            except PayloadError as exc:
                why = str(exc)
            except Exception as exc:  # e.g. the database is locked too long: 500 makes Alertmanager retry
                self.log(f"500 for {where}: {type(exc).__name__}: {exc}")
                return 500, {"error": f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]}
        if why is not None:
            why = why.splitlines()[0]
            await asyncio.to_thread(self._record, "alert.malformed", f"refused: {_cut(why)}",
                                    {"peer": where, "path": _cut(path), "bytes": length}, now)
            self.log(f"400 from {where}: {why}")
            return 400, {"error": why}
        for line in results:
            self.log(line)
        return 200, {"results": results}

    def _exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self._metrics))

    def _record(self, action: str, decision: str, evidence: dict[str, Any], now: float) -> None:
        with AuditLog(self.state_dir) as audit:
            audit.append(ACTOR, action, decision=decision, evidence=evidence, at=now)


def _response(status: int, body: dict[str, Any] | bytes) -> bytes:
    """JSON for a dict; bytes are a Prometheus text exposition (``GET /metrics``)."""
    data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
    kind = "text/plain; version=0.0.4; charset=utf-8" if isinstance(body, bytes) else "application/json"
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + data


async def serve(state_dir: Path, host: str, port: int, secret: str | None,
                log: Callable[[str], None] | None = None,
                ready: Callable[[str, int], None] | None = None) -> None:
    """Run the receiver until cancelled (the CLI's foreground loop)."""
    receiver = AlertReceiver(state_dir, secret, log=log)
    try:
        bound = await receiver.start(host, port)
    except OSError as exc:
        raise UserError(f"--listen {join_host_port(host, port)}: cannot listen there ({exc.strerror or exc}); "
                        "choose a free port") from None
    if ready is not None:
        ready(*bound)
    try:
        await receiver.serve_forever()
    finally:
        await receiver.close()


__all__ = ["ACTOR", "AlertReceiver", "PayloadError", "authorized", "handle", "serve"]
