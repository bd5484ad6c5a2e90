"""Delivery of one event to one Apprise URL (Slack, Teams, Discord, PagerDuty, e-mail, JSON webhooks...).

Apprise knows how to talk to each service; this adapter only turns an ``Event`` into a title and a body, adds the
event's fields as top-level JSON keys for ``json://`` and ``jsons://`` webhooks (Apprise's ``:key=value`` payload
extras) so machines need not parse prose, and runs Apprise's blocking ``notify`` in a thread with a deadline so a
dead endpoint costs the rollout nothing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from releasegate.errors import ProviderError
from releasegate.providers.base import Event

if TYPE_CHECKING:  # imported where it is used: Apprise and its plugins cost ~30 ms, paid by every CLI command
    import apprise

_JSON_SCHEMES = ("json", "jsons")
# Keys apprise's JSON payload already uses: an extra with one of these names would rename that field instead.
_RESERVED = {"version", "title", "message", "attachments", "type"}
_RENAMED = {"version": "service_version"}


def check_url(url: str) -> str | None:
    """Why ``url`` is not something Apprise can post to, or None when it is (offline: nothing is sent)."""
    import apprise

    if apprise.Apprise.instantiate(url) is None:
        scheme = url.split("://", 1)[0] if "://" in url else url
        return f"not an Apprise URL Apprise can use (scheme {scheme!r} unknown or its tokens malformed)"
    return None


def redact(url: str) -> str:
    """The URL with its secrets masked as Apprise prints them, without the query (which may hold a routing key);
    what the outbox and the logs show, since Slack and PagerDuty tokens are secrets."""
    import apprise

    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return url.split("://", 1)[0] + "://..."
    return str(plugin.url(privacy=True)).split("?", 1)[0]  # type: ignore[no-untyped-call]


def notify_type(event: Event) -> apprise.NotifyType:
    """FAILURE only for incidents: PagerDuty maps it to severity critical, i.e. it pages someone."""
    import apprise

    if event.data.get("incident"):
        return apprise.NotifyType.FAILURE
    if event.kind in ("rolled_back", "aborted", "refused", "paused"):
        return apprise.NotifyType.WARNING
    if event.kind == "promoted":
        return apprise.NotifyType.SUCCESS
    return apprise.NotifyType.INFO


def render(event: Event) -> tuple[str, str]:
    """Title and body: the sentence a person reads first, then one ``key: value`` line per field."""
    version = event.data.get("version")
    title = f"{'INCIDENT: ' if event.data.get('incident') else ''}{event.service}"
    title += f" {version}" if version else ""
    title += f": {event.kind.replace('_', ' ')}"
    lines = [event.message, ""]
    lines += [f"{k}: {v}" for k, v in event.data.items() if _scalar(v)]
    return title, "\n".join(lines).rstrip()


def _scalar(value: object) -> bool:
    return value is not None and isinstance(value, str | int | float | bool)


def with_extras(url: str, event: Event) -> str:
    """For JSON webhooks, the URL with the event's fields as payload extras (strings, as Apprise sends them)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in _JSON_SCHEMES:
        return url
    fields: dict[str, object] = {"event": event.kind, "service": event.service, **event.data}
    extras = []
    for key, value in fields.items():
        if not _scalar(value):
            continue
        key = _RENAMED.get(key, key)
        if key in _RESERVED:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        extras.append(f":{quote(key, safe='')}={quote(text, safe='')}")
    query = "&".join(([parts.query] if parts.query else []) + extras)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


_LINGER = 1.0
"""Seconds a send's thread may outlive its wait (see _send)."""


class AppriseNotifier:
    """``Notifier`` for one Apprise URL; ``post`` raises ``ProviderError`` when the service did not take the event."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AppriseNotifier({redact(self.url)!r})"

    async def post(self, event: Event) -> None:
        try:
            ok = await asyncio.wait_for(asyncio.to_thread(self._send, event), self.timeout)
        except TimeoutError:
            raise ProviderError(f"{redact(self.url)}: no answer within {self.timeout:g} s") from None
        if not ok:
            raise ProviderError(f"{redact(self.url)}: the notification was not accepted (see apprise's log)")

    def _send(self, event: Event) -> bool:
        import apprise

        plugin = apprise.Apprise.instantiate(with_extras(self.url, event))
        if plugin is None:
            raise ProviderError(f"{redact(self.url)}: {check_url(self.url)}")
        # The thread outlives a wait_for timeout; the socket timeouts bound how long it lingers. They end a little
        # after the wait, so a target that never answers is reported as that ("no answer within"), not as a
        # refusal that depends on which of two equal timers a busy machine fires first.
        linger = self.timeout + _LINGER
        plugin.socket_connect_timeout = min(float(plugin.socket_connect_timeout), linger)
        plugin.socket_read_timeout = min(float(plugin.socket_read_timeout), linger)
        title, body = render(event)
        return bool(plugin.notify(body=body, title=title, notify_type=notify_type(event)))
